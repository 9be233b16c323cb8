/**
 * The page of bench/browser-store.ts (`window.bench`): runtimes in a worker with a manifest, and the
 * timings taken on the page (performance.now around one call, no page.evaluate round trip inside).
 */
import { createRuntime, type RemoteRuntime } from '../../src/client.js';
import { AdapterStore } from '../../src/store/adapter-store.js';

const runtimes = new Map<string, RemoteRuntime>();
const rt = (key: string): RemoteRuntime => {
  const r = runtimes.get(key);
  if (!r) throw new Error(`no runtime ${key}`);
  return r;
};

async function timed<T>(run: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = performance.now();
  const value = await run();
  return { ms: performance.now() - start, value };
}

function openDb(name: string): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(name);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

const api = {
  async load(key: string, model: string, manifest: string, backend: 'wasm' | 'webgpu'): Promise<string> {
    const r = await createRuntime({
      model,
      manifest,
      backend,
      restore: false,
      workerUrl: new URL('worker.js', import.meta.url),
      wasmPaths: '/node_modules/onnxruntime-web/dist/',
    });
    runtimes.set(key, r);
    return r.backend.name;
  },

  /** Downloaded (nothing cached, nothing in memory), installed and activated. */
  async network(key: string, id: string): Promise<number> {
    await rt(key).adapters.uninstall(id);
    const { ms, value } = await timed(async () => {
      const installed = await rt(key).adapters.install(id);
      await rt(key).adapters.activate(id);
      return installed.from;
    });
    if (value !== 'network') throw new Error(`${id}: expected a download, got ${value}`);
    return ms;
  },

  /** Cold: not in the worker's memory; read from IndexedDB (sha256, unzip, parse), added, activated. */
  async cold(key: string, id: string): Promise<number> {
    await rt(key).adapters.deactivate();
    await rt(key).adapters.remove(id);
    const { ms, value } = await timed(async () => {
      const installed = await rt(key).adapters.install(id);
      await rt(key).adapters.activate(id);
      return installed.from;
    });
    if (value !== 'cache') throw new Error(`${id}: expected IndexedDB, got ${value}`);
    return ms;
  },

  /** Warm: added already; activate only. */
  async warm(key: string, id: string): Promise<number> {
    await rt(key).adapters.deactivate();
    return (await timed(() => rt(key).adapters.activate(id))).ms;
  },

  /** The adapter's stored bytes read on the page: a raw IndexedDB get, and AdapterStore.read (get + sha256). */
  async read(id: string, sha256: string): Promise<{ bytes: number; rawMs: number; verifiedMs: number }> {
    const db = await openDb('edge-adapters');
    const raw = await timed(
      () =>
        new Promise<Uint8Array>((resolve, reject) => {
          const store = db.transaction('adapters', 'readonly').objectStore('adapters');
          const req = store.get(['data', id, sha256]);
          req.onsuccess = () => resolve(req.result as Uint8Array);
          req.onerror = () => reject(req.error);
        }),
    );
    db.close();
    const store = new AdapterStore({ budgetBytes: 2 ** 31 });
    const verified = await timed(() => store.read(id, sha256));
    if (verified.value.status !== 'hit') throw new Error(`${id}: ${verified.value.status}`);
    return { bytes: raw.value.length, rawMs: raw.ms, verifiedMs: verified.ms };
  },

  /** The same bytes fetched from the local server (no HTTP cache: the server says no-store). */
  async fetch(url: string): Promise<number> {
    return (await timed(async () => new Uint8Array(await (await fetch(url)).arrayBuffer()))).ms;
  },

  /** ms to the first new token, and to `n + 1` new tokens (greedy, EOS ignored). */
  async decode(key: string, prompt: number[], n: number): Promise<{ first: number; all: number }> {
    const run = (maxTokens: number) =>
      timed(() => rt(key).complete(prompt, { maxTokens, eosTokenIds: [], temperature: 0 }));
    const first = (await run(1)).ms;
    const all = await run(n + 1);
    if (all.value.tokens.length !== n + 1) throw new Error(`decoded ${all.value.tokens.length} tokens`);
    return { first, all: all.ms };
  },

  async release(key: string): Promise<void> {
    await rt(key).release();
    runtimes.delete(key);
  },
};

export type StoreBenchPage = typeof api;

declare global {
  interface Window {
    bench: StoreBenchPage;
  }
}

window.bench = api;
