/**
 * The test page of the adapter store in the worker: `window.edge` (page.ts) plus `window.store`:
 * runtimes with a manifest, install/catalog/uninstall, raw IndexedDB reads and tampering that go
 * around the library, and a probe of the page's responsiveness. Everything returned is plain data.
 */
import {
  createRuntime,
  type CatalogEntry,
  type CreateRuntimeOptions,
  type FetchProgress,
  type InstalledAdapter,
  type LoadProgress,
  type RemoteRuntime,
  type RestoreReport,
} from '../../src/client.js';
import { failure, get, ORT_DIST, runtimes, type Failure } from './page.js';

type LoadOptions = Omit<CreateRuntimeOptions, 'onProgress' | 'workerUrl' | 'wasmPaths'>;

export interface Loaded {
  backend: string;
  baseFingerprint: string;
  restored: { active: RestoreReport['active']; error?: Failure };
  persisted: boolean | undefined;
  /** navigator.storage.persisted() asked by the test itself. */
  persistedNow: boolean;
  progress: LoadProgress[];
}

export type Installed = Omit<InstalledAdapter, 'cacheError'> & { cacheError?: Failure };

/** A record of the real IndexedDB, read without the library; bytes as their sha256 and length. */
export interface RawRecord {
  key: IDBValidKey;
  value?: unknown;
  bytes?: { sha256: string; length: number };
}

const options = (o: LoadOptions): CreateRuntimeOptions => ({
  ...o,
  workerUrl: new URL('worker.js', import.meta.url),
  wasmPaths: ORT_DIST,
});

async function describeLoad(rt: RemoteRuntime, progress: LoadProgress[]): Promise<Loaded> {
  const { active, error } = rt.restored;
  return {
    backend: rt.backend.name,
    baseFingerprint: rt.baseFingerprint,
    restored: { active, ...(error ? { error: failure(error) } : {}) },
    persisted: rt.persisted,
    persistedNow: await navigator.storage.persisted(),
    progress,
  };
}

function openDb(name: string): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(name);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, '0')).join('');
}

let phase: 'idle' | 'load' | 'generate' | 'done' = 'idle';
/** performance.now() when each phase began. */
const phaseStart: Record<string, number> = {};
const enter = (p: typeof phase) => {
  phase = p;
  phaseStart[p] = performance.now();
};
let received = 0;
const handled: { phase: string; received: number }[] = [];
addEventListener('mousemove', () => handled.push({ phase, received }));
let observed: Promise<{ text: string; tokens: number[] }> | undefined;

const api = {
  async load(key: string, o: LoadOptions): Promise<Loaded> {
    const progress: LoadProgress[] = [];
    const rt = await createRuntime({ ...options(o), onProgress: (p) => progress.push(p) });
    runtimes.set(key, rt);
    return describeLoad(rt, progress);
  },

  /** rt.restart() under a new key (the old one is gone). */
  async restart(key: string, newKey: string): Promise<Loaded> {
    const rt = await get(key).restart();
    runtimes.delete(key);
    runtimes.set(newKey, rt);
    return describeLoad(rt, []);
  },

  async install(
    key: string,
    id: string,
  ): Promise<{ installed?: Installed; failure?: Failure; progress: FetchProgress[] }> {
    const progress: FetchProgress[] = [];
    try {
      const { cacheError, ...rest } = await get(key).adapters.install(id, {
        onProgress: (p) => progress.push(p),
      });
      return { installed: { ...rest, ...(cacheError ? { cacheError: failure(cacheError) } : {}) }, progress };
    } catch (e) {
      return { failure: failure(e), progress };
    }
  },

  catalog: (key: string): Promise<CatalogEntry[]> => get(key).adapters.catalog(),
  uninstall: (key: string, id: string): Promise<boolean> => get(key).adapters.uninstall(id),
  usage: (key: string) => get(key).adapters.usage(),

  /** Every record of an object store of the real IndexedDB. */
  async idbRecords(dbName: string, storeName: string): Promise<RawRecord[]> {
    const db = await openDb(dbName);
    try {
      const store = db.transaction(storeName, 'readonly').objectStore(storeName);
      const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
      const records: RawRecord[] = [];
      for (let i = 0; i < keys.length; i++) {
        const value: unknown = values[i];
        records.push(
          value instanceof Uint8Array
            ? {
                key: keys[i],
                bytes: { sha256: await sha256(value as Uint8Array<ArrayBuffer>), length: value.length },
              }
            : { key: keys[i], value },
        );
      }
      return records;
    } finally {
      db.close();
    }
  },

  /** Flips one byte of adapter `id`'s stored bytes in place, in the real IndexedDB; returns their new sha256. */
  async idbTamper(dbName: string, id: string, at: number): Promise<string> {
    const db = await openDb(dbName);
    try {
      const store = db.transaction('adapters', 'readwrite').objectStore('adapters');
      const keys = await request(store.getAllKeys(IDBKeyRange.bound(['data', id], ['data', id, []])));
      if (keys.length !== 1) throw new Error(`expected one data record for ${id}, found ${keys.length}`);
      const bytes = (await request(store.get(keys[0]))) as Uint8Array<ArrayBuffer>;
      bytes[at] ^= 0xff;
      await request(store.put(bytes, keys[0]));
      return sha256(bytes);
    } finally {
      db.close();
    }
  },

  /**
   * Loads a runtime under `key` and generates `maxTokens` from `prompt`, in the background: the page
   * records, for every mousemove it handles, the phase and the tokens received so far.
   */
  startObserved(key: string, o: LoadOptions, prompt: string, maxTokens: number): void {
    handled.length = 0;
    observed = (async () => {
      enter('load');
      const rt = await createRuntime(options(o));
      runtimes.set(key, rt);
      enter('generate');
      received = 0;
      let text = '';
      const tokens: number[] = [];
      for await (const chunk of rt.generate(prompt, { maxTokens })) {
        received++;
        text += chunk.text;
        tokens.push(chunk.token);
      }
      enter('done');
      return { text, tokens };
    })();
    observed.catch(() => enter('done'));
  },
  phase: () => phase,
  observed: async () => {
    if (observed === undefined) throw new Error('call startObserved first');
    return { out: await observed, handled: [...handled], phaseStart: { ...phaseStart } };
  },
};

export type StoreTestApi = typeof api;

declare global {
  interface Window {
    store: StoreTestApi;
  }
}

window.store = api;
