/**
 * Which onnxruntime runs the graphs. `wasm` (the default) is onnxruntime-web's WebAssembly backend,
 * in Node and in browsers; `webgpu` is onnxruntime-web's WebGPU execution provider, in browsers
 * with WebGPU (the `onnxruntime-web/webgpu` build: the default build's WebGPU path gives wrong results
 * for some ops); `node` is onnxruntime-node's native CPU backend, an optional dependency for Node
 * users. All expose the same onnxruntime-common API.
 */
import type * as ort from 'onnxruntime-web';
import type { Quantization } from './language-model.js';

export type BackendName = 'wasm' | 'webgpu' | 'node';

/** The part of the onnxruntime API the engine uses; onnxruntime-web and onnxruntime-node both provide it. */
export interface OrtApi {
  InferenceSession: typeof ort.InferenceSession;
  Tensor: typeof ort.Tensor;
}

export interface BackendOptions {
  backend?: BackendName;
  /** WebAssembly / intra-op threads. In browsers, threads need cross-origin isolation (COOP/COEP). */
  threads?: number;
  /**
   * Browsers: the URL of the folder that serves onnxruntime-web's `dist/` files
   * (`ort-wasm-simd-threaded*.mjs` and `.wasm`), when a bundler did not put them next to the script.
   */
  wasmPaths?: string | URL;
}

export interface Backend {
  name: BackendName;
  ort: OrtApi;
  sessionOptions: ort.InferenceSession.SessionOptions;
}

/** onnxruntime-web's `env`, the part set here. */
interface WebEnv {
  env: { wasm: { numThreads?: number; wasmPaths?: ort.Env.WasmPrefixOrFilePaths } };
}

const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

function configure(web: WebEnv, options: BackendOptions): void {
  if (options.threads !== undefined) web.env.wasm.numThreads = options.threads;
  if (options.wasmPaths !== undefined) {
    const dir = String(options.wasmPaths);
    web.env.wasm.wasmPaths = dir.endsWith('/') ? dir : `${dir}/`;
  }
}

export async function loadBackend(options: BackendOptions = {}): Promise<Backend> {
  const name = options.backend ?? 'wasm';
  const sessionOptions: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all' };
  if (name === 'wasm') {
    // In browsers the wasm-only build (its .wasm is half the size of the default build's).
    const web = isNode ? await import('onnxruntime-web') : await import('onnxruntime-web/wasm');
    configure(web, options);
    sessionOptions.executionProviders = ['wasm'];
    return { name, ort: web, sessionOptions };
  }
  if (name === 'webgpu') {
    if (typeof navigator === 'undefined' || !('gpu' in navigator)) {
      throw new Error('backend "webgpu" needs a browser with WebGPU (navigator.gpu is not defined here)');
    }
    const web = await import('onnxruntime-web/webgpu');
    configure(web, options);
    sessionOptions.executionProviders = ['webgpu'];
    return { name, ort: web, sessionOptions };
  }
  if (name === 'node') {
    let native: OrtApi;
    try {
      // A specifier bundlers do not follow: browser bundles must not pull in the native addon.
      const specifier = 'onnxruntime-node';
      native = (await import(/* @vite-ignore */ /* webpackIgnore: true */ specifier)) as OrtApi;
    } catch (cause) {
      throw new Error(
        'backend "node" needs the optional dependency onnxruntime-node: npm install onnxruntime-node',
        {
          cause,
        },
      );
    }
    if (options.threads !== undefined) sessionOptions.intraOpNumThreads = options.threads;
    sessionOptions.executionProviders = ['cpu'];
    return { name, ort: native, sessionOptions };
  }
  throw new RangeError(`unknown backend "${String(name)}"; expected "wasm", "webgpu" or "node"`);
}

// ---------------------------------------------------------------------------------------------
// Choosing a backend in browsers

/** The backends a browser runtime can use. */
export type BrowserBackend = 'wasm' | 'webgpu';

/** GPUAdapterInfo's fields, and whether the browser calls the adapter a fallback (software) one. */
export interface WebGpuAdapterInfo {
  vendor: string;
  architecture: string;
  description: string;
  fallback: boolean;
}

/** Which backend runs the model, and why. */
export interface BackendReport {
  name: BrowserBackend;
  requested: BrowserBackend | 'auto';
  reason: string;
  /** The WebGPU adapter, when one was found. */
  gpu?: WebGpuAdapterInfo;
  /** The op types of the patched graph (sorted). */
  ops: string[];
  /** Op types of the graph not in WEBGPU_VERIFIED_OPS (empty when all are verified). */
  unverifiedOps: string[];
  /** A quantized base: its formats, and whether its quantized ops run or it was dequantized at load. */
  quantization?: Quantization;
}

/**
 * The op types verified on onnxruntime-web/webgpu against wasm: every one of them appears in the
 * stories260K graph with adapter slots, and test/browser/runtime-worker.test.ts compares every
 * node's output on WebGPU with wasm (and the greedy text of the whole model). A graph using any other
 * op runs on wasm under 'auto' until a test covers it.
 */
export const WEBGPU_VERIFIED_OPS: ReadonlySet<string> = new Set([
  'Add',
  'And',
  'Cast',
  'Concat',
  'Div',
  'Gather',
  'GreaterOrEqual',
  'LessOrEqual',
  'MatMul',
  'Max',
  'Min',
  'Mul',
  'Pow',
  'Range',
  'ReduceMean',
  'Reshape',
  'Shape',
  'Sigmoid',
  'Slice',
  'Softmax',
  'Split',
  'Sqrt',
  'Sub',
  'Transpose',
  'Unsqueeze',
  'Where',
]);

/** The browser's WebGPU adapter, or why there is none. */
export async function probeWebGpu(): Promise<WebGpuAdapterInfo | string> {
  const gpu = (globalThis.navigator as Navigator & { gpu?: { requestAdapter(): Promise<unknown> } })?.gpu;
  if (!gpu) return 'this browser has no WebGPU (navigator.gpu is undefined)';
  const adapter = (await gpu.requestAdapter().catch(() => null)) as {
    info?: { vendor?: string; architecture?: string; description?: string; isFallbackAdapter?: boolean };
    isFallbackAdapter?: boolean;
  } | null;
  if (!adapter) return 'navigator.gpu.requestAdapter() found no WebGPU adapter';
  const info = adapter.info ?? {};
  return {
    vendor: info.vendor ?? '',
    architecture: info.architecture ?? '',
    description: info.description ?? '',
    fallback: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter),
  };
}

/** A software WebGPU adapter (SwiftShader, or one the browser marks as fallback) is slower than wasm. */
const isSoftware = (gpu: WebGpuAdapterInfo) =>
  gpu.fallback || /swiftshader|llvmpipe|lavapipe/i.test(gpu.architecture);

/**
 * The browser backend for a graph with these op types: `wasm` when requested; `webgpu` when
 * requested (an error without WebGPU); for 'auto', WebGPU when there is a hardware adapter and every
 * op is in WEBGPU_VERIFIED_OPS, else wasm. The report says which and why.
 */
export async function chooseBackend(
  requested: BrowserBackend | 'auto',
  ops: string[],
  probe: () => Promise<WebGpuAdapterInfo | string> = probeWebGpu,
): Promise<BackendReport> {
  const report = (r: Omit<BackendReport, 'requested' | 'ops'>): BackendReport => ({ requested, ops, ...r });
  const unverifiedOps = ops.filter((op) => !WEBGPU_VERIFIED_OPS.has(op));
  if (requested === 'wasm') return report({ name: 'wasm', reason: 'requested', unverifiedOps });
  const gpu = await probe();
  if (typeof gpu === 'string') {
    if (requested === 'webgpu') throw new Error(`backend "webgpu" was requested, but ${gpu}`);
    return report({ name: 'wasm', reason: gpu, unverifiedOps });
  }
  const name = `${gpu.vendor} ${gpu.architecture}`.trim() || 'unnamed adapter';
  if (requested === 'webgpu') {
    const note = unverifiedOps.length ? `; ops not verified on WebGPU: ${unverifiedOps.join(', ')}` : '';
    return report({
      name: 'webgpu',
      reason: `requested (WebGPU adapter: ${name})${note}`,
      gpu,
      unverifiedOps,
    });
  }
  if (unverifiedOps.length) {
    return report({
      name: 'wasm',
      reason: `the graph uses ops not verified on WebGPU: ${unverifiedOps.join(', ')}`,
      gpu,
      unverifiedOps,
    });
  }
  if (isSoftware(gpu)) {
    return report({
      name: 'wasm',
      reason: `the only WebGPU adapter is a software renderer (${name}); wasm runs faster`,
      gpu,
      unverifiedOps,
    });
  }
  return report({
    name: 'webgpu',
    reason: `WebGPU adapter ${name}; all ${ops.length} op types of the graph are verified on WebGPU`,
    gpu,
    unverifiedOps,
  });
}
