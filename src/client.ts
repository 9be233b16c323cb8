/**
 * The runtime in a web worker, driven from the page through comlink.
 *
 *   // the worker file (workers/runtime.worker.ts):
 *   expose(new RuntimeWorker());
 *
 *   // the page:
 *   const rt = await createRuntime({ model: '/models/stories260K/', onProgress: (p) => ... });
 *   rt.backend;                                       // { name: 'wasm', reason: '...' }
 *   await rt.adapters.add('pirate', '/adapters/pirate/', { onProgress });
 *   await rt.adapters.activate('pirate');
 *   for await (const chunk of rt.generate('Once upon a time', { signal })) ...
 *
 * The page holds `RemoteRuntime`: the comlink proxy (`rt.remote`, typed as `Remote<RuntimeWorker>`)
 * plus what cannot cross the boundary as is: an async iterator over a proxied chunk callback, an
 * AbortSignal turned into a remote `abort(id)`, progress callbacks wrapped with `comlink.proxy`, big
 * buffers transferred. Errors keep their class across the boundary (`instanceof AdapterFormatError`
 * works on the page: importing this module extends comlink's 'throw' transfer handler, in both realms,
 * to carry the error's class and fields); a worker that dies rejects every pending call with a
 * `WorkerError`. One worker holds one model; requests run one at a time, in order.
 *
 * Backend choice (`backend`, default 'auto'): WebGPU (onnxruntime-web/webgpu) when the browser has a
 * hardware WebGPU adapter and every op type of the patched graph is in WEBGPU_VERIFIED_OPS, wasm
 * otherwise; `rt.backend` says which and why.
 */
import { proxy, releaseProxy, transfer, transferHandlers, wrap, type Remote } from 'comlink';
import type { TransferHandler } from 'comlink';
import {
  AdapterFormatError,
  EdgeAdaptersError,
  IncompatibleAdapterError,
  InvalidInputError,
  ModelFormatError,
} from './errors.js';
import { FetchError, IntegrityError, ManifestError, QuotaError } from './store/errors.js';
import type { FinishReason, GenerateOptions, GenerationChunk } from './engine/generate.js';
import type { Completion } from './engine/language-model.js';
import type { ActiveSpec, AdapterInfo, Runtime } from './runtime.js';
import type { FileSource } from './formats/files.js';
import type { FetchProgress } from './store/fetch.js';
import { chooseBackend, type BackendReport, type BrowserBackend } from './engine/backend.js';

// ---------------------------------------------------------------------------------------------
// What crosses the boundary

export type { BackendReport, BrowserBackend } from './engine/backend.js';
export { WEBGPU_VERIFIED_OPS } from './engine/backend.js';

export interface WorkerLoadOptions {
  /** Absolute URL of the model folder. */
  model: string;
  backend?: BrowserBackend | 'auto';
  /** WebAssembly threads (need a cross-origin isolated page: COOP/COEP headers). */
  threads?: number;
  /** Absolute URL of the folder serving onnxruntime-web's `dist/` (`ort-wasm-simd-threaded*.mjs|.wasm`). */
  wasmPaths?: string;
}

/** One file of a download: bytes received so far and the expected size (Content-Length), when known. */
export interface DownloadProgress extends FetchProgress {
  /** The file's name in its folder (`model.onnx`, `adapter_model.safetensors`). */
  file: string;
  url: string;
}

export type LoadProgress =
  | ({ stage: 'download' } & DownloadProgress)
  /** Every file is in; the inference session is being built on this backend. */
  | { stage: 'session'; backend: BrowserBackend; reason: string };

/** Generation options that can cross the boundary (the AbortSignal stays on the page). */
export type WorkerGenerateOptions = Omit<GenerateOptions, 'signal'>;

export type AdapterBytes = { config: Uint8Array; weights: Uint8Array };

// ---------------------------------------------------------------------------------------------
// Errors keep their class across the boundary

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

interface WireError {
  name: string;
  message: string;
  stack?: string;
  /** Own fields of the error (file, field, status, sizes, ...), when they clone. */
  fields: Record<string, unknown>;
}

function toWireError(error: Error): WireError {
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

function fromWireError(wire: WireError): Error {
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

/** The worker stopped: terminated, failed to load, or hit an uncaught error. Pending calls reject with it. */
export class WorkerError extends Error {
  override name = 'WorkerError';
}

// ---------------------------------------------------------------------------------------------
// The worker side: a thin adapter over Runtime

/** Calls a proxied page callback without waiting for it; `flush` waits until the page ran them all. */
class Relay<T> {
  private readonly pending = new Set<Promise<unknown>>();
  constructor(private readonly callback: ((value: T) => unknown) | undefined) {}
  send(value: T): void {
    if (!this.callback) return;
    const p = Promise.resolve(this.callback(value)).catch(() => undefined);
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }
  async flush(): Promise<void> {
    while (this.pending.size) await Promise.all(this.pending);
  }
  /** Flushes and frees the page side of a proxied callback. */
  async close(): Promise<void> {
    await this.flush();
    const release = (this.callback as Partial<Remote<() => void>> | undefined)?.[releaseProxy];
    if (typeof release === 'function') release.call(this.callback);
  }
}

/** Resolves after the event loop ran pending messages (an abort), unlike a resolved promise. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    const { port1, port2 } = new MessageChannel();
    port1.onmessage = () => {
      port1.close();
      resolve();
    };
    port2.postMessage(null);
  });
}

/** Files under a folder URL with download progress; a 404 is a missing file. Reads are kept for a second read. */
async function downloadSource(
  folder: string,
  onProgress: ((p: DownloadProgress) => void) | undefined,
): Promise<FileSource & { clear(): void }> {
  const { fetchWithProgress } = await import('./store/fetch.js');
  const base = new URL(folder.endsWith('/') ? folder : `${folder}/`);
  const kept = new Map<string, Promise<Uint8Array | undefined>>();
  const read = async (name: string): Promise<Uint8Array | undefined> => {
    const url = new URL(name, base).href;
    try {
      return await fetchWithProgress(url, {
        onProgress: onProgress && ((p) => onProgress({ file: name, url, ...p })),
      });
    } catch (e) {
      if (e instanceof FetchError && e.status === 404) return undefined;
      throw e;
    }
  };
  return {
    label: base.href,
    read(name) {
      let bytes = kept.get(name);
      if (bytes === undefined) kept.set(name, (bytes = read(name)));
      return bytes;
    },
    clear: () => kept.clear(),
  };
}

/** The op types of the graph as it will run: the model with its adapter slots. */
async function patchedGraphOps(files: FileSource): Promise<string[]> {
  const [{ readModelFolder }, { decodeModel }, { addAdapterSlots }] = await Promise.all([
    import('./formats/model-folder.js'),
    import('./formats/onnx/index.js'),
    import('./graph/adapter-slots.js'),
  ]);
  const folder = await readModelFolder(files);
  const graph = addAdapterSlots(decodeModel(folder.onnx, `${folder.label}/${folder.onnxFile}`)).model;
  const ops = new Set<string>();
  for (const node of graph.graph?.node ?? [])
    ops.add(node.domain ? `${node.domain}.${node.opType}` : node.opType);
  return [...ops].sort();
}

/**
 * What the worker exposes. Each method is a thin adapter over `Runtime`: it only turns what cannot
 * be cloned (callbacks, signals, generators) into what can, and transfers big buffers.
 */
export class RuntimeWorker {
  private runtime: Runtime | undefined;
  private report: BackendReport | undefined;
  private readonly requests = new Map<number, AbortController>();
  /** Requests run one at a time: one session, one KV cache. */
  private queue: Promise<unknown> = Promise.resolve();

  async load(options: WorkerLoadOptions, onProgress?: (p: LoadProgress) => void): Promise<BackendReport> {
    if (this.runtime) throw new Error('this worker has loaded a model already');
    const relay = new Relay(onProgress);
    try {
      const files = await downloadSource(options.model, (p) => relay.send({ stage: 'download', ...p }));
      const requested = options.backend ?? 'auto';
      const ops = await patchedGraphOps(files);
      const choice = await chooseBackend(requested, ops);
      this.report = choice;
      relay.send({ stage: 'session', backend: choice.name, reason: choice.reason });
      const { Runtime } = await import('./runtime.js');
      this.runtime = await Runtime.create({
        model: files,
        backend: choice.name,
        threads: options.threads,
        wasmPaths: options.wasmPaths,
      });
      files.clear();
      return this.report;
    } finally {
      await relay.close();
    }
  }

  /** Which backend runs the model and why (after `load`). */
  backend(): BackendReport {
    if (!this.report) throw new Error('no model loaded: call load() first');
    return this.report;
  }

  private rt(): Runtime {
    if (!this.runtime) throw new Error('no model loaded: call load() first');
    return this.runtime;
  }

  private exclusive<T>(run: () => Promise<T>): Promise<T> {
    const result = this.queue.then(run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * Streams chunks to `onChunk` (a comlink-proxied page function); resolves with the finish reason
   * once the page has received every chunk. `abort(id)` cancels it between tokens.
   */
  async generate(
    id: number,
    prompt: string | readonly number[],
    options: WorkerGenerateOptions,
    onChunk: (chunk: GenerationChunk) => void,
  ): Promise<FinishReason> {
    const controller = new AbortController();
    this.requests.set(id, controller);
    const relay = new Relay(onChunk);
    try {
      return await this.exclusive(async () => {
        const chunks = this.rt().generate(prompt, { ...options, signal: controller.signal });
        for (;;) {
          const next = await chunks.next();
          if (next.done) return next.value;
          relay.send(next.value);
          await yieldToEventLoop(); // lets an abort message in between tokens
        }
      });
    } finally {
      this.requests.delete(id);
      await relay.close();
    }
  }

  abort(id: number): void {
    this.requests.get(id)?.abort(new DOMException('generation aborted', 'AbortError'));
  }

  async complete(
    prompt: string | readonly number[],
    options: WorkerGenerateOptions = {},
  ): Promise<Completion> {
    return this.exclusive(() => this.rt().complete(prompt, options));
  }

  async logits(tokens: readonly number[]): Promise<Float32Array[]> {
    const rows = await this.exclusive(() => this.rt().logits(tokens));
    return transfer(
      rows,
      rows.map((r) => r.buffer as ArrayBuffer),
    );
  }

  /** Marked as a proxy so that the page's Remote type has its methods (comlink calls them by path). */
  readonly adapters = proxy({
    /** From a folder URL (absolute; progress per file) or the two files' bytes. */
    add: async (
      id: string,
      source: string | AdapterBytes,
      onProgress?: (p: DownloadProgress) => void,
    ): Promise<AdapterInfo> => {
      const relay = new Relay(onProgress);
      try {
        const from = typeof source === 'string' ? await downloadSource(source, (p) => relay.send(p)) : source;
        return await this.rt().adapters.add(id, from);
      } finally {
        await relay.close();
      }
    },
    activate: (spec: string | readonly (string | ActiveSpec)[]): Promise<void> =>
      this.rt().adapters.activate(spec),
    deactivate: (): void => this.rt().adapters.deactivate(),
    active: (): ActiveSpec[] => this.rt().adapters.active(),
    list: (): AdapterInfo[] => this.rt().adapters.list(),
    remove: (id: string): Promise<void> => this.rt().adapters.remove(id),
    /** adapter_config.json and adapter_model.safetensors, copied out and transferred. */
    export: (id: string): Map<string, Uint8Array> => {
      const files = new Map([...this.rt().adapters.export(id)].map(([name, bytes]) => [name, bytes.slice()]));
      return transfer(
        files,
        [...files.values()].map((b) => b.buffer as ArrayBuffer),
      );
    },
  });

  async release(): Promise<void> {
    for (const controller of this.requests.values())
      controller.abort(new DOMException('released', 'AbortError'));
    await this.queue;
    await this.runtime?.release();
    this.runtime = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The page side

export interface CreateRuntimeOptions {
  /** URL of a model folder (relative to the page). */
  model: string | URL;
  /** 'auto' (the default): WebGPU when it is there and verified for the graph, else wasm. */
  backend?: BrowserBackend | 'auto';
  threads?: number;
  /** URL of the folder serving onnxruntime-web's dist files, when the bundler did not place them. */
  wasmPaths?: string | URL;
  /** The worker script (default: workers/runtime.worker.js beside this package's src/). */
  workerUrl?: URL;
  onProgress?: (progress: LoadProgress) => void;
}

export interface AddAdapterOptions {
  onProgress?: (progress: DownloadProgress) => void;
  /**
   * Bytes sources: transfer the arrays' buffers to the worker instead of copying them (default
   * true). Transferred arrays are empty on the page afterwards.
   */
  transfer?: boolean;
}

const absoluteUrl = (url: string | URL): string => new URL(String(url), globalThis.location?.href).href;

/** Starts a worker, loads the model in it and returns the page's handle. */
export function createRuntime(options: CreateRuntimeOptions): Promise<RemoteRuntime> {
  return RemoteRuntime.start(options);
}

/** The page's handle on a runtime in a worker. Mirrors Runtime, with every call async. */
export class RemoteRuntime {
  /** The comlink proxy of the worker's RuntimeWorker. */
  readonly remote: Remote<RuntimeWorker>;
  private report!: BackendReport;
  private nextId = 1;
  private failure: WorkerError | undefined;
  private readonly failed: Promise<never>;
  private fail!: (error: WorkerError) => void;

  /** createRuntime(options). */
  static async start(options: CreateRuntimeOptions): Promise<RemoteRuntime> {
    const url = options.workerUrl ?? new URL('../workers/runtime.worker.js', import.meta.url);
    const rt = new RemoteRuntime(new Worker(url, { type: 'module', name: 'edge-adapters' }), url);
    try {
      rt.report = await rt.call(
        rt.remote.load(
          {
            model: absoluteUrl(options.model),
            backend: options.backend,
            threads: options.threads,
            wasmPaths: options.wasmPaths === undefined ? undefined : absoluteUrl(options.wasmPaths),
          },
          options.onProgress ? proxy(options.onProgress) : undefined,
        ),
      );
      return rt;
    } catch (e) {
      rt.terminate();
      throw e;
    }
  }

  private constructor(
    private readonly worker: Worker,
    private readonly url: URL,
  ) {
    this.remote = wrap<RuntimeWorker>(worker);
    this.failed = new Promise<never>((_, reject) => {
      this.fail = (error) => {
        if (this.failure) return;
        this.failure = error;
        reject(error);
      };
    });
    this.failed.catch(() => undefined);
    worker.addEventListener('error', (event: ErrorEvent) => {
      event.preventDefault();
      const detail = event.message ? `: ${event.message}` : ' (the script failed to load or run)';
      this.fail(new WorkerError(`the runtime worker ${this.url.href} stopped${detail}`));
      worker.terminate();
    });
    worker.addEventListener('messageerror', () => {
      this.fail(new WorkerError('a message from the runtime worker could not be deserialized'));
    });
  }

  /** Which backend runs the model, and why. */
  get backend(): BackendReport {
    return this.report;
  }

  /** Awaits a remote call, or the worker's failure, whichever comes first. */
  private call<T>(pending: Promise<T>): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    return Promise.race([pending, this.failed]);
  }

  /**
   * Streams generated chunks. Aborting `signal` (or leaving the loop early) stops the worker
   * between tokens; the iterator then throws the signal's reason.
   */
  async *generate(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<GenerationChunk, FinishReason> {
    const { signal, ...rest } = options;
    signal?.throwIfAborted();
    const id = this.nextId++;
    const queue: GenerationChunk[] = [];
    let wake: () => void = () => undefined;
    let outcome: { value: FinishReason } | { error: unknown } | undefined;
    const onChunk = proxy((chunk: GenerationChunk) => {
      queue.push(chunk);
      wake();
    });
    void this.call(this.remote.generate(id, prompt, rest, onChunk)).then(
      (value) => {
        outcome = { value };
        wake();
      },
      (error: unknown) => {
        outcome = { error };
        wake();
      },
    );
    const onAbort = () => {
      void this.remote.abort(id).catch(() => undefined);
      wake();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        signal?.throwIfAborted();
        const chunk = queue.shift();
        if (chunk) {
          yield chunk;
          continue;
        }
        if (outcome) {
          if ('error' in outcome) throw outcome.error;
          return outcome.value;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (!outcome && !this.failure) void this.remote.abort(id).catch(() => undefined);
    }
  }

  /** Generates to the end: the new text and tokens. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<Completion> {
    let text = '';
    const tokens: number[] = [];
    const chunks = this.generate(prompt, options);
    for (;;) {
      const next = await chunks.next();
      if (next.done) return { text, tokens, finishReason: next.value };
      text += next.value.text;
      tokens.push(next.value.token);
    }
  }

  /** The logits of every position of one forward pass (buffers transferred from the worker). */
  logits(tokens: readonly number[]): Promise<Float32Array[]> {
    return this.call(this.remote.logits(tokens));
  }

  readonly adapters = {
    /** A PEFT folder URL (relative to the page) or the bytes of its two files. */
    add: (
      id: string,
      source: string | URL | AdapterBytes,
      options: AddAdapterOptions = {},
    ): Promise<AdapterInfo> => {
      const onProgress = options.onProgress ? proxy(options.onProgress) : undefined;
      if (typeof source === 'string' || source instanceof URL) {
        return this.call(this.remote.adapters.add(id, absoluteUrl(source), onProgress));
      }
      const bytes = { config: source.config, weights: source.weights };
      // Only ArrayBuffers transfer (a SharedArrayBuffer is shared by cloning anyway).
      const buffers = [...new Set([bytes.config.buffer, bytes.weights.buffer])].filter(
        (b): b is ArrayBuffer => b instanceof ArrayBuffer,
      );
      const sent = options.transfer === false ? bytes : transfer(bytes, buffers);
      return this.call(this.remote.adapters.add(id, sent, onProgress));
    },
    activate: (spec: string | readonly (string | ActiveSpec)[]): Promise<void> =>
      this.call(this.remote.adapters.activate(spec)),
    deactivate: (): Promise<void> => this.call(this.remote.adapters.deactivate()),
    active: (): Promise<ActiveSpec[]> => this.call(this.remote.adapters.active()),
    list: (): Promise<AdapterInfo[]> => this.call(this.remote.adapters.list()),
    remove: (id: string): Promise<void> => this.call(this.remote.adapters.remove(id)),
    /** The adapter in PEFT format, byte for byte as loaded. */
    export: (id: string): Promise<Map<string, Uint8Array>> => this.call(this.remote.adapters.export(id)),
  };

  /** Frees the session and stops the worker. */
  async release(): Promise<void> {
    try {
      await this.call(this.remote.release());
    } finally {
      this.terminate();
    }
  }

  /** Stops the worker now; pending and later calls reject with a WorkerError. */
  terminate(): void {
    this.worker.terminate();
    this.fail(new WorkerError('the runtime worker was terminated'));
  }
}
