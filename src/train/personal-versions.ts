/**
 * The personal adapter's versions. Each version is a whole PEFT adapter (adapter_config.json and
 * adapter_model.safetensors, as bytes) with how it was made; one of them is `current`, the one the
 * runtime applies. Training commits a new version; rollback points `current` at an older one (later
 * versions stay, so a rollback can be undone by another rollback).
 *
 * In IndexedDB (idb-keyval's `createStore`, database 'edge-adapters-personal', object store
 * 'versions'), two kinds of records:
 *
 *   'state'             -> { next, current, versions: PersonalVersion[] }   small: the whole index
 *   ['files', version]  -> { config, weights }                               the two files' bytes
 *
 * The state record is the index and the commit mark: a version exists when it is listed there.
 * commit() is one readwrite transaction that reads the state, writes the new files, deletes the files
 * of the versions `keep` prunes and writes the new state. When anything in it fails (a
 * QuotaExceededError, a closed tab) IndexedDB rolls all of it back: the previous current version, the
 * history, the pruned files and the number counter stay as they were. IndexedDB runs readwrite
 * transactions on one store one after another, so two tabs committing at once get two numbers.
 * Version numbers come from the stored counter, so they are never reused: not after a rollback, not
 * after pruning, not after clear(). Reads are one get (history, current) or one getMany (files).
 */
import { InvalidInputError } from '../errors.js';
import { isQuotaExceeded } from '../store/adapter-store.js';
import { QuotaError } from '../store/errors.js';
import { get, getMany, update } from 'idb-keyval';
import { idbStore, transact } from '../store/idb.js';
import { estimate } from './feedback-log.js';

export interface PersonalVersion {
  /** 1, 2, 3, ...: never reused, even after a rollback. */
  version: number;
  /** Date.now() at commit. */
  createdAt: number;
  /** The version it was trained from. */
  parent?: number;
  /** How it was made: 'sft' | 'kto' | 'dpo' | 'rlaif' | 'init' ... */
  method: string;
  steps: number;
  examples: number;
  loss?: { first: number; last: number };
  /** Size of the two files. */
  bytes: number;
}

/** adapter_config.json and adapter_model.safetensors. */
export interface PersonalFiles {
  config: Uint8Array;
  weights: Uint8Array;
}

export type PersonalCommit = Omit<PersonalVersion, 'version' | 'createdAt' | 'bytes'>;

export interface PersonalVersionStore {
  /** Every stored version, oldest first. */
  history(): Promise<PersonalVersion[]>;
  /** The version in use, or undefined before the first commit (and after clear()). */
  current(): Promise<PersonalVersion | undefined>;
  /** The two files of a version. InvalidInputError('personal', `version ${n}`, ...) if unknown. */
  files(version: number): Promise<PersonalFiles>;
  /**
   * Store a new version and make it current, all or nothing; prune beyond `keep`. A quota error is a
   * QuotaError; either way a failed commit leaves the previous state untouched.
   */
  commit(meta: PersonalCommit, files: PersonalFiles): Promise<PersonalVersion>;
  /** Make an existing version current (later versions stay in history). */
  rollback(version: number): Promise<PersonalVersion>;
  /** Remove every version (numbers keep increasing afterwards). */
  clear(): Promise<void>;
}

export interface PersonalVersionOptions {
  /** How many versions to keep (default 20); committing beyond it deletes the oldest non-current. */
  keep?: number;
}

export interface IndexedDbPersonalOptions extends PersonalVersionOptions {
  /** IndexedDB database name (default 'edge-adapters-personal'). */
  dbName?: string;
  /** The IndexedDB to use (default: the global `indexedDB`), e.g. fake-indexeddb's in tests. */
  indexedDB?: IDBFactory;
}

export const DEFAULT_PERSONAL_DB_NAME = 'edge-adapters-personal';
export const PERSONAL_STORE_NAME = 'versions';
export const DEFAULT_KEEP = 20;

/** What errors name as their file. */
const FILE = 'personal';

interface State {
  /** The number the next commit gets. */
  next: number;
  current: number | undefined;
  /** Oldest first. */
  versions: PersonalVersion[];
}

const STATE_KEY = 'state';
const filesKey = (v: number): IDBValidKey => ['files', v];

function parseKeep(keep: number | undefined): number {
  if (keep === undefined) return DEFAULT_KEEP;
  if (!Number.isSafeInteger(keep) || keep < 1) {
    throw new InvalidInputError(FILE, 'keep', `expected a positive integer, got ${String(keep)}`);
  }
  return keep;
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isVersionNumber = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 1;

function checkVersionArg(version: number): void {
  if (!isVersionNumber(version)) {
    throw new InvalidInputError(FILE, `version ${String(version)}`, 'expected a positive integer');
  }
}

/** Validate what commit() is given; a copy with the known fields only. */
function checkCommit(
  meta: PersonalCommit,
  files: PersonalFiles,
): { meta: PersonalCommit; files: PersonalFiles } {
  const fail = (field: string, message: string): never => {
    throw new InvalidInputError(FILE, field, message);
  };
  if (typeof meta !== 'object' || meta === null) return fail('meta', 'expected an object');
  if (typeof meta.method !== 'string' || meta.method === '') fail('method', 'expected a non-empty string');
  if (!isCount(meta.steps)) fail('steps', `expected a non-negative integer, got ${String(meta.steps)}`);
  if (!isCount(meta.examples))
    fail('examples', `expected a non-negative integer, got ${String(meta.examples)}`);
  if (meta.parent !== undefined && !isVersionNumber(meta.parent)) {
    fail('parent', `expected a version number, got ${String(meta.parent)}`);
  }
  const loss = meta.loss;
  if (loss !== undefined) {
    if (typeof loss !== 'object' || loss === null) fail('loss', 'expected { first, last }');
    for (const k of ['first', 'last'] as const) {
      if (typeof loss[k] !== 'number' || !Number.isFinite(loss[k])) {
        fail(`loss.${k}`, `expected a finite number, got ${String(loss[k])}`);
      }
    }
  }
  if (typeof files !== 'object' || files === null) fail('files', 'expected { config, weights }');
  if (!(files.config instanceof Uint8Array)) fail('adapter_config.json', 'expected the bytes (a Uint8Array)');
  if (!(files.weights instanceof Uint8Array)) {
    fail('adapter_model.safetensors', 'expected the bytes (a Uint8Array)');
  }
  const copy: PersonalCommit = { method: meta.method, steps: meta.steps, examples: meta.examples };
  if (meta.parent !== undefined) copy.parent = meta.parent;
  if (loss !== undefined) copy.loss = { first: loss.first, last: loss.last };
  // Copies: the caller may reuse its buffers, and structured clone would store a view's whole buffer.
  return { meta: copy, files: { config: files.config.slice(), weights: files.weights.slice() } };
}

/** A parent must be a version that was made before (it may have been pruned since). */
function checkParent(parent: number | undefined, version: number): void {
  if (parent !== undefined && parent >= version) {
    throw new InvalidInputError(
      FILE,
      'parent',
      `version ${parent} was never made (the next version is ${version})`,
    );
  }
}

function unknownVersion(version: number, known: readonly PersonalVersion[]): InvalidInputError {
  const list = known.length === 0 ? 'none' : known.map((v) => v.version).join(', ');
  return new InvalidInputError(FILE, `version ${version}`, `no such version (stored: ${list})`);
}

/** The versions to delete so that at most `keep` remain, oldest first, never `current`. */
function toPrune(all: readonly PersonalVersion[], current: number, keep: number): PersonalVersion[] {
  const excess = all.length - keep;
  if (excess <= 0) return [];
  return all.filter((v) => v.version !== current).slice(0, excess);
}

const byVersion = (a: PersonalVersion, b: PersonalVersion) => a.version - b.version;

function asVersion(v: unknown): PersonalVersion | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const m = v as Record<string, unknown>;
  const ok =
    isVersionNumber(m.version) &&
    typeof m.createdAt === 'number' &&
    typeof m.method === 'string' &&
    isCount(m.steps) &&
    isCount(m.examples) &&
    isCount(m.bytes) &&
    (m.parent === undefined || isVersionNumber(m.parent));
  return ok ? (v as PersonalVersion) : undefined;
}

function asFiles(v: unknown): PersonalFiles | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const { config, weights } = v as Record<string, unknown>;
  return config instanceof Uint8Array && weights instanceof Uint8Array ? { config, weights } : undefined;
}

/** The stored state, checked; an absent (or unreadable) one is the empty store. */
function asState(v: unknown): State {
  const s = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  const versions = (Array.isArray(s.versions) ? (s.versions as unknown[]) : [])
    .map(asVersion)
    .filter((x): x is PersonalVersion => x !== undefined)
    .sort(byVersion);
  // The counter never goes below a listed number (a record edited by hand).
  const next = Math.max(isVersionNumber(s.next) ? s.next : 1, ...versions.map((x) => x.version + 1));
  const current = versions.some((x) => x.version === s.current) ? (s.current as number) : undefined;
  return { next, current, versions };
}

const total = (vs: readonly PersonalVersion[]) => vs.reduce((n, v) => n + v.bytes, 0);

function quotaError(
  bytes: number,
  history: readonly PersonalVersion[],
  current: number | undefined,
  est: { quota?: number; usage?: number },
) {
  const kept = current === undefined ? 'no version was current' : `version ${current} stays current`;
  return new QuotaError(
    FILE,
    `the browser's storage quota refused a new version of ${bytes} bytes (QuotaExceededError); nothing was stored and ${kept}`,
    // The personal store has no byte budget of its own: only `keep`.
    { bytes, budgetBytes: Number.POSITIVE_INFINITY, storedBytes: total(history), evictedBytes: 0, ...est },
  );
}

/** The versions in memory (Node, tests): the same behaviour as the IndexedDB store, gone with the page. */
export function memoryPersonalVersions(options: PersonalVersionOptions = {}): PersonalVersionStore {
  const keep = parseKeep(options.keep);
  // The same two parts as in IndexedDB; each change builds the next value aside and swaps it in.
  let state: State = { next: 1, current: undefined, versions: [] };
  let stored = new Map<number, PersonalFiles>();
  const copyFiles = (f: PersonalFiles): PersonalFiles => ({
    config: f.config.slice(),
    weights: f.weights.slice(),
  });

  return {
    async history() {
      return structuredClone(state.versions);
    },
    async current() {
      const v = state.versions.find((x) => x.version === state.current);
      return v === undefined ? undefined : structuredClone(v);
    },
    async files(version) {
      checkVersionArg(version);
      const f = stored.get(version);
      if (f === undefined) throw unknownVersion(version, state.versions);
      return copyFiles(f);
    },
    async commit(meta, files) {
      const checked = checkCommit(meta, files);
      const version = state.next;
      checkParent(checked.meta.parent, version);
      const bytes = checked.files.config.length + checked.files.weights.length;
      const made: PersonalVersion = { ...checked.meta, version, createdAt: Date.now(), bytes };
      const all = [...state.versions, made];
      const pruned = new Set(toPrune(all, version, keep).map((v) => v.version));
      const nextStored = new Map([...stored].filter(([n]) => !pruned.has(n)));
      nextStored.set(version, checked.files);
      stored = nextStored;
      state = { next: version + 1, current: version, versions: all.filter((v) => !pruned.has(v.version)) };
      return structuredClone(made);
    },
    async rollback(version) {
      checkVersionArg(version);
      const target = state.versions.find((v) => v.version === version);
      if (target === undefined) throw unknownVersion(version, state.versions);
      state = { ...state, current: version };
      return structuredClone(target);
    },
    async clear() {
      stored = new Map();
      state = { next: state.next, current: undefined, versions: [] };
    },
  };
}

/** The versions in IndexedDB (default database 'edge-adapters-personal'). */
export function indexedDbPersonalVersions(options: IndexedDbPersonalOptions = {}): PersonalVersionStore {
  const keep = parseKeep(options.keep);
  const db = idbStore(options.dbName ?? DEFAULT_PERSONAL_DB_NAME, PERSONAL_STORE_NAME, options.indexedDB);
  const state = async () => asState(await get(STATE_KEY, db));

  return {
    async history() {
      return (await state()).versions;
    },
    async current() {
      const s = await state();
      return s.versions.find((v) => v.version === s.current);
    },
    async files(version) {
      checkVersionArg(version);
      const [rawState, rawFiles] = await getMany([STATE_KEY, filesKey(version)], db);
      const { versions } = asState(rawState);
      const found = asFiles(rawFiles);
      if (found === undefined || !versions.some((v) => v.version === version)) {
        throw unknownVersion(version, versions);
      }
      return found;
    },
    async commit(meta, files) {
      const checked = checkCommit(meta, files);
      const bytes = checked.files.config.length + checked.files.weights.length;
      try {
        return await transact(db, 'readwrite', (store, guard) => {
          let made: PersonalVersion | undefined;
          const req = store.get(STATE_KEY);
          req.onsuccess = guard(() => {
            const before = asState(req.result);
            const version = before.next;
            checkParent(checked.meta.parent, version);
            made = { ...checked.meta, version, createdAt: Date.now(), bytes };
            const all = [...before.versions, made];
            const pruned = new Set(toPrune(all, version, keep).map((v) => v.version));
            for (const old of pruned) store.delete(filesKey(old));
            store.put(checked.files, filesKey(version));
            const after: State = {
              next: version + 1,
              current: version,
              versions: all.filter((v) => !pruned.has(v.version)),
            };
            store.put(after, STATE_KEY); // last: the commit mark
          });
          return () => made as PersonalVersion;
        });
      } catch (e) {
        if (!isQuotaExceeded(e)) throw e;
        // Aborted: what was there before is all there is. Report it as it stands.
        const before = await state().catch(() => asState(undefined));
        throw quotaError(bytes, before.versions, before.current, await estimate());
      }
    },
    async rollback(version) {
      checkVersionArg(version);
      let target: PersonalVersion | undefined;
      // idb-keyval's update: one read-modify-write transaction; an updater that throws writes nothing.
      await update(
        STATE_KEY,
        (raw) => {
          const s = asState(raw);
          target = s.versions.find((v) => v.version === version);
          if (target === undefined) throw unknownVersion(version, s.versions);
          return { ...s, current: version } satisfies State;
        },
        db,
      );
      return target as PersonalVersion;
    },
    async clear() {
      await transact(db, 'readwrite', (store, guard) => {
        const req = store.get(STATE_KEY);
        req.onsuccess = guard(() => {
          const { next } = asState(req.result);
          store.clear();
          store.put({ next, current: undefined, versions: [] } satisfies State, STATE_KEY); // numbers go on
        });
        return () => undefined;
      });
    },
  };
}
