/** SHA-256 through SubtleCrypto (browsers in secure contexts, workers, Node >= 20). */
import { IntegrityError } from './errors.js';

const HEX = /^[0-9a-f]{64}$/;

/** True for 64 lowercase hex characters. */
export function isSha256Hex(x: unknown): x is string {
  return typeof x === 'string' && HEX.test(x);
}

/** The SHA-256 of `bytes` as 64 lowercase hex characters. `label` names the input in errors. */
export async function sha256Hex(bytes: Uint8Array, label = 'input'): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (subtle === undefined) {
    throw new IntegrityError(
      label,
      'sha256',
      'crypto.subtle is unavailable: the page is not a secure context (serve it over https or from localhost)',
    );
  }
  // digest() wants an ArrayBuffer-backed view; copy only a view of a SharedArrayBuffer.
  const view =
    bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : new Uint8Array(bytes);
  const digest = new Uint8Array(await subtle.digest('SHA-256', view));
  let hex = '';
  for (const b of digest) hex += b.toString(16).padStart(2, '0');
  return hex;
}
