/**
 * Which onnxruntime runs the graphs. `wasm` (the default) is onnxruntime-web's WebAssembly backend,
 * in Node and in browsers; `node` is onnxruntime-node's native CPU backend, an optional dependency
 * for Node users. Both expose the same onnxruntime-common API.
 */
import type * as ort from 'onnxruntime-web';

export type BackendName = 'wasm' | 'node';

/** The part of the onnxruntime API the engine uses; onnxruntime-web and onnxruntime-node both provide it. */
export interface OrtApi {
  InferenceSession: typeof ort.InferenceSession;
  Tensor: typeof ort.Tensor;
}

export interface BackendOptions {
  backend?: BackendName;
  /** WebAssembly / intra-op threads. In browsers, threads need cross-origin isolation (COOP/COEP). */
  threads?: number;
}

export interface Backend {
  name: BackendName;
  ort: OrtApi;
  sessionOptions: ort.InferenceSession.SessionOptions;
}

export async function loadBackend(options: BackendOptions = {}): Promise<Backend> {
  const name = options.backend ?? 'wasm';
  const sessionOptions: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all' };
  if (name === 'wasm') {
    const web = await import('onnxruntime-web');
    if (options.threads !== undefined) web.env.wasm.numThreads = options.threads;
    sessionOptions.executionProviders = ['wasm'];
    return { name, ort: web, sessionOptions };
  }
  if (name === 'node') {
    let native: OrtApi;
    try {
      native = (await import('onnxruntime-node')) as unknown as OrtApi;
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
  throw new RangeError(`unknown backend "${String(name)}"; expected "wasm" or "node"`);
}
