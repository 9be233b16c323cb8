/**
 * Our engine in a page, for bench/browser.ts: bundled by esbuild (bench/out/browser/ours.js) from
 * src/load-model.ts with a urlSource. onnxruntime-web's files are served by the bench server, and
 * both of its builds the engine may import get their wasm from there.
 */
import * as ortDefault from 'onnxruntime-web';
import * as ortWasm from 'onnxruntime-web/wasm';
import { urlSource } from '../../src/formats/files.js';
import { loadModel } from '../../src/load-model.js';
import type { LanguageModel } from '../../src/engine/language-model.js';
import type { BenchPage } from './page-api.js';

let model: LanguageModel | undefined;

const api: BenchPage = {
  async load(modelUrl, threads, ortUrl) {
    for (const ort of [ortDefault, ortWasm]) ort.env.wasm.wasmPaths = ortUrl;
    const t = performance.now();
    model = await loadModel(urlSource(modelUrl), { threads, slots: false });
    return { loadMs: performance.now() - t, crossOriginIsolated: globalThis.crossOriginIsolated === true };
  },
  async generate(ids, maxNew) {
    if (!model) throw new Error('load first');
    const t = performance.now();
    const { tokens } = await model.complete(ids, { maxTokens: maxNew, eosTokenIds: [], temperature: 0 });
    return { ms: performance.now() - t, tokens };
  },
};

(globalThis as unknown as { bench: BenchPage }).bench = api;
