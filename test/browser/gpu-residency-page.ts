/**
 * In the page: what stays on the GPU when the engine runs on onnxruntime-web/webgpu. One model is
 * loaded on WebGPU and once more on wasm; the same adapter is activated on both; a prefill and a
 * decode step run on each. Reports where every cache and slot tensor lives through the request's
 * life (a cache dropped by dispose, an adapter replaced while a request holds it) and how far the
 * WebGPU logits are from wasm's.
 */
import { urlSource } from '../../src/formats/files.js';
import { loadModelWithBase } from '../../src/load-model.js';
import { AdapterRegistry } from '../../src/runtime.js';
import type { KvCache } from '../../src/engine/decoder-session.js';

export interface GpuResidency {
  /** Locations of the active adapter's slot tensors after activate. */
  slots: string[];
  /** Locations of the cache tensors after the prefill and after the decode step. */
  prefillCache: string[];
  decodeCache: string[];
  /** The prefill cache after dispose(). */
  disposedCache: string[];
  /** The held adapter's slot tensors after deactivate (still in use), then after end(). */
  heldAfterDeactivate: string[];
  releasedAfterEnd: string[];
  /** max |logits WebGPU - logits wasm| over the prefill's last row and the decode step. */
  logitsMaxAbsDiff: number;
}

const locations = (tensors: Iterable<{ location: string }>) => [
  ...new Set([...tensors].map((t) => t.location)),
];

export async function gpuResidency(
  modelUrl: string,
  adapterUrl: string,
  wasmPaths: string,
): Promise<GpuResidency> {
  const prompt = [1, 403, 407, 261, 378, 291, 400, 46];
  const run = async (backend: 'webgpu' | 'wasm') => {
    const { model, base } = await loadModelWithBase(urlSource(modelUrl), { backend, wasmPaths });
    const registry = new AdapterRegistry(model, base);
    await registry.add('lora', urlSource(adapterUrl));
    await registry.activate('lora');
    const session = model.session;
    const slots = locations(Object.values(session.active.slots));
    const held = session.begin();
    const first = await session.forward(prompt, session.startCache(held), held);
    const vocab = model.config.vocab_size;
    const last = first.logits.slice((prompt.length - 1) * vocab);
    const second = await session.forward([last.indexOf(Math.max(...last))], first.cache, held);
    const cacheLocations = (c: KvCache) => locations(c.tensors.values());
    const prefillCache = cacheLocations(first.cache);
    const decodeCache = cacheLocations(second.cache);
    session.dispose(first.cache);
    const disposedCache = cacheLocations(first.cache);
    registry.deactivate();
    const heldAfterDeactivate = locations(Object.values(held.slots));
    session.end(held);
    const releasedAfterEnd = locations(Object.values(held.slots));
    session.dispose(second.cache);
    await model.release();
    const logits = [...last, ...second.logits];
    return { slots, prefillCache, decodeCache, disposedCache, heldAfterDeactivate, releasedAfterEnd, logits };
  };
  const gpu = await run('webgpu');
  const cpu = await run('wasm');
  const logitsMaxAbsDiff = gpu.logits.reduce((m, v, i) => Math.max(m, Math.abs(v - cpu.logits[i])), 0);
  const { logits: _, ...rest } = gpu;
  return { ...rest, logitsMaxAbsDiff };
}
