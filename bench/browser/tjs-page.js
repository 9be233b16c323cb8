// transformers.js in a page, for bench/browser.ts: its self-contained web build (dist/transformers.js,
// with onnxruntime-web's WebGPU bundle inside) as served by the bench server, on the wasm device.
import { AutoModelForCausalLM, Tensor, env } from '/tjs/transformers.js';

let model;

globalThis.bench = {
  async load(modelUrl, threads, ortUrl) {
    const url = new URL(modelUrl, location.href);
    const parts = url.pathname.replace(/\/$/, '').split('/');
    const name = parts.pop();
    env.localModelPath = `${parts.join('/')}/`;
    env.allowLocalModels = true;
    env.allowRemoteModels = false;
    env.useBrowserCache = false;
    env.backends.onnx.wasm.numThreads = threads;
    env.backends.onnx.wasm.wasmPaths = {
      mjs: `${ortUrl}ort-wasm-simd-threaded.asyncify.mjs`,
      wasm: `${ortUrl}ort-wasm-simd-threaded.asyncify.wasm`,
    };
    const t = performance.now();
    model = await AutoModelForCausalLM.from_pretrained(name, { device: 'wasm', dtype: 'fp32' });
    return { loadMs: performance.now() - t, crossOriginIsolated: globalThis.crossOriginIsolated === true };
  },
  async generate(ids, maxNew) {
    const input = BigInt64Array.from(ids, BigInt);
    const t = performance.now();
    const out = await model.generate({
      input_ids: new Tensor('int64', input, [1, input.length]),
      attention_mask: new Tensor('int64', new BigInt64Array(input.length).fill(1n), [1, input.length]),
      max_new_tokens: maxNew,
      do_sample: false,
      eos_token_id: [],
    });
    const ms = performance.now() - t;
    return { ms, tokens: out.tolist()[0].slice(input.length).map(Number) };
  },
};
