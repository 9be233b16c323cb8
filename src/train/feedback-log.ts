/**
 * The feedback log: every event a user gave, append-only, in IndexedDB (idb-keyval's `createStore`,
 * database 'edge-adapters-feedback', object store 'feedback'), or in memory for Node and tests.
 *
 *   id         -> StoredFeedback   id = '0000000000000001', '0000000000000002', ...
 *   ['next']   -> number           the next id's counter (an array key sorts after every string id)
 *
 * Ids are a zero-padded decimal counter, read and advanced in the same readwrite transaction that
 * writes the entry. Chosen over time + random because: IndexedDB runs readwrite transactions on one
 * store one after another, so two tabs can never draw the same id; the order is exactly insertion
 * order, even for events added in the same millisecond or after the clock went back (time + random
 * orders those arbitrarily); and an id is never reused, not after remove() and not after clear() (the
 * counter survives it), so a personal-adapter version that recorded which ids it learned from keeps
 * meaning. Sixteen digits cover every safe integer, so string order is numeric order.
 *
 * add() is one transaction (counter read, entry put, counter put): when it fails (a quota error, a
 * closed tab) neither the entry nor the advanced counter is left behind. No IDBKeyRange is used, so a
 * given IDBFactory (fake-indexeddb in Node) is all the store needs.
 */
import { idbStore, transact } from '../store/idb.js';
import { isQuotaExceeded } from '../store/adapter-store.js';
import { QuotaError } from '../store/errors.js';
import { type FeedbackEvent, parseFeedback } from './feedback.js';

export interface StoredFeedback {
  /** Sortable: ids compare as strings in insertion order. */
  id: string;
  /** Date.now() when it was added. */
  time: number;
  event: FeedbackEvent;
}

export interface FeedbackLog {
  /** Validate (parseFeedback; InvalidInputError naming the field) and append. */
  add(event: FeedbackEvent): Promise<StoredFeedback>;
  /** Every entry, in insertion order. */
  list(): Promise<StoredFeedback[]>;
  count(): Promise<number>;
  /** True when the entry was there. */
  remove(id: string): Promise<boolean>;
  /** Remove every entry (ids keep increasing afterwards). */
  clear(): Promise<void>;
}

export interface IndexedDbOptions {
  /** IndexedDB database name. */
  dbName?: string;
  /** The IndexedDB to use (default: the global `indexedDB`), e.g. fake-indexeddb's in tests. */
  indexedDB?: IDBFactory;
}

export const DEFAULT_FEEDBACK_DB_NAME = 'edge-adapters-feedback';
export const FEEDBACK_STORE_NAME = 'feedback';

const ID_DIGITS = 16;
const formatId = (n: number) => String(n).padStart(ID_DIGITS, '0');

const COUNTER_KEY: IDBValidKey = ['next'];

/** navigator.storage.estimate(), when the platform has it (browsers; not Node 20). */
export async function estimate(): Promise<{ quota?: number; usage?: number }> {
  try {
    const nav = (globalThis as { navigator?: { storage?: StorageManager } }).navigator;
    const e = await nav?.storage?.estimate?.();
    return e === undefined ? {} : { quota: e.quota, usage: e.usage };
  } catch {
    return {};
  }
}

const utf8Length = (v: unknown) => new TextEncoder().encode(JSON.stringify(v)).length;

/** A stored record, checked (a record that does not read back as an entry is skipped). */
function asStored(v: unknown): StoredFeedback | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Record<string, unknown>;
  if (typeof r.id !== 'string' || typeof r.time !== 'number') return undefined;
  try {
    return { id: r.id, time: r.time, event: parseFeedback(r.event, `feedback ${r.id}`) };
  } catch {
    return undefined;
  }
}

const counterOf = (v: unknown): number => (Number.isSafeInteger(v) && (v as number) > 0 ? (v as number) : 1);

/** The log in memory (Node, tests): the same behaviour as the IndexedDB one, gone with the page. */
export function memoryFeedbackLog(): FeedbackLog {
  const entries = new Map<string, StoredFeedback>(); // a Map iterates in insertion order
  let next = 1;
  return {
    async add(event) {
      const parsed = parseFeedback(event);
      const stored: StoredFeedback = { id: formatId(next), time: Date.now(), event: parsed };
      next++;
      entries.set(stored.id, stored);
      return structuredClone(stored);
    },
    async list() {
      return structuredClone([...entries.values()]);
    },
    async count() {
      return entries.size;
    },
    async remove(id) {
      return entries.delete(id);
    },
    async clear() {
      entries.clear();
    },
  };
}

/** The log in IndexedDB (default database 'edge-adapters-feedback'). */
export function indexedDbFeedbackLog(options: IndexedDbOptions = {}): FeedbackLog {
  const db = idbStore(options.dbName ?? DEFAULT_FEEDBACK_DB_NAME, FEEDBACK_STORE_NAME, options.indexedDB);
  const log: FeedbackLog = {
    async add(event) {
      const parsed = parseFeedback(event);
      try {
        return await transact(db, 'readwrite', (store, guard) => {
          let stored: StoredFeedback | undefined;
          const req = store.get(COUNTER_KEY);
          req.onsuccess = guard(() => {
            const n = counterOf(req.result);
            stored = { id: formatId(n), time: Date.now(), event: parsed };
            store.put(stored, stored.id);
            store.put(n + 1, COUNTER_KEY);
          });
          return () => stored as StoredFeedback;
        });
      } catch (e) {
        if (!isQuotaExceeded(e)) throw e;
        // Aborted: nothing was written. Sizes as JSON text (what the structured clone roughly takes).
        const bytes = utf8Length(parsed);
        const storedBytes = await log.list().then(
          (all) => all.reduce((n, x) => n + utf8Length(x), 0),
          () => 0,
        );
        throw new QuotaError(
          'feedback',
          `the browser's storage quota refused a feedback entry of about ${bytes} bytes (QuotaExceededError); nothing was stored`,
          // The log has no byte budget of its own.
          {
            bytes,
            budgetBytes: Number.POSITIVE_INFINITY,
            storedBytes,
            evictedBytes: 0,
            ...(await estimate()),
          },
        );
      }
    },
    list() {
      return transact(db, 'readonly', (store) => {
        const req = store.getAll(); // in key order: the ids, then the counter (not an entry: skipped)
        return () => req.result.map(asStored).filter((e): e is StoredFeedback => e !== undefined);
      });
    },
    count() {
      return transact(db, 'readonly', (store) => {
        const all = store.count();
        const counter = store.count(COUNTER_KEY);
        return () => all.result - counter.result;
      });
    },
    remove(id) {
      if (typeof id !== 'string') return Promise.resolve(false); // never an entry's key (and ['next'] is the counter's)
      return transact(db, 'readwrite', (store, guard) => {
        let found = false;
        const req = store.count(id);
        req.onsuccess = guard(() => {
          found = req.result > 0;
          if (found) store.delete(id);
        });
        return () => found;
      });
    },
    async clear() {
      await transact(db, 'readwrite', (store, guard) => {
        const req = store.get(COUNTER_KEY);
        req.onsuccess = guard(() => {
          store.clear();
          store.put(counterOf(req.result), COUNTER_KEY); // ids keep increasing
        });
        return () => undefined;
      });
    },
  };
  return log;
}
