/**
 * What a runtime remembers between sessions, in IndexedDB (idb-keyval, database `<dbName>-state`,
 * object store `state`): the active adapter selection per base model, and the last manifest read from
 * each URL (so that a runtime started offline still knows its adapters).
 *
 *   ['active', baseFingerprint]  -> [{ id, weight }, ...]    [] = the base model alone
 *   ['manifest', url]            -> the manifest's text
 */
import { createStore, get, set, type UseStore } from 'idb-keyval';

export interface RememberedSpec {
  id: string;
  weight: number;
}

function asSpecs(value: unknown): RememberedSpec[] | undefined {
  if (!Array.isArray(value)) return undefined;
  const ok = value.every(
    (s: unknown) =>
      typeof s === 'object' &&
      s !== null &&
      typeof (s as RememberedSpec).id === 'string' &&
      Number.isFinite((s as RememberedSpec).weight),
  );
  return ok ? (value as RememberedSpec[]).map(({ id, weight }) => ({ id, weight })) : undefined;
}

export class SessionState {
  readonly #db: UseStore;

  constructor(dbName: string) {
    this.#db = createStore(`${dbName}-state`, 'state');
  }

  /** The selection last saved for this base, or undefined (none saved, or unreadable). */
  async active(baseFingerprint: string): Promise<RememberedSpec[] | undefined> {
    return asSpecs(await get(['active', baseFingerprint], this.#db));
  }

  saveActive(baseFingerprint: string, specs: readonly RememberedSpec[]): Promise<void> {
    return set(
      ['active', baseFingerprint],
      specs.map(({ id, weight }) => ({ id, weight })),
      this.#db,
    );
  }

  async manifest(url: string): Promise<string | undefined> {
    const text: unknown = await get(['manifest', url], this.#db);
    return typeof text === 'string' ? text : undefined;
  }

  saveManifest(url: string, text: string): Promise<void> {
    return set(['manifest', url], text, this.#db);
  }
}
