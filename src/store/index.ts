/** The adapter store: manifest, fetch with progress and integrity, zip bundles, IndexedDB cache. */
export { FetchError, IntegrityError, ManifestError, QuotaError, type QuotaSizes } from './errors.js';
export { isSha256Hex, sha256Hex } from './hash.js';
export {
  type BundleFormat,
  FINGERPRINT_FIELDS,
  FINGERPRINT_SCHEME,
  type FingerprintOptions,
  MANIFEST_VERSION,
  type Manifest,
  type ManifestEntry,
  fingerprintText,
  modelFingerprint,
  parseManifest,
  resolveUrl,
} from './manifest.js';
export { type FetchProgress, type FetchWithProgressOptions, fetchWithProgress } from './fetch.js';
export {
  type AdapterFiles,
  DEFAULT_MAX_BUNDLE_BYTES,
  type ReadBundleOptions,
  type WriteBundleOptions,
  readAdapterBundle,
  writeAdapterBundle,
} from './bundle.js';
export {
  AdapterStore,
  type AdapterStoreOptions,
  type CorruptEntry,
  DEFAULT_DB_NAME,
  type EvictionReason,
  type ReadResult,
  STORE_NAME,
  type StoreUsage,
  type StoredAdapter,
  dataKey,
  isQuotaExceeded,
  metaKey,
} from './adapter-store.js';
export { type LoadAdapterOptions, type LoadedAdapter, cacheSource, loadAdapter } from './load.js';
export { type DownloadProgress, folderDownload } from './folder-download.js';
export { type RememberedSpec, SessionState } from './session-state.js';
