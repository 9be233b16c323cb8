/**
 * The adapter cache: IndexedDB through idb-keyval's `createStore`, one object store, two kinds of
 * records (array keys):
 *
 *   ['meta', id]          -> { id, sha256, bytes, lastUsed, source }   small, read for LRU and lists
 *   ['data', id, sha256]  -> Uint8Array                                the adapter's bytes
 *
 * One entry per id (a new version replaces the old). Every write is one IndexedDB transaction that
 * also reads the index it decides on (budget evictions, the data and the index record), so a failure
 * anywhere (a quota error, a crash, a closed tab) leaves the whole entry or none of it, and two tabs
 * cannot overshoot the budget together. Opening the store sweeps what an older version or a manual
 * edit may have left: data without an index record, index records without data, entries over budget.
 *
 * Reads check the bytes against their sha256: a corrupted entry is deleted, reported (onCorrupt) and
 * answered as a miss, so the caller fetches it again.
 *
 * Quota: the byte budget is the store's own limit (LRU eviction keeps the total under it). When the
 * browser's quota refuses a write anyway (QuotaExceededError), the least recently used entries are
 * evicted, in their own transaction, until at least the new entry's size has been freed, and the write
 * is tried once more; if it fails again, QuotaError names the sizes.
 */
import { type UseStore, createStore } from 'idb-keyval';
import { transact } from './idb.js';
import { IntegrityError, QuotaError } from './errors.js';
import { isSha256Hex, sha256Hex } from './hash.js';

/** One cached adapter, as `list()` reports it. */
export interface StoredAdapter {
  id: string;
  /** sha256 of the stored bytes (64 hex). */
  sha256: string;
  bytes: number;
  /** Milliseconds since the epoch of the last put or successful get (strictly increasing per store). */
  lastUsed: number;
  /** What the entry was made from and can be looked up by: `sha256` unless put was given another. */
  source: string;
}

/** A stored entry whose bytes did not match its sha256, or that had no bytes. */
export interface CorruptEntry {
  id: string;
  sha256: string;
  bytes: number;
  /** sha256 of what was found, or null when the bytes were missing or not bytes. */
  actual: string | null;
}

export type EvictionReason = 'budget' | 'quota';

export interface AdapterStoreOptions {
  /** The most bytes of adapters the store keeps (metadata not counted). */
  budgetBytes: number;
  /** IndexedDB database name (default 'edge-adapters'). The object store is 'adapters'. */
  dbName?: string;
  /** A corrupted entry was found, deleted and answered as a miss. */
  onCorrupt?: (entry: CorruptEntry) => void;
  /**
   * An entry was evicted, to stay under the budget or to make room after a quota error; `forId` is
   * the adapter being stored that needed the room (undefined when opening the store swept it).
   */
  onEvict?: (entry: StoredAdapter, reason: EvictionReason, forId: string | undefined) => void;
  /** The clock for lastUsed (default Date.now). */
  now?: () => number;
}

export type ReadResult =
  { status: 'hit'; bytes: Uint8Array } | { status: 'miss' } | { status: 'corrupt'; entry: CorruptEntry };

export interface StoreUsage {
  /** Bytes of adapters held. */
  bytes: number;
  entries: number;
  budgetBytes: number;
  /** From navigator.storage.estimate(), for the whole origin, when available. */
  quota?: number;
  usage?: number;
}

export const DEFAULT_DB_NAME = 'edge-adapters';
export const STORE_NAME = 'adapters';

export const metaKey = (id: string): IDBValidKey => ['meta', id];
export const dataKey = (id: string, sha256: string): IDBValidKey => ['data', id, sha256];
/** Arrays sort after strings, so [kind, []] is above every [kind, string, ...]. */
const range = (...prefix: string[]) => IDBKeyRange.bound(prefix, [...prefix, []]);

/** A QuotaExceededError of any browser (Chromium, Firefox, Safari; old and new spellings). */
export function isQuotaExceeded(e: unknown): boolean {
  if (typeof e !== 'object' || e === null) return false;
  const { name, code } = e as { name?: unknown; code?: unknown };
  return name === 'QuotaExceededError' || name === 'NS_ERROR_DOM_QUOTA_REACHED' || code === 22;
}

/** navigator.storage, when the platform has it (browsers; not Node 20). */
function storageManager(): StorageManager | undefined {
  const nav = (globalThis as { navigator?: { storage?: StorageManager } }).navigator;
  return nav?.storage;
}

async function estimate(): Promise<{ quota?: number; usage?: number }> {
  try {
    const e = await storageManager()?.estimate?.();
    return { quota: e?.quota, usage: e?.usage };
  } catch {
    return {};
  }
}

function asMeta(v: unknown): StoredAdapter | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const m = v as Record<string, unknown>;
  const ok =
    typeof m.id === 'string' &&
    isSha256Hex(m.sha256) &&
    typeof m.bytes === 'number' &&
    Number.isSafeInteger(m.bytes) &&
    m.bytes >= 0 &&
    typeof m.lastUsed === 'number' &&
    Number.isFinite(m.lastUsed) &&
    typeof m.source === 'string';
  return ok
    ? {
        id: m.id as string,
        sha256: m.sha256 as string,
        bytes: m.bytes as number,
        lastUsed: m.lastUsed as number,
        source: m.source as string,
      }
    : undefined;
}

const validMetas = (values: unknown[]): StoredAdapter[] =>
  values.map(asMeta).filter((m): m is StoredAdapter => m !== undefined);

const byLastUsed = (a: StoredAdapter, b: StoredAdapter) => a.lastUsed - b.lastUsed;

const total = (metas: readonly StoredAdapter[]) => metas.reduce((n, m) => n + m.bytes, 0);

function deleteEntry(store: IDBObjectStore, id: string): void {
  store.delete(range('data', id));
  store.delete(metaKey(id));
}

export class AdapterStore {
  readonly budgetBytes: number;
  readonly dbName: string;
  readonly #db: UseStore;
  readonly #onCorrupt: ((e: CorruptEntry) => void) | undefined;
  readonly #onEvict: AdapterStoreOptions['onEvict'];
  readonly #now: () => number;
  #clock = 0;
  #opened: Promise<void> | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(opts: AdapterStoreOptions) {
    if (!Number.isSafeInteger(opts.budgetBytes) || opts.budgetBytes <= 0) {
      throw new RangeError(`AdapterStore: budgetBytes must be a positive integer, got ${opts.budgetBytes}`);
    }
    this.budgetBytes = opts.budgetBytes;
    this.dbName = opts.dbName ?? DEFAULT_DB_NAME;
    this.#db = createStore(this.dbName, STORE_NAME);
    this.#onCorrupt = opts.onCorrupt;
    this.#onEvict = opts.onEvict;
    this.#now = opts.now ?? Date.now;
  }

  /** The adapter's bytes, or undefined (absent, another version, or corrupted: see `read`). */
  async get(id: string, sha256: string): Promise<Uint8Array | undefined> {
    const r = await this.read(id, sha256);
    return r.status === 'hit' ? r.bytes : undefined;
  }

  /**
   * Look up `id` by `sha256` (the stored bytes' hash or the `source` given to put). A hit is verified
   * against the stored sha256 and marked as used; a corrupted entry is deleted and reported.
   */
  read(id: string, sha256: string): Promise<ReadResult> {
    return this.#exclusive(async () => {
      await this.#open();
      const found = await transact(this.#db, 'readonly', (store, guard) => {
        let meta: StoredAdapter | undefined;
        let data: unknown;
        const metaReq = store.get(metaKey(id));
        metaReq.onsuccess = guard(() => {
          meta = asMeta(metaReq.result);
          if (meta === undefined || (meta.sha256 !== sha256 && meta.source !== sha256)) return;
          const dataReq = store.get(dataKey(id, meta.sha256));
          dataReq.onsuccess = guard(() => (data = dataReq.result));
        });
        return () => ({ meta, data });
      });
      const { meta, data } = found;
      if (meta === undefined || (meta.sha256 !== sha256 && meta.source !== sha256)) return { status: 'miss' };

      const actual = data instanceof Uint8Array ? await sha256Hex(data, id) : null;
      if (actual !== meta.sha256 || (data as Uint8Array).length !== meta.bytes) {
        await transact(this.#db, 'readwrite', (store) => {
          deleteEntry(store, id);
          return () => undefined;
        });
        const entry: CorruptEntry = { id, sha256: meta.sha256, bytes: meta.bytes, actual };
        this.#onCorrupt?.(entry);
        return { status: 'corrupt', entry };
      }
      const touched = { ...meta, lastUsed: this.#tick() };
      await transact(this.#db, 'readwrite', (store, guard) => {
        const req = store.get(metaKey(id)); // unchanged since the read? (another tab may have replaced it)
        req.onsuccess = guard(() => {
          if (asMeta(req.result)?.sha256 === meta.sha256) store.put(touched, metaKey(id));
        });
        return () => undefined;
      });
      return { status: 'hit', bytes: data as Uint8Array };
    });
  }

  /**
   * Store `bytes` as adapter `id` (replacing any other version of it), after checking that they hash
   * to `sha256`. Evicts least recently used entries to stay within the budget. `source`: another name
   * to look the entry up by (e.g. the manifest hash of what the bytes were built from).
   * Throws IntegrityError (wrong hash) or QuotaError (over the budget, or the browser's quota is
   * exhausted even after evicting); either way nothing of the new entry is stored.
   */
  async put(id: string, sha256: string, bytes: Uint8Array, opts: { source?: string } = {}): Promise<void> {
    if (typeof id !== 'string' || id === '')
      throw new TypeError('AdapterStore.put: id must be a non-empty string');
    const hash = typeof sha256 === 'string' ? sha256.toLowerCase() : '';
    if (!isSha256Hex(hash)) throw new TypeError(`AdapterStore.put: ${id}: sha256 must be 64 hex characters`);
    if (!(bytes instanceof Uint8Array)) throw new TypeError(`AdapterStore.put: ${id}: expected a Uint8Array`);
    const n = bytes.length;
    if (n > this.budgetBytes) {
      const stored = total(await this.list());
      throw new QuotaError(
        id,
        `the adapter is ${n} bytes, more than the store's whole budget of ${this.budgetBytes} bytes`,
        {
          bytes: n,
          budgetBytes: this.budgetBytes,
          storedBytes: stored,
          evictedBytes: 0,
        },
      );
    }
    const actual = await sha256Hex(bytes, id);
    if (actual !== hash) throw new IntegrityError(id, 'sha256', `the bytes hash to ${actual}, not ${hash}`);
    // Structured clone copies a view's whole buffer: store exactly these bytes.
    const value =
      bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();

    return this.#exclusive(async () => {
      await this.#open();
      const est = await estimate();
      if (est.quota !== undefined && n > est.quota) {
        const stored = total(await this.#metas());
        throw new QuotaError(
          id,
          `the adapter is ${n} bytes, more than the browser's whole storage quota of ${est.quota} bytes`,
          {
            bytes: n,
            budgetBytes: this.budgetBytes,
            storedBytes: stored,
            evictedBytes: 0,
            ...est,
          },
        );
      }
      const meta: StoredAdapter = {
        id,
        sha256: hash,
        bytes: n,
        lastUsed: this.#tick(),
        source: opts.source ?? hash,
      };
      let evictedBytes = 0;
      for (let attempt = 0; ; attempt++) {
        try {
          const victims = await transact(this.#db, 'readwrite', (store, guard) => {
            const planned: StoredAdapter[] = [];
            const req = store.getAll(range('meta'));
            req.onsuccess = guard(() => {
              const others = validMetas(req.result)
                .filter((m) => m.id !== id)
                .sort(byLastUsed);
              let kept = total(others);
              while (kept + n > this.budgetBytes) {
                const victim = others[planned.length];
                planned.push(victim);
                kept -= victim.bytes;
              }
              for (const v of planned) deleteEntry(store, v.id);
              store.delete(range('data', id)); // the previous version, if any
              store.put(value, dataKey(id, hash));
              store.put(meta, metaKey(id)); // last: the index record is the commit mark
            });
            return () => planned;
          });
          for (const v of victims) this.#onEvict?.(v, 'budget', id);
          return;
        } catch (e) {
          if (!isQuotaExceeded(e)) throw e;
          const freed = attempt === 0 ? await this.#evictForQuota(id, n) : 0;
          evictedBytes += freed;
          if (freed === 0) {
            const stored = total(await this.#metas());
            const est = await estimate();
            const where =
              est.quota !== undefined ? `; the origin uses ${est.usage ?? '?'} of ${est.quota} bytes` : '';
            throw new QuotaError(
              id,
              `the browser's storage quota refused ${n} bytes (QuotaExceededError) after evicting ${evictedBytes} bytes of cached adapters; ${stored} bytes remain cached${where}`,
              { bytes: n, budgetBytes: this.budgetBytes, storedBytes: stored, evictedBytes, ...est },
            );
          }
        }
      }
    });
  }

  /** Evict (committed on its own) the old version of `id`, then LRU entries, until `need` bytes are freed. */
  async #evictForQuota(id: string, need: number): Promise<number> {
    const victims = await transact(this.#db, 'readwrite', (store, guard) => {
      const planned: StoredAdapter[] = [];
      const req = store.getAll(range('meta'));
      req.onsuccess = guard(() => {
        const metas = validMetas(req.result).sort(
          (a, b) => Number(b.id === id) - Number(a.id === id) || byLastUsed(a, b),
        );
        let freed = 0;
        for (const m of metas) {
          if (freed >= need) break;
          planned.push(m);
          freed += m.bytes;
        }
        for (const v of planned) deleteEntry(store, v.id);
      });
      return () => planned;
    });
    for (const v of victims) this.#onEvict?.(v, 'quota', id);
    return total(victims);
  }

  /** The cached adapters, most recently used first. */
  list(): Promise<StoredAdapter[]> {
    return this.#exclusive(async () => {
      await this.#open();
      return (await this.#metas()).sort((a, b) => b.lastUsed - a.lastUsed);
    });
  }

  /** Remove adapter `id`; true when it was cached. */
  delete(id: string): Promise<boolean> {
    return this.#exclusive(async () => {
      await this.#open();
      return transact(this.#db, 'readwrite', (store, guard) => {
        let found = false;
        const req = store.get(metaKey(id));
        req.onsuccess = guard(() => {
          found = req.result !== undefined;
          deleteEntry(store, id);
        });
        return () => found;
      });
    });
  }

  /** Remove every cached adapter. */
  clear(): Promise<void> {
    return this.#exclusive(async () => {
      await transact(this.#db, 'readwrite', (store) => {
        store.delete(range('data'));
        store.delete(range('meta'));
        return () => undefined;
      });
    });
  }

  /** What the store holds, with the origin's quota and usage when the platform reports them. */
  async usage(): Promise<StoreUsage> {
    const metas = await this.list();
    return {
      bytes: total(metas),
      entries: metas.length,
      budgetBytes: this.budgetBytes,
      ...(await estimate()),
    };
  }

  /**
   * Ask the browser not to evict this origin's storage under pressure (navigator.storage.persist()).
   * True when storage is (now) persistent; false when refused or unsupported.
   */
  async persist(): Promise<boolean> {
    const storage = storageManager();
    if (storage?.persist === undefined) return false;
    try {
      if ((await storage.persisted?.()) === true) return true;
      return await storage.persist();
    } catch {
      return false;
    }
  }

  async #metas(): Promise<StoredAdapter[]> {
    return transact(this.#db, 'readonly', (store) => {
      const req = store.getAll(range('meta'));
      return () => validMetas(req.result);
    });
  }

  #tick(): number {
    this.#clock = Math.max(this.#now(), this.#clock + 1);
    return this.#clock;
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Once per store: remove orphans and invalid records, evict down to the budget. */
  #open(): Promise<void> {
    this.#opened ??= this.#sweep().catch((e: unknown) => {
      this.#opened = undefined;
      throw e;
    });
    return this.#opened;
  }

  async #sweep(): Promise<void> {
    const { evicted, clock } = await transact(this.#db, 'readwrite', (store, guard) => {
      const evicted: StoredAdapter[] = [];
      let clock = 0;
      const metaKeys = store.getAllKeys(range('meta'));
      const metaValues = store.getAll(range('meta'));
      const dataKeys = store.getAllKeys(range('data'));
      dataKeys.onsuccess = guard(() => {
        const present = new Set(dataKeys.result.map((k) => JSON.stringify(k)));
        const valid: StoredAdapter[] = [];
        metaKeys.result.forEach((key, i) => {
          const m = asMeta(metaValues.result[i]);
          const keyId = Array.isArray(key) ? key[1] : undefined;
          if (m === undefined || m.id !== keyId || !present.has(JSON.stringify(dataKey(m.id, m.sha256)))) {
            store.delete(key); // invalid, or its bytes are missing
            if (typeof keyId === 'string') store.delete(range('data', keyId));
          } else {
            valid.push(m);
          }
        });
        const wanted = new Set(valid.map((m) => JSON.stringify(dataKey(m.id, m.sha256))));
        for (const k of dataKeys.result) if (!wanted.has(JSON.stringify(k))) store.delete(k);
        valid.sort(byLastUsed);
        let kept = total(valid);
        for (const m of valid) {
          clock = Math.max(clock, m.lastUsed);
          if (kept <= this.budgetBytes) continue;
          evicted.push(m);
          kept -= m.bytes;
          deleteEntry(store, m.id);
        }
      });
      return () => ({ evicted, clock });
    });
    this.#clock = Math.max(this.#clock, clock);
    for (const v of evicted) this.#onEvict?.(v, 'budget', undefined);
  }
}
