/**
 * The test page: what the browser tests drive through `page.evaluate`, on `window.edge`. It runs on
 * the main thread; each runtime runs in the worker that createRuntime starts. Everything returned
 * is plain data (page.evaluate clones it to Node).
 */
import {
  createRuntime,
  WorkerError,
  type BackendReport,
  type CreateRuntimeOptions,
  type DownloadProgress,
  type LoadProgress,
  type RemoteRuntime,
} from '../../src/client.js';
import type { FinishReason } from '../../src/engine/generate.js';
import type { ActiveSpec, AdapterInfo, MixtureSpec, RequestOptions } from '../../src/runtime.js';
import type { RouteOptions } from '../../src/mixtures/prompt-router.js';
import {
  AdapterFormatError,
  EdgeAdaptersError,
  IncompatibleAdapterError,
  InvalidInputError,
} from '../../src/errors.js';
import { FetchError, IntegrityError, QuotaError } from '../../src/store/errors.js';
import { compareOps, type OpComparison } from './ops-page.js';
import { gpuResidency, type GpuResidency } from './gpu-residency-page.js';

export interface LongTask {
  start: number;
  duration: number;
}

export interface Generated {
  text: string;
  tokens: number[];
  chunks: number;
  finishReason: FinishReason;
}

/** How a call failed, as seen on the page. */
export interface Failure {
  name: string;
  message: string;
  /** instanceof checks against the page's own classes. */
  classes: string[];
  file?: string;
  field?: string;
}

export const ORT_DIST = '/node_modules/onnxruntime-web/dist/';
/** The runtimes the tests started, by key (other test pages add theirs here too). */
export const runtimes = new Map<string, RemoteRuntime>();
const running = new Map<string, Promise<{ chunks: number; failure?: Failure }>>();
const longTasks: LongTask[] = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) longTasks.push({ start: e.startTime, duration: e.duration });
}).observe({ type: 'longtask', buffered: true });

export function get(key: string): RemoteRuntime {
  const rt = runtimes.get(key);
  if (!rt) throw new Error(`no runtime "${key}"`);
  return rt;
}

export function failure(e: unknown): Failure {
  const error = e as Partial<EdgeAdaptersError>;
  const classes = Object.entries({
    WorkerError,
    EdgeAdaptersError,
    AdapterFormatError,
    InvalidInputError,
    IncompatibleAdapterError,
    FetchError,
    IntegrityError,
    QuotaError,
  })
    .filter(([, C]) => e instanceof C)
    .map(([name]) => name);
  if (e instanceof DOMException) classes.push('DOMException');
  return {
    name: String(error.name),
    message: String(error.message),
    classes,
    ...(error.file !== undefined ? { file: error.file } : {}),
    ...(error.field !== undefined ? { field: error.field } : {}),
  };
}

async function collect(
  chunks: AsyncGenerator<{ text: string; token: number }, FinishReason>,
): Promise<Generated> {
  let text = '';
  const tokens: number[] = [];
  for (;;) {
    const next = await chunks.next();
    if (next.done) return { text, tokens, chunks: tokens.length, finishReason: next.value };
    text += next.value.text;
    tokens.push(next.value.token);
  }
}

const api = {
  /** Starts a runtime under `key`; returns its backend report and every progress event. */
  async load(
    key: string,
    options: Omit<CreateRuntimeOptions, 'onProgress' | 'workerUrl' | 'wasmPaths'>,
  ): Promise<{ backend: BackendReport; progress: LoadProgress[]; ms: number }> {
    const progress: LoadProgress[] = [];
    const start = performance.now();
    const rt = await createRuntime({
      ...options,
      workerUrl: new URL('worker.js', import.meta.url),
      wasmPaths: ORT_DIST,
      onProgress: (p) => progress.push(p),
    });
    runtimes.set(key, rt);
    return { backend: rt.backend, progress, ms: performance.now() - start };
  },

  generate: (key: string, prompt: string, options: Omit<RequestOptions, 'signal'>): Promise<Generated> =>
    collect(get(key).generate(prompt, options)),

  /** Generates with an AbortSignal aborted after `after` chunks. */
  async generateAndAbort(
    key: string,
    prompt: string,
    after: number,
  ): Promise<{ chunks: number; failure?: Failure }> {
    const controller = new AbortController();
    let chunks = 0;
    try {
      for await (const _ of get(key).generate(prompt, { maxTokens: 200, signal: controller.signal })) {
        if (++chunks === after) controller.abort();
      }
      return { chunks };
    } catch (e) {
      return { chunks, failure: failure(e) };
    }
  },

  /** Starts generating under `tag`; resolves once `after` chunks arrived (the generation goes on). */
  startGenerating(key: string, tag: string, prompt: string, maxTokens: number, after: number): Promise<void> {
    return new Promise((resolve) => {
      let chunks = 0;
      const done = (async () => {
        try {
          for await (const _ of get(key).generate(prompt, { maxTokens })) if (++chunks === after) resolve();
          return { chunks };
        } catch (e) {
          return { chunks, failure: failure(e) };
        } finally {
          resolve();
        }
      })();
      running.set(tag, done);
    });
  },

  /** How the generation started under `tag` ended. */
  outcome: (tag: string) => running.get(tag) as Promise<{ chunks: number; failure?: Failure }>,

  terminate: (key: string): void => get(key).terminate(),

  async addAdapter(
    key: string,
    id: string,
    url: string,
  ): Promise<{ info: AdapterInfo; progress: DownloadProgress[] }> {
    const progress: DownloadProgress[] = [];
    const info = await get(key).adapters.add(id, url, { onProgress: (p) => progress.push(p) });
    return { info, progress };
  },

  /** Adds an adapter from the bytes of its two files fetched by the page (transferred to the worker). */
  async addAdapterBytes(
    key: string,
    id: string,
    url: string,
  ): Promise<{ info: AdapterInfo; byteLengthsAfter: number[] }> {
    const [config, weights] = await Promise.all(
      ['adapter_config.json', 'adapter_model.safetensors'].map(
        async (f) =>
          new Uint8Array(await (await fetch(new URL(f, new URL(url, location.href)))).arrayBuffer()),
      ),
    );
    const info = await get(key).adapters.add(id, { config, weights });
    return { info, byteLengthsAfter: [config.byteLength, weights.byteLength] };
  },

  /** Runs `call` on the runtime and returns how it failed (or undefined). */
  async failureOf(
    key: string,
    call: 'addMissing' | 'activateUnknown' | 'badTokens',
  ): Promise<Failure | undefined> {
    const rt = get(key);
    try {
      if (call === 'addMissing') await rt.adapters.add('missing', '/served/adapters/does-not-exist/');
      if (call === 'activateUnknown') await rt.adapters.activate('nope');
      if (call === 'badTokens') await rt.logits([1, 99999]);
      return undefined;
    } catch (e) {
      return failure(e);
    }
  },

  activate: (key: string, spec: string | (string | ActiveSpec)[]) => get(key).adapters.activate(spec),
  activateMixture: (key: string, spec: MixtureSpec) => get(key).adapters.activateMixture(spec),
  activateUniPelt: (key: string, url: string) => get(key).adapters.activateUniPelt(url),
  activateXLora: (key: string, url: string, experts: string[]) =>
    get(key).adapters.activateXLora(url, experts),
  setExamples: (key: string, id: string, prompts: string[]) => get(key).adapters.setExamples(id, prompts),
  route: (key: string, prompt: string, options?: RouteOptions) => get(key).adapters.route(prompt, options),
  deactivate: (key: string) => get(key).adapters.deactivate(),
  list: (key: string) => get(key).adapters.list(),
  remove: (key: string, id: string) => get(key).adapters.remove(id),
  async export(key: string, id: string): Promise<Record<string, number[]>> {
    const files = await get(key).adapters.export(id);
    return Object.fromEntries([...files].map(([name, bytes]) => [name, Array.from(bytes)]));
  },
  async logits(key: string, tokens: number[]): Promise<number[][]> {
    return (await get(key).logits(tokens)).map((row) => Array.from(row));
  },
  async release(key: string): Promise<void> {
    await get(key).release();
    runtimes.delete(key);
  },

  longTasks: (since: number): LongTask[] => longTasks.filter((t) => t.start + t.duration >= since),
  now: (): number => performance.now(),

  gpuResidency: (modelUrl: string, adapterUrl: string): Promise<GpuResidency> =>
    gpuResidency(
      new URL(modelUrl, location.href).href,
      new URL(adapterUrl, location.href).href,
      new URL(ORT_DIST, location.href).href,
    ),
  compareOps: (modelUrl: string, adapterUrl: string | undefined): Promise<OpComparison> =>
    compareOps(
      new URL(modelUrl, location.href).href,
      adapterUrl === undefined ? undefined : new URL(adapterUrl, location.href).href,
      new URL(ORT_DIST, location.href).href,
    ),
};

export type EdgeTestApi = typeof api;

declare global {
  interface Window {
    edge: EdgeTestApi;
  }
}

window.edge = api;
