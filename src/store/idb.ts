/**
 * IndexedDB through idb-keyval, the two things its own API lacks: a store over a given IDBFactory,
 * and one transaction whose every write stays or none does.
 */
import { createStore, promisifyRequest, type UseStore } from 'idb-keyval';

/**
 * idb-keyval's `createStore`, over a given IDBFactory (idb-keyval's own always opens the global
 * `indexedDB`). Without one, it is idb-keyval's.
 */
export function idbStore(dbName: string, storeName: string, factory?: IDBFactory): UseStore {
  if (factory === undefined) return createStore(dbName, storeName);
  let dbp: Promise<IDBDatabase> | undefined;
  const getDB = () => {
    if (dbp) return dbp;
    const request = factory.open(dbName);
    request.onupgradeneeded = () => request.result.createObjectStore(storeName);
    const opened = promisifyRequest(request);
    dbp = opened;
    opened.then(
      (db) => (db.onclose = () => (dbp = undefined)),
      () => (dbp = undefined),
    );
    return opened;
  };
  return (mode, callback) =>
    getDB().then((db) => callback(db.transaction(storeName, mode).objectStore(storeName)));
}

/**
 * Run `body` in one transaction and resolve, after the commit, with what its returned getter gives.
 * `guard` wraps request callbacks: an exception thrown in one (or in `body`) aborts the transaction, so
 * nothing it wrote stays. Rejects with that exception, or with the error that aborted the transaction
 * (a QuotaExceededError, ...).
 */
export function transact<T>(
  use: UseStore,
  mode: IDBTransactionMode,
  body: (store: IDBObjectStore, guard: (fn: () => void) => () => void) => () => T,
): Promise<T> {
  return use(
    mode,
    (store) =>
      new Promise<T>((resolve, reject) => {
        const tx = store.transaction;
        let thrown: { error: unknown } | undefined;
        const guard = (fn: () => void) => () => {
          try {
            fn();
          } catch (error) {
            thrown ??= { error };
            try {
              tx.abort();
            } catch {
              // already finished
            }
          }
        };
        let result: (() => T) | undefined;
        tx.oncomplete = () => resolve((result as () => T)());
        tx.onabort = () =>
          reject(
            thrown
              ? thrown.error
              : (tx.error ?? new DOMException('The transaction was aborted', 'AbortError')),
          );
        guard(() => {
          result = body(store, guard);
        })();
      }),
  );
}
