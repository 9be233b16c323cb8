/**
 * Typed errors of the adapter store. Each names the manifest, adapter id or URL at fault (`file`)
 * and what is wrong, e.g. "adapters.json: adapters[2].sha256: expected 64 hex characters" or
 * "style-formal <https://cdn.example/a.zip>: sha256: expected 3b0c…, got 9f86…".
 */
import { EdgeAdaptersError } from '../errors.js';

/** adapters.json is malformed: names the manifest and the field (`adapters[2].sha256`). */
export class ManifestError extends EdgeAdaptersError {
  override name = 'ManifestError';
}

/** Downloaded or stored bytes do not match the manifest's byte count or sha256. */
export class IntegrityError extends EdgeAdaptersError {
  override name = 'IntegrityError';
}

/** A download failed: network error, HTTP status, or a body that ended early. */
export class FetchError extends EdgeAdaptersError {
  override name = 'FetchError';
  /** The HTTP status, when the server answered. */
  readonly status: number | undefined;
  /** The message without the URL. */
  readonly detail: string;

  constructor(url: string, detail: string, status?: number) {
    super(url, undefined, detail);
    this.status = status;
    this.detail = detail;
  }
}

/** The sizes a QuotaError is about, in bytes. */
export interface QuotaSizes {
  /** The entry that could not be stored. */
  bytes: number;
  /** The store's budget. */
  budgetBytes: number;
  /** What the store still holds after the evictions it made. */
  storedBytes: number;
  /** What was evicted while trying to make room. */
  evictedBytes: number;
  /** navigator.storage.estimate(), when the platform has it. */
  quota?: number;
  usage?: number;
}

/** An adapter does not fit: over the store's budget, or the browser's quota is exhausted. */
export class QuotaError extends EdgeAdaptersError {
  override name = 'QuotaError';
  readonly sizes: QuotaSizes;

  constructor(id: string, message: string, sizes: QuotaSizes) {
    super(id, undefined, message);
    this.sizes = sizes;
  }
}
