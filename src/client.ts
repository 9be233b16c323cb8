/**
 * The page side of the runtime in a web worker (the worker side is src/worker-runtime.ts).
 *
 *   const rt = await createRuntime({ model: '/models/stories260K/', manifest: '/adapters.json', onProgress });
 *   rt.backend;                                        // { name: 'wasm', reason: '...' }
 *   rt.restored;                                       // { active: [...] } the selection of the last session
 *   await rt.adapters.catalog();                       // the manifest's adapters: cached? added? active?
 *   await rt.adapters.install('pirate', { onProgress }); // IndexedDB, else downloaded, verified, cached
 *   await rt.adapters.add('mine', '/adapters/mine/');  // any PEFT folder URL, or the files' bytes
 *   await rt.adapters.activate('pirate');              // remembered for the next session
 *   for await (const chunk of rt.generate('Once upon a time', { signal })) ...
 *
 * `RemoteRuntime` is the comlink proxy (`rt.remote`, typed as `Remote<RuntimeWorker>`) plus what
 * cannot cross the boundary as is: an async iterator over a proxied chunk callback, an AbortSignal
 * turned into a remote `abort(id)`, progress callbacks wrapped with `comlink.proxy`, big buffers
 * transferred. Errors keep their class across the boundary (src/wire-errors.ts). A worker that dies —
 * terminated, crashed, closed — rejects every pending call with a `WorkerError` (a Web Lock the worker
 * holds while it lives tells the page when it is gone).
 *
 * Backend choice (`backend`, default 'auto'): WebGPU (onnxruntime-web/webgpu) when the browser has a
 * hardware WebGPU adapter and every op type of the patched graph is in WEBGPU_VERIFIED_OPS, wasm
 * otherwise; `rt.backend` says which and why.
 */
import { proxy, transfer, wrap, type Remote } from 'comlink';
import { fromWireError } from './wire-errors.js';
import type { BackendReport, BrowserBackend } from './engine/backend.js';
import type { FinishReason, GenerationChunk } from './engine/generate.js';
import type { Completion } from './engine/language-model.js';
import type { ActiveSpec, AdapterInfo, MixtureSpec, RequestOptions } from './runtime.js';
import type { RouteChoice, RouteOptions } from './mixtures/prompt-router.js';
import type { CatalogEntry, InstalledAdapter, RestoreReport } from './adapter-catalog.js';
import type { StoreUsage } from './store/adapter-store.js';
import type { FetchProgress } from './store/fetch.js';
import type {
  AdapterBytes,
  AdapterCacheOptions,
  DownloadProgress,
  LoadProgress,
  RuntimeWorker,
  WorkerLoadOptions,
} from './worker-runtime.js';
import type { TrainEvent, TrainReport, TrainRequest } from './personal-adapter.js';
import type { FeedbackEvent } from './train/feedback.js';
import type { StoredFeedback } from './train/feedback-log.js';
import type { PersonalVersion } from './train/personal-versions.js';

export type { TrainEvent, TrainReport, TrainRequest, TrainMethod } from './personal-adapter.js';
export type { FeedbackEvent } from './train/feedback.js';
export type { StoredFeedback } from './train/feedback-log.js';
export type { PersonalVersion } from './train/personal-versions.js';
export type { Judge } from './train/rlaif.js';
export type { LoraInit } from './train/init-lora.js';
export type { BackendReport, BrowserBackend } from './engine/backend.js';
export type { ActiveSpec, AdapterInfo, MixtureSpec, RequestOptions } from './runtime.js';
export type { RouteChoice, RouteOptions } from './mixtures/prompt-router.js';
export type { MixtureRouter } from './mixtures/expert-feeds.js';
export type { Quantization } from './engine/language-model.js';
export { WEBGPU_VERIFIED_OPS } from './engine/backend.js';
export * from './errors.js';
export { FetchError, IntegrityError, ManifestError, QuotaError } from './store/errors.js';
export type { CatalogEntry, InstalledAdapter, RestoreReport } from './adapter-catalog.js';
export type { CorruptEntry, StoreUsage } from './store/adapter-store.js';
export type { FetchProgress } from './store/fetch.js';
export type {
  AdapterBytes,
  AdapterCacheOptions,
  DownloadProgress,
  LoadProgress,
  RuntimeWorker,
  WorkerGenerateOptions,
} from './worker-runtime.js';

/** The worker stopped: terminated, closed, failed to load, or crashed. Pending calls reject with it. */
export class WorkerError extends Error {
  override name = 'WorkerError';
}

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
  /**
   * URL of an adapters.json (docs/adapter-manifest.md): enables `adapters.catalog()`, `install()`,
   * `uninstall()`, `usage()`, and remembers the active selection in IndexedDB across sessions.
   */
  manifest?: string | URL;
  /** The adapter cache in IndexedDB: byte budget (default 512 MiB) and database name. */
  cache?: AdapterCacheOptions;
  /** The `weights` string the manifest's base fingerprint was made with (modelFingerprint), if any. */
  baseWeights?: string;
  /** Activate the selection remembered from the last session (default true, with a manifest). */
  restore?: boolean;
  /** The personal adapter: its IndexedDB databases, versions kept, how a new one starts. */
  personal?: WorkerLoadOptions['personal'];
  /**
   * The adapter slots to patch into the graph (loadModel's `slots`). `{ adapters: [configs] }` (PEFT
   * adapter_config.json objects, parsed with parsePeftConfig) gives the fastest graph for a known set
   * of adapters; default: every slot, so any adapter can be activated.
   */
  slots?: WorkerLoadOptions['slots'];
  /**
   * A quantized base (`edge-adapters quantize`): run its 4-/8-bit ops ('native'), or dequantize its
   * weights once at load to float32 ('dequantize': a small download, float32 memory and speed).
   * 'auto' (default) takes the faster on the chosen backend; see the README's QLoRA section.
   */
  kernels?: WorkerLoadOptions['kernels'];
}

export interface AddAdapterOptions {
  onProgress?: (progress: DownloadProgress) => void;
  /**
   * Bytes sources: transfer the arrays' buffers to the worker instead of copying them (default
   * true). Transferred arrays are empty on the page afterwards.
   */
  transfer?: boolean;
}

export interface InstallAdapterOptions {
  /** Cancels the download; nothing is stored. */
  signal?: AbortSignal;
  /** Bytes received and the total (the manifest's); one complete event when read from IndexedDB. */
  onProgress?: (progress: FetchProgress) => void;
}

const absoluteUrl = (url: string | URL): string => new URL(String(url), globalThis.location?.href).href;

/** navigator.storage.persist() where the page has it: true when the origin's storage is persistent. */
async function persistStorage(): Promise<boolean | undefined> {
  const storage = globalThis.navigator?.storage;
  if (storage?.persist === undefined) return undefined;
  try {
    return (await storage.persisted()) || (await storage.persist());
  } catch {
    return false;
  }
}

/** Starts a worker, loads the model in it and returns the page's handle. */
export function createRuntime(options: CreateRuntimeOptions): Promise<RemoteRuntime> {
  return RemoteRuntime.start(options);
}

/** The page's handle on a runtime in a worker. Mirrors Runtime, with every call async. */
export class RemoteRuntime {
  /** The comlink proxy of the worker's RuntimeWorker. */
  readonly remote: Remote<RuntimeWorker>;
  private report!: BackendReport;
  private fingerprint!: string;
  private restoreReport: RestoreReport = { active: [] };
  private storagePersisted: boolean | undefined;
  private nextId = 1;
  private failure: WorkerError | undefined;
  private readonly failed: Promise<never>;
  private fail!: (error: WorkerError) => void;

  /** createRuntime(options). */
  static async start(options: CreateRuntimeOptions): Promise<RemoteRuntime> {
    const url = options.workerUrl ?? new URL('../workers/runtime.worker.js', import.meta.url);
    const rt = new RemoteRuntime(new Worker(url, { type: 'module', name: 'edge-adapters' }), url, options);
    try {
      await rt.watch();
      if (options.manifest !== undefined) rt.storagePersisted = await persistStorage();
      const loaded = await rt.call(
        rt.remote.load(
          {
            model: absoluteUrl(options.model),
            backend: options.backend,
            threads: options.threads,
            wasmPaths: options.wasmPaths === undefined ? undefined : absoluteUrl(options.wasmPaths),
            manifest: options.manifest === undefined ? undefined : absoluteUrl(options.manifest),
            cache: options.cache,
            baseWeights: options.baseWeights,
            restore: options.restore,
            slots: options.slots,
            kernels: options.kernels,
            personal: options.personal,
          },
          options.onProgress ? proxy(options.onProgress) : undefined,
        ),
      );
      rt.report = loaded.backend;
      rt.fingerprint = loaded.baseFingerprint;
      const { active, error } = loaded.restored;
      rt.restoreReport = { active, ...(error ? { error: fromWireError(error) } : {}) };
      return rt;
    } catch (e) {
      rt.terminate();
      throw e;
    }
  }

  private constructor(
    private readonly worker: Worker,
    private readonly url: URL,
    private readonly options: CreateRuntimeOptions,
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

  /**
   * The worker holds a Web Lock while it lives; the page asks for it and gets it when the worker is
   * gone, however it went (a worker that closes itself or is killed fires no 'error' event).
   */
  private async watch(): Promise<void> {
    const locks = globalThis.navigator?.locks;
    if (locks === undefined) return; // not a secure context: 'error' events are the only signal
    const name = `edge-adapters-worker-${crypto.randomUUID()}`;
    await this.call(this.remote.hold(name));
    void locks.request(name, () =>
      this.fail(new WorkerError(`the runtime worker ${this.url.href} stopped (it closed or was killed)`)),
    );
  }

  /** Which backend runs the model, and why. */
  get backend(): BackendReport {
    return this.report;
  }

  /** The loaded base's modelFingerprint: what a manifest entry's `base` must be. */
  get baseFingerprint(): string {
    return this.fingerprint;
  }

  /** The adapter selection of the last session, active again (with a manifest), or why it is not. */
  get restored(): RestoreReport {
    return this.restoreReport;
  }

  /** With a manifest: whether navigator.storage.persist() made the origin's storage persistent. */
  get persisted(): boolean | undefined {
    return this.storagePersisted;
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
    options: RequestOptions = {},
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
  async complete(prompt: string | readonly number[], options: RequestOptions = {}): Promise<Completion> {
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
    /**
     * A token-level mixture of added LoRA experts (Runtime adapters.activateMixture); the model must
     * be loaded with `slots: { router: 'arrow' | 'gate' }`. A mixture is not remembered for the next
     * session.
     */
    activateMixture: (spec: MixtureSpec): Promise<void> =>
      this.call(this.remote.adapters.activateMixture(spec)),
    /**
     * X-LoRA (PEFT's XLORA adapter_config.json + adapter_model.safetensors: a folder URL or bytes)
     * over added LoRA experts, in its config's order; the model must be loaded with
     * `slots: { router: 'given' }`.
     */
    activateXLora: (
      source: string | URL | { config: Uint8Array; weights: Uint8Array },
      experts: readonly string[],
    ): Promise<void> =>
      this.call(
        this.remote.adapters.activateXLora(
          typeof source === 'string' || source instanceof URL ? absoluteUrl(source) : source,
          experts,
        ),
      ),
    /**
     * A UniPELT adapter (AdapterHub's adapter_config.json + adapter.safetensors): a folder URL or the
     * two files' bytes. The model must be loaded with `slots: { unipelt: true }`.
     */
    activateUniPelt: (source: string | URL | { config: Uint8Array; weights: Uint8Array }): Promise<void> =>
      this.call(
        this.remote.adapters.activateUniPelt(
          typeof source === 'string' || source instanceof URL ? absoluteUrl(source) : source,
        ),
      ),
    /** Example prompts of an added adapter, for per-request routing (`route`, generate's adapters: 'route'). */
    setExamples: (id: string, prompts: readonly string[]): Promise<void> =>
      this.call(this.remote.adapters.setExamples(id, prompts)),
    /** The adapters for a prompt, best first, with blend weights. */
    route: (prompt: string, options?: RouteOptions): Promise<RouteChoice[]> =>
      this.call(this.remote.adapters.route(prompt, options)),
    active: (): Promise<ActiveSpec[]> => this.call(this.remote.adapters.active()),
    list: (): Promise<AdapterInfo[]> => this.call(this.remote.adapters.list()),
    remove: (id: string): Promise<void> => this.call(this.remote.adapters.remove(id)),
    /** The adapter in PEFT format, byte for byte as loaded. */
    export: (id: string): Promise<Map<string, Uint8Array>> => this.call(this.remote.adapters.export(id)),

    // With a manifest (createRuntime's `manifest`):

    /** The manifest's adapters, with whether each is for this base, cached, added and active. */
    catalog: (): Promise<CatalogEntry[]> => this.call(this.remote.adapters.catalog()),
    /**
     * Adds the manifest's adapter `id`: from IndexedDB when its copy is intact (sha256), else
     * downloaded with progress, verified and cached all or nothing. An adapter for another base is
     * refused (IncompatibleAdapterError) before anything is downloaded. Then `activate(id)` it.
     */
    install: async (id: string, options: InstallAdapterOptions = {}): Promise<InstalledAdapter> => {
      const { signal, onProgress } = options;
      signal?.throwIfAborted();
      const request = this.nextId++;
      const onAbort = () => void this.remote.abort(request).catch(() => undefined);
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const { cacheError, ...installed } = await this.call(
          this.remote.adapters.install(request, id, onProgress ? proxy(onProgress) : undefined),
        );
        return { ...installed, ...(cacheError ? { cacheError: fromWireError(cacheError) } : {}) };
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    },
    /** Removes an installed adapter from the runtime and from IndexedDB; true when it was in either. */
    uninstall: (id: string): Promise<boolean> => this.call(this.remote.adapters.uninstall(id)),
    /** The cache's bytes, entries and budget, and the origin's quota and usage. */
    usage: (): Promise<StoreUsage> => this.call(this.remote.adapters.usage()),
  };

  /**
   * Records a feedback event for the personal adapter (kept in IndexedDB): a rating, a correction, a
   * preference pair or a demonstration. A malformed event is an InvalidInputError naming the field.
   */
  feedback(event: FeedbackEvent): Promise<StoredFeedback> {
    return this.call(this.remote.feedback(event));
  }

  /**
   * Trains a new version of the personal adapter in the worker (the page never blocks) and makes it
   * active; generation meanwhile uses the last committed version. `request.signal` cancels it with
   * nothing committed; `request.judge` (RLAIF) runs on the page.
   */
  async train(request: TrainRequest, onProgress?: (e: TrainEvent) => void): Promise<TrainReport> {
    const { signal, judge, ...rest } = request;
    signal?.throwIfAborted();
    const id = this.nextId++;
    const onAbort = () => void this.remote.abort(id).catch(() => undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await this.call(
        this.remote.train(
          id,
          rest,
          onProgress ? proxy(onProgress) : undefined,
          judge ? proxy(judge) : undefined,
        ),
      );
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** The personal adapter's numbered versions: history, rollback, export in PEFT format. */
  readonly personal = {
    history: (): Promise<PersonalVersion[]> => this.call(this.remote.personal.history()),
    current: (): Promise<PersonalVersion | undefined> => this.call(this.remote.personal.current()),
    /** The feedback recorded so far, oldest first. */
    feedbackLog: (): Promise<StoredFeedback[]> => this.call(this.remote.personal.feedbackLog()),
    /** Makes an earlier version current (and active where the personal adapter is). */
    rollback: (version: number): Promise<PersonalVersion> =>
      this.call(this.remote.personal.rollback(version)),
    /** adapter_config.json and adapter_model.safetensors of a version (default the current one). */
    export: (version?: number): Promise<Map<string, Uint8Array>> =>
      this.call(this.remote.personal.export(version)),
  };

  /**
   * Stops this worker (if it still runs) and starts a new one with the same options: the model loads
   * again and, with a manifest, the remembered adapter selection comes back from IndexedDB.
   */
  restart(): Promise<RemoteRuntime> {
    this.terminate();
    return RemoteRuntime.start(this.options);
  }

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
