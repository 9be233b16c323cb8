/**
 * Errors keep their class across the worker boundary. Importing this module (both the page side and
 * the worker side do) extends comlink's 'throw' transfer handler, in its realm, to carry an error's
 * class name and own fields (file, field, status, sizes, ...), so that `instanceof AdapterFormatError`
 * works on the page. `toWireError` / `fromWireError` do the same for an error returned as a value.
 */
import { transferHandlers, type TransferHandler } from 'comlink';
import {
  AdapterFormatError,
  EdgeAdaptersError,
  IncompatibleAdapterError,
  InvalidInputError,
  ModelFormatError,
} from './errors.js';
import { FetchError, IntegrityError, ManifestError, QuotaError } from './store/errors.js';

const ERROR_CLASSES: Record<string, { prototype: Error }> = {
  EdgeAdaptersError,
  ModelFormatError,
  AdapterFormatError,
  IncompatibleAdapterError,
  InvalidInputError,
  ManifestError,
  IntegrityError,
  FetchError,
  QuotaError,
};

/** An error as structured clone can carry it. */
export interface WireError {
  name: string;
  message: string;
  stack?: string;
  /** Own fields of the error (file, field, status, sizes, ...), when they clone. */
  fields: Record<string, unknown>;
}

export function toWireError(error: Error): WireError {
  const fields: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(error)) {
    if (key === 'cause') continue;
    try {
      fields[key] = structuredClone(value);
    } catch {
      // a field that does not clone stays behind
    }
  }
  return { name: error.name, message: error.message, stack: error.stack, fields };
}

export function fromWireError(wire: WireError): Error {
  if (wire.name === 'AbortError' || wire.name === 'TimeoutError')
    return new DOMException(wire.message, wire.name);
  // A real Error (engines and tools treat it as one) given the class of the worker's error.
  const error = new Error(wire.message);
  const Class = ERROR_CLASSES[wire.name];
  if (Class !== undefined) Object.setPrototypeOf(error, Class.prototype);
  Object.assign(error, wire.fields);
  Object.defineProperty(error, 'name', { value: wire.name, writable: true, configurable: true });
  if (wire.stack !== undefined) error.stack = wire.stack;
  return error;
}

type Thrown = { isError: true; value: WireError } | { isError: false; value: unknown };
const comlinkThrow = transferHandlers.get('throw') as TransferHandler<{ value: unknown }, Thrown>;
transferHandlers.set('throw', {
  canHandle: (value: unknown): value is { value: unknown } => comlinkThrow.canHandle(value),
  serialize: ({ value }: { value: unknown }): [Thrown, Transferable[]] => [
    value instanceof Error ? { isError: true, value: toWireError(value) } : { isError: false, value },
    [],
  ],
  deserialize: (thrown: Thrown): never => {
    throw thrown.isError ? fromWireError(thrown.value) : thrown.value;
  },
} satisfies TransferHandler<{ value: unknown }, Thrown>);
