/**
 * The worker side of the runtime: what `workers/runtime.worker.ts` exposes with comlink
 * (`expose(new RuntimeWorker())`). The page drives it through `createRuntime` (src/client.ts).
 *
 * Each method is a thin adapter over `Runtime` (and, with a manifest, `AdapterCatalog`): it only turns
 * what cannot be cloned (callbacks, signals, generators, errors returned as values) into what can, and
 * transfers big buffers. One worker holds one model; requests run one at a time, in order.
 */
import { proxy, releaseProxy, transfer, type Remote } from 'comlink';
import { toWireError, type WireError } from './wire-errors.js';
import { yieldToEventLoop } from './event-loop.js';
import { chooseBackend, type BackendReport, type BrowserBackend } from './engine/backend.js';
import type { FinishReason, GenerationChunk } from './engine/generate.js';
import type { Completion } from './engine/language-model.js';
import { readJson, type FileSource } from './formats/files.js';
import type { ActiveSpec, AdapterInfo, MixtureSpec, RequestOptions, Runtime } from './runtime.js';
import type { RouteChoice, RouteOptions } from './mixtures/prompt-router.js';
import { ADAPTERHUB_CONFIG, ADAPTERHUB_WEIGHTS } from './formats/adapterhub-unipelt.js';
import type { AdapterCatalog, CatalogEntry, InstalledAdapter } from './adapter-catalog.js';
import type { StoreUsage } from './store/adapter-store.js';
import { fetchWithProgress, type FetchProgress } from './store/fetch.js';
import { folderDownload, type DownloadProgress } from './store/folder-download.js';
import { modelFingerprint } from './store/manifest.js';
import type { LoadModelOptions } from './load-model.js';
import type { TrainEvent, TrainReport, TrainRequest } from './personal-adapter.js';
import type { FeedbackEvent } from './train/feedback.js';
import type { StoredFeedback } from './train/feedback-log.js';
import type { LoraInit } from './train/init-lora.js';
import type { PersonalVersion } from './train/personal-versions.js';
import type { Judge } from './train/rlaif.js';

// ---------------------------------------------------------------------------------------------
// What crosses the boundary

export type { DownloadProgress } from './store/folder-download.js';

export interface WorkerLoadOptions {
  /** Absolute URL of the model folder. */
  model: string;
  backend?: BrowserBackend | 'auto';
  /** WebAssembly threads (need a cross-origin isolated page: COOP/COEP headers). */
  threads?: number;
  /** Absolute URL of the folder serving onnxruntime-web's `dist/` (`ort-wasm-simd-threaded*.mjs|.wasm`). */
  wasmPaths?: string;
  /** Absolute URL of an adapters.json: enables install, catalog and the remembered selection. */
  manifest?: string;
  /** The adapter cache in IndexedDB. */
  cache?: AdapterCacheOptions;
  /** The `weights` string of the base's fingerprint, when the manifest's publisher used one. */
  baseWeights?: string;
  /**
   * The adapter slots to patch (loadModel's `slots`): `{ adapters: [configs] }` gives the cheapest
   * graph for a known set of adapters. Default: every slot.
   */
  slots?: LoadModelOptions['slots'];
  /**
   * A quantized base: its quantized ops ('native') or float32 weights dequantized once at load
   * ('dequantize'); 'auto' (default) takes the faster on the chosen backend (loadModel's `kernels`).
   */
  kernels?: LoadModelOptions['kernels'];
  /** Activate the selection remembered from the last session (default true; needs `manifest`). */
  restore?: boolean;
  /** The personal adapter: its IndexedDB databases and how a new one starts. */
  personal?: WorkerPersonalOptions;
}

export interface WorkerPersonalOptions {
  /** The feedback log's database (default 'edge-adapters-feedback'). */
  feedbackDbName?: string;
  /** The versions' database (default 'edge-adapters-personal'). */
  versionsDbName?: string;
  /** Versions kept (default 20). */
  keep?: number;
  /** A new personal adapter's rank, alpha, targets, last layers. */
  lora?: LoraInit;
}

/** A training request that can cross the boundary: the judge and the signal stay on the page. */
export type WorkerTrainRequest = Omit<TrainRequest, 'judge' | 'signal'>;

export interface AdapterCacheOptions {
  /** The most bytes of adapters kept (default 512 MiB); least recently used are evicted first. */
  budgetBytes?: number;
  /** IndexedDB database name (default 'edge-adapters'). */
  dbName?: string;
}

export type LoadProgress =
  | ({ stage: 'download' } & DownloadProgress)
  /** Every file is in; the inference session is being built on this backend. */
  | { stage: 'session'; backend: BrowserBackend; reason: string };

export interface WorkerLoadResult {
  backend: BackendReport;
  /** modelFingerprint of the loaded base (what a manifest's `base` must be). */
  baseFingerprint: string;
  /** The remembered selection made active again (with a manifest), or why it could not be. */
  restored: { active: ActiveSpec[]; error?: WireError };
}

/** Generation options that can cross the boundary (the AbortSignal stays on the page). */
export type WorkerGenerateOptions = Omit<RequestOptions, 'signal'>;

export type AdapterBytes = { config: Uint8Array; weights: Uint8Array };

/** InstalledAdapter with its error as structured clone carries it. */
export type WireInstalledAdapter = Omit<InstalledAdapter, 'cacheError'> & { cacheError?: WireError };

// ---------------------------------------------------------------------------------------------

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

/** The op types of the graph as it will run: the model with its adapter slots. */
async function patchedGraphOps(files: FileSource, slots: LoadModelOptions['slots']): Promise<string[]> {
  const [{ readModelFolder }, { decodeModel }, { addAdapterSlots }, { slotsFor }] = await Promise.all([
    import('./formats/model-folder.js'),
    import('./formats/onnx/index.js'),
    import('./graph/adapter-slots.js'),
    import('./methods/slots-for.js'),
  ]);
  const folder = await readModelFolder(files);
  const base = decodeModel(folder.onnx, `${folder.label}/${folder.onnxFile}`);
  const graph =
    slots === false
      ? base
      : addAdapterSlots(base, slots && 'adapters' in slots ? slotsFor(slots.adapters, folder.config) : slots)
          .model;
  const ops = new Set<string>();
  for (const node of graph.graph?.node ?? [])
    ops.add(node.domain ? `${node.domain}.${node.opType}` : node.opType);
  return [...ops].sort();
}

export class RuntimeWorker {
  private runtime: Runtime | undefined;
  private catalog: AdapterCatalog | undefined;
  private report: BackendReport | undefined;
  private readonly requests = new Map<number, AbortController>();
  /** Requests run one at a time: one session, one KV cache. */
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * Holds the Web Lock `name` for as long as this worker lives; resolves once it is held. The page
   * then asks for the same lock: it is granted when the worker is gone, however it went (terminated,
   * closed, crashed), which rejects the page's pending calls instead of leaving them hanging.
   */
  hold(name: string): Promise<void> {
    return new Promise((held) => {
      void navigator.locks.request(name, () => {
        held();
        return new Promise<never>(() => undefined);
      });
    });
  }

  async load(options: WorkerLoadOptions, onProgress?: (p: LoadProgress) => void): Promise<WorkerLoadResult> {
    if (this.runtime) throw new Error('this worker has loaded a model already');
    const relay = new Relay(onProgress);
    try {
      const files = folderDownload(options.model, (p) => relay.send({ stage: 'download', ...p }));
      const requested = options.backend ?? 'auto';
      const ops = await patchedGraphOps(files, options.slots);
      const choice = await chooseBackend(requested, ops);
      relay.send({ stage: 'session', backend: choice.name, reason: choice.reason });
      const config = (await readJson(files, 'config.json')) as object;
      const baseFingerprint = await modelFingerprint(config, {
        weights: options.baseWeights,
        file: `${files.label}config.json`,
      });
      const { Runtime } = await import('./runtime.js');
      const [{ indexedDbFeedbackLog }, { indexedDbPersonalVersions }] = await Promise.all([
        import('./train/feedback-log.js'),
        import('./train/personal-versions.js'),
      ]);
      const personal = options.personal ?? {};
      const runtime = await Runtime.create({
        model: files,
        backend: choice.name,
        threads: options.threads,
        wasmPaths: options.wasmPaths,
        slots: options.slots,
        kernels: options.kernels,
        personal: {
          feedback: indexedDbFeedbackLog({ dbName: personal.feedbackDbName }),
          versions: indexedDbPersonalVersions({ dbName: personal.versionsDbName, keep: personal.keep }),
          lora: personal.lora,
        },
      });
      files.clear();
      let restored: WorkerLoadResult['restored'] = { active: [] };
      if (options.manifest !== undefined) {
        const { AdapterCatalog } = await import('./adapter-catalog.js');
        this.catalog = await AdapterCatalog.open(runtime.adapters, {
          manifestUrl: options.manifest,
          baseFingerprint,
          ...options.cache,
        });
        if (options.restore !== false) {
          const { active, error } = await this.catalog.restore();
          restored = { active, ...(error ? { error: toWireError(error) } : {}) };
        }
      }
      this.runtime = runtime;
      const quantization = runtime.model.quantization;
      this.report = quantization ? { ...choice, quantization } : choice;
      return { backend: this.report, baseFingerprint, restored };
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

  private cat(): AdapterCatalog {
    if (!this.catalog)
      throw new Error('no adapter manifest: pass createRuntime({ manifest: "adapters.json", ... })');
    return this.catalog;
  }

  private exclusive<T>(run: () => Promise<T>): Promise<T> {
    const result = this.queue.then(run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** A request the page can cancel with `abort(id)`. */
  private async cancellable<T>(id: number, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const controller = new AbortController();
    this.requests.set(id, controller);
    try {
      return await run(controller.signal);
    } finally {
      this.requests.delete(id);
    }
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
    const relay = new Relay(onChunk);
    try {
      return await this.cancellable(id, (signal) =>
        this.exclusive(async () => {
          const chunks = this.rt().generate(prompt, { ...options, signal });
          for (;;) {
            const next = await chunks.next();
            if (next.done) return next.value;
            relay.send(next.value);
            await yieldToEventLoop(); // lets an abort message in between tokens
          }
        }),
      );
    } finally {
      await relay.close();
    }
  }

  /** Cancels request `id` (a generate, an install or a training run). */
  abort(id: number): void {
    this.requests.get(id)?.abort(new DOMException('aborted', 'AbortError'));
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

  /** Records a feedback event for the personal adapter, in IndexedDB. */
  feedback(event: FeedbackEvent): Promise<StoredFeedback> {
    return this.rt().feedback(event);
  }

  /**
   * Trains a new version of the personal adapter. Not queued behind generation, and generation is
   * not queued behind it: requests meanwhile run between training steps, with the last committed
   * version. `abort(id)` cancels it (nothing is committed); `judge` is the page's RLAIF judge.
   */
  async train(
    id: number,
    request: WorkerTrainRequest,
    onProgress?: (e: TrainEvent) => void,
    judge?: Judge,
  ): Promise<TrainReport> {
    const relay = new Relay(onProgress);
    try {
      return await this.cancellable(id, async (signal) => {
        const report = await this.rt().train({ ...request, signal, ...(judge ? { judge } : {}) }, (e) =>
          relay.send(e),
        );
        await this.catalog?.remember();
        return report;
      });
    } finally {
      await relay.close();
    }
  }

  /** The personal adapter's versions, rollback and export (PEFT files, transferred). */
  readonly personal = proxy({
    history: (): Promise<PersonalVersion[]> => this.rt().personal.history(),
    current: (): Promise<PersonalVersion | undefined> => this.rt().personal.current(),
    feedbackLog: (): Promise<StoredFeedback[]> => this.rt().personal.feedbackLog(),
    rollback: (version: number): Promise<PersonalVersion> =>
      this.exclusive(async () => {
        const v = await this.rt().personal.rollback(version);
        await this.catalog?.remember();
        return v;
      }),
    export: async (version?: number): Promise<Map<string, Uint8Array>> => {
      const files = new Map(
        [...(await this.rt().personal.export(version))].map(([name, b]) => [name, b.slice()]),
      );
      return transfer(
        files,
        [...files.values()].map((b) => b.buffer as ArrayBuffer),
      );
    },
  });

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
        const from = typeof source === 'string' ? folderDownload(source, (p) => relay.send(p)) : source;
        return await this.rt().adapters.add(id, from);
      } finally {
        await relay.close();
      }
    },
    activate: async (spec: string | readonly (string | ActiveSpec)[]): Promise<void> => {
      await this.rt().adapters.activate(spec);
      await this.catalog?.remember();
    },
    deactivate: async (): Promise<void> => {
      this.rt().adapters.deactivate();
      await this.catalog?.remember();
    },
    activateMixture: async (spec: MixtureSpec): Promise<void> => {
      await this.rt().adapters.activateMixture(spec);
    },
    /** X-LoRA: PEFT's XLORA files (bytes or a folder URL) over added LoRA experts. */
    activateXLora: async (source: string | TwoFiles, experts: readonly string[]): Promise<void> => {
      const files = await twoFiles(source, 'adapter_config.json', 'adapter_model.safetensors');
      await this.rt().adapters.activateXLora(files, experts);
    },
    /** A UniPELT adapter in AdapterHub's format: a folder URL or its two files' bytes. */
    activateUniPelt: async (source: string | TwoFiles): Promise<void> => {
      await this.rt().adapters.activateUniPelt(await twoFiles(source, ADAPTERHUB_CONFIG, ADAPTERHUB_WEIGHTS));
    },
    setExamples: (id: string, prompts: readonly string[]): Promise<void> =>
      this.exclusive(() => this.rt().adapters.setExamples(id, prompts)),
    route: (prompt: string, options?: RouteOptions): Promise<RouteChoice[]> =>
      this.exclusive(() => this.rt().adapters.route(prompt, options)),
    active: (): ActiveSpec[] => this.rt().adapters.active(),
    list: (): AdapterInfo[] => this.rt().adapters.list(),
    remove: async (id: string): Promise<void> => {
      await this.rt().adapters.remove(id);
      await this.catalog?.remember();
    },
    /** adapter_config.json and adapter_model.safetensors, copied out and transferred. */
    export: (id: string): Map<string, Uint8Array> => {
      const files = new Map([...this.rt().adapters.export(id)].map(([name, bytes]) => [name, bytes.slice()]));
      return transfer(
        files,
        [...files.values()].map((b) => b.buffer as ArrayBuffer),
      );
    },

    /** The manifest's adapters with their cached, added and active state. */
    catalog: (): Promise<CatalogEntry[]> => this.cat().entries(),
    /** A manifest adapter by id: from IndexedDB, else downloaded and cached; cancellable as request `requestId`. */
    install: async (
      requestId: number,
      id: string,
      onProgress?: (p: FetchProgress) => void,
    ): Promise<WireInstalledAdapter> => {
      const relay = new Relay(onProgress);
      try {
        const { cacheError, ...installed } = await this.cancellable(requestId, (signal) =>
          this.cat().install(id, { signal, onProgress: (p) => relay.send(p) }),
        );
        return { ...installed, ...(cacheError ? { cacheError: toWireError(cacheError) } : {}) };
      } finally {
        await relay.close();
      }
    },
    uninstall: (id: string): Promise<boolean> => this.cat().uninstall(id),
    usage: (): Promise<StoreUsage> => this.cat().usage(),
  });

  async release(): Promise<void> {
    for (const controller of this.requests.values())
      controller.abort(new DOMException('released', 'AbortError'));
    await this.queue;
    await this.runtime?.release();
    this.runtime = undefined;
  }
}

type TwoFiles = { config: Uint8Array; weights: Uint8Array };

/** An adapter's config and weights: given as bytes, or fetched from a folder URL (FetchError naming the URL). */
async function twoFiles(source: string | TwoFiles, config: string, weights: string): Promise<TwoFiles> {
  if (typeof source !== 'string') return source;
  const folder = source.endsWith('/') ? source : `${source}/`;
  const [c, w] = await Promise.all(
    [config, weights].map((name) => fetchWithProgress(new URL(name, folder).href)),
  );
  return { config: c, weights: w };
}
