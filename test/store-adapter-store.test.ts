import 'fake-indexeddb/auto';
import fc from 'fast-check';
import { createStore, get as idbGet, keys as idbKeys, set as idbSet } from 'idb-keyval';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  AdapterStore,
  type AdapterStoreOptions,
  type CorruptEntry,
  type EvictionReason,
  STORE_NAME,
  type StoredAdapter,
  dataKey,
  metaKey,
} from '../src/store/adapter-store.js';
import { IntegrityError, QuotaError } from '../src/store/errors.js';
import { sha256Hex } from '../src/store/hash.js';

let dbCount = 0;
const freshDb = () => `store-test-${++dbCount}`;

function bytesOf(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const same = (a: Uint8Array | undefined, b: Uint8Array) =>
  a !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);

interface Item {
  id: string;
  bytes: Uint8Array;
  sha256: string;
}
async function item(id: string, n: number, seed = id.charCodeAt(0) + n): Promise<Item> {
  const bytes = bytesOf(n, seed);
  return { id, bytes, sha256: await sha256Hex(bytes) };
}

/** A store with recorded evictions and corruption reports, and a raw view of its database. */
function open(budgetBytes: number, extra: Partial<AdapterStoreOptions> = {}) {
  const dbName = extra.dbName ?? freshDb();
  const evictions: [string, EvictionReason][] = [];
  const corrupt: CorruptEntry[] = [];
  const store = new AdapterStore({
    budgetBytes,
    dbName,
    onEvict: (e: StoredAdapter, why) => evictions.push([e.id, why]),
    onCorrupt: (e) => corrupt.push(e),
    ...extra,
  });
  const raw = createStore(dbName, STORE_NAME);
  return {
    store,
    dbName,
    evictions,
    corrupt,
    raw,
    rawKeys: async () => (await idbKeys(raw)).map((k) => JSON.stringify(k)).sort(),
  };
}

const put = (store: AdapterStore, it: Item) => store.put(it.id, it.sha256, it.bytes);
const ids = async (store: AdapterStore) => (await store.list()).map((e) => e.id);
const storedBytes = async (store: AdapterStore) => (await store.list()).reduce((n, e) => n + e.bytes, 0);
const keyOf = (id: string, sha?: string) =>
  JSON.stringify(sha === undefined ? metaKey(id) : dataKey(id, sha));

type PutFailure = 'request' | 'throw';
interface InternalTransaction {
  _execRequestAsync(o: { operation: () => unknown; source: unknown }): IDBRequest;
}
const quotaError = () => new DOMException('The quota has been exceeded (test).', 'QuotaExceededError');

/** A put request that fails with a QuotaExceededError and so aborts its transaction, as in a browser. */
function failedPut(store: IDBObjectStore): IDBRequest<IDBValidKey> {
  const tx = store.transaction as unknown as InternalTransaction;
  const operation = () => {
    throw quotaError();
  };
  return tx._execRequestAsync({ operation, source: store }) as IDBRequest<IDBValidKey>;
}

/**
 * Make IDBObjectStore.put fail with a QuotaExceededError when `fails(n, value)` says so (n counts
 * puts from 1): 'request' fails the request asynchronously and so aborts its transaction, as a
 * browser does; 'throw' throws from put() itself.
 */
function failPuts(fails: (n: number, value: unknown) => boolean, how: PutFailure = 'request') {
  const proto = IDBObjectStore.prototype;
  const original = proto.put;
  let n = 0;
  proto.put = function (this: IDBObjectStore, value: unknown, key?: IDBValidKey): IDBRequest<IDBValidKey> {
    if (!fails(++n, value)) return original.call(this, value, key);
    if (how === 'throw') throw quotaError();
    return failedPut(this);
  };
  restore.push(() => (proto.put = original));
}

/**
 * A byte quota on the bytes values of all databases, as a browser enforces it: a put that would go
 * over fails its request (and so aborts its transaction); an aborted transaction's puts and deletes do
 * not count. Tracks the peak usage.
 */
function quota(limit: number) {
  const sizes = new Map<string, number>();
  const state = { peak: 0, used: () => [...sizes.values()].reduce((a, b) => a + b, 0) };
  const proto = IDBObjectStore.prototype;
  const { put, delete: del } = proto;
  const undoLogs = new WeakMap<IDBTransaction, (() => void)[]>();
  const record = (tx: IDBTransaction, key: string) => {
    let log = undoLogs.get(tx);
    if (log === undefined) {
      log = [];
      undoLogs.set(tx, log);
      tx.addEventListener('abort', () => log!.reverse().forEach((f) => f()));
    }
    const had = sizes.has(key);
    const before = sizes.get(key) ?? 0;
    log.push(() => (had ? sizes.set(key, before) : sizes.delete(key)));
  };
  proto.put = function (this: IDBObjectStore, value: unknown, key?: IDBValidKey): IDBRequest<IDBValidKey> {
    if (value instanceof Uint8Array) {
      const k = JSON.stringify(key);
      if (state.used() - (sizes.get(k) ?? 0) + value.length > limit) return failedPut(this);
      record(this.transaction, k);
      sizes.set(k, value.length);
      state.peak = Math.max(state.peak, state.used());
    }
    return put.call(this, value, key);
  };
  proto.delete = function (this: IDBObjectStore, query: IDBValidKey | IDBKeyRange): IDBRequest<undefined> {
    for (const k of [...sizes.keys()]) {
      const key = JSON.parse(k) as IDBValidKey;
      const hit = query instanceof IDBKeyRange ? query.includes(key) : indexedDB.cmp(query, key) === 0;
      if (hit) {
        record(this.transaction, k);
        sizes.delete(k);
      }
    }
    return del.call(this, query);
  };
  restore.push(() => {
    proto.put = put;
    proto.delete = del;
  });
  return state;
}

const restore: (() => void)[] = [];
afterEach(() => {
  while (restore.length > 0) restore.pop()!();
  vi.unstubAllGlobals();
});

describe('AdapterStore basics', () => {
  it('puts, gets (verified), lists most recent first, reports usage and deletes', async () => {
    const { store, rawKeys } = open(10_000);
    const a = await item('a', 1000);
    const b = await item('b', 2500);
    await put(store, a);
    await put(store, b);
    expect(same(await store.get('a', a.sha256), a.bytes)).toBe(true); // a is now the most recent
    expect(await store.get('a', b.sha256)).toBeUndefined(); // another version
    expect(await store.get('zzz', a.sha256)).toBeUndefined();
    const list = await store.list();
    expect(list.map((e) => [e.id, e.sha256, e.bytes])).toEqual([
      ['a', a.sha256, 1000],
      ['b', b.sha256, 2500],
    ]);
    expect(list[0].lastUsed).toBeGreaterThan(list[1].lastUsed);
    expect(await store.usage()).toEqual({ bytes: 3500, entries: 2, budgetBytes: 10_000 });
    expect(await rawKeys()).toEqual(
      [keyOf('a', a.sha256), keyOf('b', b.sha256), keyOf('a'), keyOf('b')].sort(),
    );

    expect(await store.delete('a')).toBe(true);
    expect(await store.delete('a')).toBe(false);
    expect(await rawKeys()).toEqual([keyOf('b', b.sha256), keyOf('b')].sort());
    await store.clear();
    expect(await rawKeys()).toEqual([]);
  });

  it('stores exactly the bytes of a view, not its whole buffer', async () => {
    const { store, raw } = open(10_000);
    const big = bytesOf(8000, 5);
    const view = big.subarray(1000, 1600);
    const sha = await sha256Hex(view);
    await store.put('v', sha, view);
    const stored = await idbGet<Uint8Array>(dataKey('v', sha), raw);
    expect(stored?.length).toBe(600);
    expect(stored?.buffer.byteLength).toBe(600);
    expect(await storedBytes(store)).toBe(600);
  });

  it('replaces the previous version of an id in the same write', async () => {
    const { store, rawKeys } = open(10_000);
    const v1 = await item('a', 1000, 1);
    const v2 = await item('a', 1200, 2);
    await put(store, v1);
    await put(store, v2);
    expect(await rawKeys()).toEqual([keyOf('a', v2.sha256), keyOf('a')].sort());
    expect(await store.get('a', v1.sha256)).toBeUndefined();
    expect(same(await store.get('a', v2.sha256), v2.bytes)).toBe(true);
  });

  it('looks an entry up by its source hash too', async () => {
    const { store } = open(10_000);
    const a = await item('a', 100);
    const source = 'f'.repeat(64) + '+' + 'e'.repeat(64);
    await store.put('a', a.sha256, a.bytes, { source });
    expect(same(await store.get('a', source), a.bytes)).toBe(true);
    expect(same(await store.get('a', a.sha256), a.bytes)).toBe(true);
    expect((await store.list())[0].source).toBe(source);
  });

  it('refuses bytes that do not hash to the key, and entries larger than the budget, storing nothing', async () => {
    const { store, rawKeys, evictions } = open(1000);
    const a = await item('a', 600);
    await put(store, a);
    const b = await item('b', 500);
    const err = await store.put('b', a.sha256, b.bytes).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toBe(`b: sha256: the bytes hash to ${b.sha256}, not ${a.sha256}`);
    const huge = await item('huge', 1001);
    const q = await put(store, huge).catch((e: unknown) => e);
    expect(q).toBeInstanceOf(QuotaError);
    expect((q as Error).message).toBe(
      "huge: the adapter is 1001 bytes, more than the store's whole budget of 1000 bytes",
    );
    expect((q as QuotaError).sizes).toEqual({
      bytes: 1001,
      budgetBytes: 1000,
      storedBytes: 600,
      evictedBytes: 0,
    });
    expect(evictions).toEqual([]);
    expect(await rawKeys()).toEqual([keyOf('a', a.sha256), keyOf('a')].sort());
    await expect(store.put('x', 'nothex', b.bytes)).rejects.toThrow(TypeError);
  });
});

describe('LRU eviction under the byte budget', () => {
  it('evicts the least recently used entries, in order, and a get counts as a use', async () => {
    const { store, evictions } = open(1000);
    const [a, b, c, d] = await Promise.all([item('a', 300), item('b', 300), item('c', 300), item('d', 550)]);
    await put(store, a);
    await put(store, b);
    await put(store, c);
    await store.get('a', a.sha256); // order of use now: b, c, a
    expect(evictions).toEqual([]);
    await put(store, d); // needs 550: evicts b (300) then c (300)
    expect(evictions).toEqual([
      ['b', 'budget'],
      ['c', 'budget'],
    ]);
    expect(await ids(store)).toEqual(['d', 'a']);
    expect(await storedBytes(store)).toBe(850);
  });

  it('never exceeds the budget and keeps exactly the entries an LRU model keeps (fast-check)', async () => {
    const budget = 1000;
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('put' as const),
        id: fc.constantFrom('a', 'b', 'c', 'd', 'e'),
        size: fc.integer({ min: 1, max: 700 }),
        seed: fc.nat(1000),
      }),
      fc.record({ kind: fc.constant('get' as const), id: fc.constantFrom('a', 'b', 'c', 'd', 'e') }),
      fc.record({ kind: fc.constant('delete' as const), id: fc.constantFrom('a', 'b', 'c', 'd', 'e') }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 20 }), async (ops) => {
        const { store } = open(budget);
        let model: Item[] = []; // least recently used first
        const latest = new Map<string, Item>(); // what was last put under each id
        for (const o of ops) {
          if (o.kind === 'put') {
            const it = await item(o.id, o.size, o.seed);
            latest.set(o.id, it);
            await put(store, it);
            model = model.filter((m) => m.id !== o.id);
            let used = model.reduce((n, m) => n + m.bytes.length, 0);
            while (used + it.bytes.length > budget) used -= model.shift()!.bytes.length;
            model.push(it);
          } else if (o.kind === 'get') {
            const want = latest.get(o.id);
            if (want === undefined) continue;
            const got = await store.get(o.id, want.sha256);
            const inModel = model.find((m) => m.id === o.id);
            expect(got !== undefined).toBe(inModel !== undefined);
            if (inModel !== undefined) {
              expect(same(got, inModel.bytes)).toBe(true);
              model = [...model.filter((m) => m !== inModel), inModel];
            }
          } else {
            expect(await store.delete(o.id)).toBe(model.some((m) => m.id === o.id));
            model = model.filter((m) => m.id !== o.id);
          }
          const list = await store.list();
          expect(list.reduce((n, e) => n + e.bytes, 0)).toBeLessThanOrEqual(budget);
          expect(list.map((e) => e.id)).toEqual(model.map((m) => m.id).reverse());
        }
      }),
      { numRuns: 60 },
    );
  });

  it('keeps the budget when two stores (two tabs) write to one database at once', async () => {
    const dbName = freshDb();
    const one = open(1000, { dbName }).store;
    const two = open(1000, { dbName }).store;
    const items = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map((id, i) => item(id, 300 + 10 * i)));
    await Promise.all(items.map((it, i) => put(i % 2 === 0 ? one : two, it)));
    expect(await storedBytes(one)).toBeLessThanOrEqual(1000);
    const list = await two.list();
    expect(list.length).toBeGreaterThanOrEqual(2);
    for (const e of list) {
      const it = items.find((x) => x.id === e.id)!;
      expect(same(await one.get(e.id, e.sha256), it.bytes)).toBe(true);
    }
  });

  it('evicts down to a smaller budget when reopened', async () => {
    const dbName = freshDb();
    const first = open(2000, { dbName }).store;
    const items = await Promise.all(['a', 'b', 'c', 'd'].map((id) => item(id, 400)));
    for (const it of items) await put(first, it);
    await first.get('a', items[0].sha256); // use order: b, c, d, a
    const { store: second, evictions } = open(900, { dbName });
    expect(await ids(second)).toEqual(['a', 'd']);
    expect(evictions).toEqual([
      ['b', 'budget'],
      ['c', 'budget'],
    ]);
  });
});

describe('integrity of stored entries', () => {
  it('answers a corrupted entry as a miss, deletes it and reports it', async () => {
    const { store, raw, corrupt, rawKeys } = open(10_000);
    const a = await item('a', 1000);
    const b = await item('b', 800);
    await put(store, a);
    await put(store, b);
    const flipped = a.bytes.slice();
    flipped[500] ^= 0x01;
    await idbSet(dataKey('a', a.sha256), flipped, raw); // a bit flips on disk
    expect(await store.read('a', a.sha256)).toEqual({
      status: 'corrupt',
      entry: { id: 'a', sha256: a.sha256, bytes: 1000, actual: await sha256Hex(flipped) },
    });
    expect(corrupt).toEqual([{ id: 'a', sha256: a.sha256, bytes: 1000, actual: await sha256Hex(flipped) }]);
    expect(await rawKeys()).toEqual([keyOf('b', b.sha256), keyOf('b')].sort());
    expect(await store.get('a', a.sha256)).toBeUndefined(); // now a plain miss
    expect(corrupt).toHaveLength(1);
    expect(same(await store.get('b', b.sha256), b.bytes)).toBe(true); // the other entry is intact
  });

  it('reports a truncated entry and one whose bytes are not bytes any more', async () => {
    const { store, raw, corrupt } = open(10_000);
    const a = await item('a', 1000);
    const b = await item('b', 1000);
    await put(store, a);
    await put(store, b);
    await idbSet(dataKey('a', a.sha256), a.bytes.slice(0, 999), raw);
    await idbSet(dataKey('b', b.sha256), 'not bytes', raw);
    expect(await store.get('a', a.sha256)).toBeUndefined();
    expect(await store.get('b', b.sha256)).toBeUndefined();
    expect(corrupt.map((c) => [c.id, c.actual])).toEqual([
      ['a', await sha256Hex(a.bytes.slice(0, 999))],
      ['b', null],
    ]);
    expect(await store.list()).toEqual([]);
  });

  it('sweeps orphans and invalid records when opened', async () => {
    const dbName = freshDb();
    const { store, raw } = open(10_000, { dbName });
    const [a, b, c] = await Promise.all([item('a', 100), item('b', 200), item('c', 300)]);
    await put(store, a);
    await put(store, b);
    await put(store, c);
    await idbSet(dataKey('orphan', a.sha256), a.bytes, raw); // bytes without an index record
    await idbSet(dataKey('a', b.sha256), b.bytes, raw); // a stale version next to a's current one
    await idbSet(
      metaKey('ghost'),
      { id: 'ghost', sha256: c.sha256, bytes: 300, lastUsed: 1, source: c.sha256 },
      raw,
    ); // no bytes
    await idbSet(metaKey('bad'), { id: 'bad', sha256: 'zz' }, raw); // invalid
    await idbSet(dataKey('bad', c.sha256), c.bytes, raw);
    await idbSet(
      metaKey('b'),
      { id: 'not-b', sha256: b.sha256, bytes: 200, lastUsed: 1, source: b.sha256 },
      raw,
    ); // wrong id
    await idbSet('someone-else', 42, raw); // not ours: left alone
    const { rawKeys, store: reopened } = open(10_000, { dbName });
    expect(await ids(reopened)).toEqual(['c', 'a']);
    expect(await rawKeys()).toEqual(
      [
        keyOf('a', a.sha256),
        keyOf('a'),
        keyOf('c', c.sha256),
        keyOf('c'),
        JSON.stringify('someone-else'),
      ].sort(),
    );
  });
});

describe('quota errors', () => {
  for (const how of ['request', 'throw'] as const) {
    for (const target of ['data', 'index record'] as const) {
      const isTarget = (value: unknown) => value instanceof Uint8Array === (target === 'data');
      it(`a quota error on the ${target} write (${how}) leaves nothing half-written; eviction then makes room`, async () => {
        const { store, evictions, rawKeys } = open(10_000);
        const [a, b, c] = await Promise.all([item('a', 1000), item('b', 1000), item('c', 1000)]);
        await put(store, a);
        await put(store, b);
        await store.get('a', a.sha256); // use order: b, a
        const d = await item('d', 1500);

        // Fail once: the LRU entries worth >= 1500 bytes are evicted (b, then a), and the retry succeeds.
        let failures = 0;
        failPuts((_, value) => isTarget(value) && failures++ === 0, how);
        await put(store, d);
        expect(failures).toBe(2); // one failed write, then the retried one
        expect(evictions).toEqual([
          ['b', 'quota'],
          ['a', 'quota'],
        ]);
        expect(await rawKeys()).toEqual([keyOf('d', d.sha256), keyOf('d')].sort());
        expect(same(await store.get('d', d.sha256), d.bytes)).toBe(true);
        restore.pop()!();

        // Fail always: QuotaError; the store holds the old entries minus the evicted ones, all whole,
        // and nothing of the new one.
        await put(store, c); // use order: d, c
        failPuts((_, value) => isTarget(value), how);
        const e = await put(store, await item('e', 1200)).catch((x: unknown) => x);
        restore.pop()!();
        expect(e).toBeInstanceOf(QuotaError);
        expect((e as QuotaError).sizes).toEqual({
          bytes: 1200,
          budgetBytes: 10_000,
          storedBytes: 1000,
          evictedBytes: 1500,
        });
        expect((e as Error).message).toBe(
          "e: the browser's storage quota refused 1200 bytes (QuotaExceededError) after evicting 1500 bytes of cached adapters; 1000 bytes remain cached",
        );
        expect(evictions.slice(2)).toEqual([['d', 'quota']]);
        expect(await rawKeys()).toEqual([keyOf('c', c.sha256), keyOf('c')].sort());
        expect(same(await store.get('c', c.sha256), c.bytes)).toBe(true);
      });
    }
  }

  it('a quota error with nothing to evict is a QuotaError and stores nothing', async () => {
    const { store, rawKeys } = open(10_000);
    failPuts(() => true);
    const e = await put(store, await item('a', 100)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(QuotaError);
    expect((e as QuotaError).sizes).toMatchObject({ bytes: 100, storedBytes: 0, evictedBytes: 0 });
    expect(await rawKeys()).toEqual([]);
  });

  it('under a real byte quota, evicts LRU entries to make room and never goes over it', async () => {
    const q = quota(10_000);
    const { store, evictions } = open(1_000_000); // the budget is not the limit here: the quota is
    const items = await Promise.all(['a', 'b', 'c'].map((id) => item(id, 3000)));
    for (const it of items) await put(store, it);
    await store.get('a', items[0].sha256); // use order: b, c, a
    expect(q.used()).toBe(9000);
    await put(store, await item('d', 3000)); // 12000 > 10000: b goes
    expect(evictions).toEqual([['b', 'quota']]);
    expect(await ids(store)).toEqual(['d', 'a', 'c']);
    await put(store, await item('e', 5500)); // c then a go (LRU), freeing 6000 >= 5500
    expect(evictions.slice(1)).toEqual([
      ['c', 'quota'],
      ['a', 'quota'],
    ]);
    expect(await ids(store)).toEqual(['e', 'd']);
    expect(q.used()).toBe(8500);
    expect(q.peak).toBeLessThanOrEqual(10_000);
    // a replacement deletes its old version in the same write: 5500 + 4000 fit, nothing else goes
    await put(store, await item('d', 4000, 99));
    expect(evictions).toHaveLength(3);
    expect(await ids(store)).toEqual(['d', 'e']);
    expect(q.used()).toBe(9500);
  });

  it('refuses an entry larger than the whole quota the browser reports, evicting nothing', async () => {
    vi.stubGlobal('navigator', { storage: { estimate: async () => ({ quota: 5000, usage: 1234 }) } });
    const { store, evictions } = open(1_000_000);
    const a = await item('a', 1000);
    await put(store, a);
    const e = await put(store, await item('b', 6000)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(QuotaError);
    expect((e as Error).message).toBe(
      "b: the adapter is 6000 bytes, more than the browser's whole storage quota of 5000 bytes",
    );
    expect((e as QuotaError).sizes).toEqual({
      bytes: 6000,
      budgetBytes: 1_000_000,
      storedBytes: 1000,
      evictedBytes: 0,
      quota: 5000,
      usage: 1234,
    });
    expect(evictions).toEqual([]);
    expect(await store.usage()).toEqual({
      bytes: 1000,
      entries: 1,
      budgetBytes: 1_000_000,
      quota: 5000,
      usage: 1234,
    });
  });
});

describe('persist', () => {
  it('asks navigator.storage.persist() once, and says false where there is none', async () => {
    const { store } = open(1000);
    expect(await store.persist()).toBe(false); // Node 20: no navigator.storage
    const calls: string[] = [];
    let persisted = false;
    vi.stubGlobal('navigator', {
      storage: {
        persisted: async () => (calls.push('persisted'), persisted),
        persist: async () => (calls.push('persist'), (persisted = true)),
      },
    });
    expect(await store.persist()).toBe(true);
    expect(await store.persist()).toBe(true);
    expect(calls).toEqual(['persisted', 'persist', 'persisted']);
    vi.stubGlobal('navigator', { storage: { persisted: async () => false, persist: async () => false } });
    expect(await store.persist()).toBe(false);
  });
});
