/**
 * The adapters of a manifest (`adapters.json`), for one loaded base model: listed with their cached
 * state, installed by id (IndexedDB first, else downloaded, verified and cached, then added to the
 * runtime), and the active selection remembered in IndexedDB so that the next runtime comes back with
 * it.
 *
 *   const catalog = await AdapterCatalog.open(runtime.adapters, { manifestUrl, baseFingerprint });
 *   await catalog.entries();                       // [{ id, ..., compatible, cached, added, active }]
 *   await catalog.install('pirate', { onProgress }); // { ...AdapterInfo, from: 'cache' | 'network' }
 *   await runtime.adapters.activate('pirate'); await catalog.remember();
 *   // a later session:
 *   await catalog.restore();                       // { active: [{ id: 'pirate', weight: 1 }] }
 */
import { InvalidInputError } from './errors.js';
import type { ActiveSpec, AdapterInfo, AdapterRegistry } from './runtime.js';
import {
  AdapterStore,
  DEFAULT_DB_NAME,
  type CorruptEntry,
  type EvictionReason,
  type StoreUsage,
} from './store/adapter-store.js';
import { FetchError } from './store/errors.js';
import { fetchWithProgress, type FetchProgress } from './store/fetch.js';
import { cacheSource, loadAdapter } from './store/load.js';
import { parseManifest, type Manifest, type ManifestEntry } from './store/manifest.js';
import { SessionState } from './store/session-state.js';

/** Default byte budget of the adapter cache: 512 MiB. */
export const DEFAULT_BUDGET_BYTES = 512 * 2 ** 20;

export interface CatalogOptions {
  /** Absolute URL of adapters.json. */
  manifestUrl: string;
  /** The loaded base's modelFingerprint: entries made for another base are refused before downloading. */
  baseFingerprint: string;
  /** The most bytes of adapters kept in IndexedDB (default 512 MiB); least recently used go first. */
  budgetBytes?: number;
  /** IndexedDB database name (default 'edge-adapters'; the remembered state is in '<name>-state'). */
  dbName?: string;
  fetch?: typeof fetch;
}

/** A manifest entry with where its adapter is. */
export interface CatalogEntry extends ManifestEntry {
  /** Made for the loaded base model (its `base` is the base's fingerprint). */
  compatible: boolean;
  /** A copy of this version is in IndexedDB (its sha256 is checked when it is installed). */
  cached: boolean;
  /** Installed in the runtime (in memory), ready to activate. */
  added: boolean;
  active: boolean;
}

export interface InstallOptions {
  signal?: AbortSignal;
  /** Bytes of the adapter's files received and the total (the manifest's); once, complete, from the cache. */
  onProgress?: (progress: FetchProgress) => void;
}

export interface InstalledAdapter extends AdapterInfo {
  /** 'memory': it was installed already; 'cache': read from IndexedDB; 'network': downloaded. */
  from: 'memory' | 'cache' | 'network';
  /** The cached copy that failed its sha256 check, was deleted, and was downloaded again. */
  corrupt?: CorruptEntry;
  /** Cached adapters evicted to make room for this one: over the byte budget, or the browser's quota. */
  evicted?: Evicted[];
  /** Downloaded but not cached (a QuotaError, storage unavailable): it downloads again next time. */
  cacheError?: Error;
}

export interface Evicted {
  id: string;
  bytes: number;
  reason: EvictionReason;
}

export interface RestoreReport {
  /** The remembered selection, active again (empty: none remembered, or it could not be restored). */
  active: ActiveSpec[];
  /** Why the remembered selection could not be restored (nothing of it is then active). */
  error?: Error;
}

/** The manifest from the network; when that fails, the copy saved the last time it was read. */
async function readManifest(
  url: string,
  state: SessionState,
  fetchFn: typeof fetch | undefined,
): Promise<{ manifest: Manifest; from: 'network' | 'cache' }> {
  let text: string;
  try {
    text = new TextDecoder().decode(await fetchWithProgress(url, { fetch: fetchFn }));
  } catch (e) {
    const saved = e instanceof FetchError ? await state.manifest(url) : undefined;
    if (saved === undefined) throw e;
    return { manifest: parseManifest(saved, url), from: 'cache' };
  }
  const manifest = parseManifest(text, url);
  await state.saveManifest(url, text);
  return { manifest, from: 'network' };
}

export class AdapterCatalog {
  /** Installed adapter ids -> the cache key of the entry they were installed from. */
  private readonly installed = new Map<string, string>();
  private readonly corrupt = new Map<string, CorruptEntry>();
  /** Evictions made to store an adapter, by its id, until its install reports them. */
  private readonly evictions = new Map<string, Evicted[]>();
  private readonly pending = new Map<string, Promise<InstalledAdapter>>();
  readonly store: AdapterStore;

  private constructor(
    private readonly registry: AdapterRegistry,
    readonly manifest: Manifest,
    /** Where the manifest came from: the network, or the copy saved when it was last read. */
    readonly manifestFrom: 'network' | 'cache',
    private readonly state: SessionState,
    private readonly options: CatalogOptions,
  ) {
    this.store = new AdapterStore({
      budgetBytes: options.budgetBytes ?? DEFAULT_BUDGET_BYTES,
      dbName: options.dbName,
      onCorrupt: (entry) => this.corrupt.set(entry.id, entry),
      onEvict: ({ id, bytes }, reason, forId) => {
        if (forId !== undefined)
          this.evictions.set(forId, [...(this.evictions.get(forId) ?? []), { id, bytes, reason }]);
      },
    });
  }

  /** Reads the manifest (ManifestError, FetchError when it is unreachable and was never read before). */
  static async open(registry: AdapterRegistry, options: CatalogOptions): Promise<AdapterCatalog> {
    const state = new SessionState(options.dbName ?? DEFAULT_DB_NAME);
    const { manifest, from } = await readManifest(options.manifestUrl, state, options.fetch);
    return new AdapterCatalog(registry, manifest, from, state, options);
  }

  /** The manifest's adapters, in its order, with their cached, added and active state. */
  async entries(): Promise<CatalogEntry[]> {
    const cached = new Set((await this.store.list()).map((m) => `${m.id}\n${m.source}`));
    const infos = new Map(this.registry.list().map((a) => [a.id, a]));
    return this.manifest.adapters.map((entry) => {
      const added = this.isInstalled(entry);
      return {
        ...entry,
        compatible: entry.base === this.options.baseFingerprint,
        cached: cached.has(`${entry.id}\n${cacheSource(entry)}`),
        added,
        active: added && infos.get(entry.id)?.active === true,
      };
    });
  }

  /**
   * Adds the manifest's adapter `id` to the runtime: from IndexedDB when its copy is intact, else
   * downloaded (checked against the manifest's size and sha256) and cached all or nothing.
   * IncompatibleAdapterError for an entry made for another base, before anything is downloaded.
   */
  install(id: string, options: InstallOptions = {}): Promise<InstalledAdapter> {
    let running = this.pending.get(id);
    if (running === undefined) {
      running = (async () => this.load(this.entry(id), options))().finally(() => this.pending.delete(id));
      this.pending.set(id, running);
    }
    return running;
  }

  private async load(entry: ManifestEntry, options: InstallOptions): Promise<InstalledAdapter> {
    const { id } = entry;
    if (this.isInstalled(entry)) return { ...this.info(id), from: 'memory' };
    if (this.info(id, false) !== undefined)
      throw new InvalidInputError(
        'install',
        id,
        'an adapter with this id was added from another source; remove it first',
      );
    this.corrupt.delete(id);
    this.evictions.delete(id);
    const loaded = await loadAdapter(entry, {
      baseFingerprint: this.options.baseFingerprint,
      store: this.store,
      fetch: this.options.fetch,
      ...options,
    });
    try {
      await this.registry.add(id, { config: loaded.config, weights: loaded.weights });
    } catch (e) {
      await this.store.delete(id); // the manifest's bytes, but not an adapter this base can run
      throw e;
    }
    this.installed.set(id, cacheSource(entry));
    const corrupt = this.corrupt.get(id);
    const evicted = this.evictions.get(id) ?? [];
    this.evictions.delete(id);
    return {
      ...this.info(id),
      from: loaded.fromCache ? 'cache' : 'network',
      ...(corrupt ? { corrupt } : {}),
      ...(evicted.length ? { evicted } : {}),
      ...(loaded.cacheError ? { cacheError: loaded.cacheError } : {}),
    };
  }

  /** Removes adapter `id` from the runtime (when installed) and from IndexedDB; true when it was in either. */
  async uninstall(id: string): Promise<boolean> {
    const entry = this.entry(id);
    const added = this.isInstalled(entry);
    if (added) await this.registry.remove(id);
    this.installed.delete(id);
    const cached = await this.store.delete(id);
    if (added) await this.remember();
    return added || cached;
  }

  /**
   * Saves the runtime's active selection, for `restore` in a later session. A mixture of experts,
   * X-LoRA or UniPELT is not remembered (the selection saved before it stays).
   */
  async remember(): Promise<void> {
    if (this.registry.combinationActive()) return;
    const specs = this.registry.active().map(({ id, weight }) => ({ id, weight: weight ?? 1 }));
    return this.state.saveActive(this.options.baseFingerprint, specs);
  }

  /**
   * Installs and activates the selection remembered for this base (each adapter from IndexedDB, or
   * downloaded when it is not cached). All or nothing: on a failure nothing of it is active.
   */
  async restore(): Promise<RestoreReport> {
    const saved = await this.state.active(this.options.baseFingerprint);
    if (saved === undefined || saved.length === 0) return { active: [] };
    try {
      // Adapters the runtime holds already (the personal adapter) need no install.
      const added = new Set(this.registry.list().map((a) => a.id));
      for (const { id } of saved) if (!added.has(id)) await this.install(id);
      await this.registry.activate(saved);
      return { active: this.registry.active() };
    } catch (e) {
      return { active: [], error: e instanceof Error ? e : new Error(String(e)) };
    }
  }

  /** Bytes and entries cached, the budget, and the origin's quota and usage. */
  usage(): Promise<StoreUsage> {
    return this.store.usage();
  }

  private entry(id: string): ManifestEntry {
    const entry = this.manifest.adapters.find((a) => a.id === id);
    if (entry === undefined)
      throw new InvalidInputError(
        'install',
        id,
        `not in the manifest ${this.manifest.url}; it lists ${this.manifest.adapters.map((a) => a.id).join(', ') || 'none'}`,
      );
    return entry;
  }

  private isInstalled(entry: ManifestEntry): boolean {
    return this.installed.get(entry.id) === cacheSource(entry) && this.info(entry.id, false) !== undefined;
  }

  private info(id: string): AdapterInfo;
  private info(id: string, required: false): AdapterInfo | undefined;
  private info(id: string, required = true): AdapterInfo | undefined {
    const info = this.registry.list().find((a) => a.id === id);
    if (info === undefined && required) throw new InvalidInputError('install', id, 'not added');
    return info;
  }
}
