/**
 * Load one adapter of a manifest: refuse it when it was made for another base model (before any
 * download), else take it from the cache (verified) or from the network (with progress, byte count and
 * sha256 checked), store it, and unpack it to the two PEFT files.
 */
import { IncompatibleAdapterError } from '../errors.js';
import type { AdapterStore } from './adapter-store.js';
import { CONFIG_FILE, WEIGHTS_FILE, readAdapterBundle, writeAdapterBundle } from './bundle.js';
import { FetchError, IntegrityError } from './errors.js';
import { type FetchProgress, fetchWithProgress } from './fetch.js';
import { sha256Hex } from './hash.js';
import { type ManifestEntry, resolveUrl } from './manifest.js';

export interface LoadAdapterOptions {
  /** The loaded base model's fingerprint (modelFingerprint); an entry for another base is refused. */
  baseFingerprint: string;
  /** The cache. Without one, every load downloads. */
  store?: AdapterStore;
  /** The manifest's URL, to resolve a relative entry URL (parseManifest already resolves them). */
  manifestUrl?: string;
  signal?: AbortSignal;
  /** Download progress over all the adapter's files; one event (loaded = total) on a cache hit. */
  onProgress?: (progress: FetchProgress) => void;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** Limit on the unpacked size of a zip bundle (readAdapterBundle's maxBytes). */
  maxBytes?: number;
}

export interface LoadedAdapter {
  /** adapter_config.json */
  config: Uint8Array;
  /** adapter_model.safetensors */
  weights: Uint8Array;
  fromCache: boolean;
  /**
   * Set when the download succeeded but could not be cached (a QuotaError, storage unavailable): the
   * adapter is usable now, and will be downloaded again next time.
   */
  cacheError?: Error;
}

/** The cache key of an entry: the manifest hash of what the stored bytes are made from. */
export function cacheSource(entry: ManifestEntry): string {
  return entry.format === 'zip' ? entry.sha256 : `${entry.sha256}+${entry.config_sha256 ?? ''}`;
}

/**
 * Load `entry`: IncompatibleAdapterError when `entry.base` is not `baseFingerprint` (nothing is
 * downloaded); otherwise the cached copy when it is intact, else a download checked against the
 * manifest (IntegrityError, FetchError) that is then cached. A corrupted cached copy is deleted and
 * downloaded again; offline, the FetchError says so. Aborting stores nothing.
 */
export async function loadAdapter(entry: ManifestEntry, opts: LoadAdapterOptions): Promise<LoadedAdapter> {
  const { store, signal, onProgress } = opts;
  if (entry.base !== opts.baseFingerprint.toLowerCase()) {
    throw new IncompatibleAdapterError(
      entry.id,
      'base',
      `made for the base model with fingerprint ${entry.base}, but the loaded base is ${opts.baseFingerprint}`,
    );
  }
  signal?.throwIfAborted();
  const url = resolveUrl(entry.url, opts.manifestUrl) ?? entry.url;
  const label = `${entry.id} <${url}>`;
  const source = cacheSource(entry);

  let corrupt = false;
  if (store !== undefined) {
    const cached = await store.read(entry.id, source);
    if (cached.status === 'hit') {
      const files = readAdapterBundle(cached.bytes, entry.id, { maxBytes: opts.maxBytes });
      onProgress?.({ loaded: entry.bytes, total: entry.bytes });
      return { ...files, fromCache: true };
    }
    corrupt = cached.status === 'corrupt';
  }

  let files: { config: Uint8Array; weights: Uint8Array };
  let bundle: Uint8Array;
  try {
    if (entry.format === 'zip') {
      bundle = await fetchWithProgress(url, {
        signal,
        onProgress,
        expectedBytes: entry.bytes,
        sha256: entry.sha256,
        label,
        fetch: opts.fetch,
      });
      files = readAdapterBundle(bundle, label, { maxBytes: opts.maxBytes });
    } else {
      files = await fetchFolder(entry, url, opts);
      // Cached as a stored (uncompressed) zip: one record, checked by its own sha256 on every read.
      bundle = writeAdapterBundle(
        new Map([
          [CONFIG_FILE, files.config],
          [WEIGHTS_FILE, files.weights],
        ]),
        { level: 0 },
      );
    }
  } catch (e) {
    if (corrupt && e instanceof FetchError) {
      throw new FetchError(
        e.file,
        `${e.detail} (the cached copy failed its sha256 check and was removed)`,
        e.status,
      );
    }
    throw e;
  }
  signal?.throwIfAborted();

  if (store === undefined) return { ...files, fromCache: false };
  try {
    const hash = entry.format === 'zip' ? entry.sha256 : await sha256Hex(bundle, label);
    await store.put(entry.id, hash, bundle, { source });
    return { ...files, fromCache: false };
  } catch (e) {
    if (e instanceof IntegrityError) throw e; // cannot happen: the bytes were just checked
    return { ...files, fromCache: false, cacheError: e instanceof Error ? e : new Error(String(e)) };
  }
}

/** A peft-folder entry: both files from the folder URL, progress summed over both. */
async function fetchFolder(
  entry: ManifestEntry,
  url: string,
  opts: LoadAdapterOptions,
): Promise<{ config: Uint8Array; weights: Uint8Array }> {
  const folder = url.endsWith('/') ? url : `${url}/`;
  const configUrl = new URL(CONFIG_FILE, folder).href;
  const weightsUrl = new URL(WEIGHTS_FILE, folder).href;
  const config = await fetchWithProgress(configUrl, {
    signal: opts.signal,
    sha256: entry.config_sha256,
    label: `${entry.id} <${configUrl}>`,
    fetch: opts.fetch,
  });
  const total = config.length + entry.bytes;
  opts.onProgress?.({ loaded: config.length, total });
  const weights = await fetchWithProgress(weightsUrl, {
    signal: opts.signal,
    expectedBytes: entry.bytes,
    sha256: entry.sha256,
    label: `${entry.id} <${weightsUrl}>`,
    fetch: opts.fetch,
    onProgress: (p) => {
      if (p.loaded > 0) opts.onProgress?.({ loaded: config.length + p.loaded, total });
    },
  });
  return { config, weights };
}
