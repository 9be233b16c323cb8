/**
 * Download a file with progress, a byte-count check (Content-Length, the manifest's `bytes`) and a
 * sha256 check. Web APIs only: fetch, ReadableStream, crypto.subtle.
 */
import { FetchError, IntegrityError } from './errors.js';
import { isSha256Hex, sha256Hex } from './hash.js';

export interface FetchProgress {
  /** Bytes received so far. */
  loaded: number;
  /** The expected size (the caller's `expectedBytes`, else Content-Length), when known. */
  total: number | undefined;
}

export interface FetchWithProgressOptions {
  signal?: AbortSignal;
  /** Called once when the headers arrive (loaded 0), then after every chunk; the last has loaded = size. */
  onProgress?: (progress: FetchProgress) => void;
  /** The size the file must have: a different Content-Length or body is an IntegrityError. */
  expectedBytes?: number;
  /** The sha256 (hex) the file must have: a mismatch is an IntegrityError. */
  sha256?: string;
  /** Names the file in errors (default: the URL). */
  label?: string;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

/** Buffers up to this size are allocated whole from the announced size; larger ones grow. */
const MAX_PREALLOCATION = 2 ** 28;

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** The body's length in bytes from Content-Length, unless the body is content-encoded. */
function contentLength(res: Response): number | undefined {
  const encoding = res.headers.get('content-encoding');
  if (encoding !== null && encoding.trim().toLowerCase() !== 'identity') return undefined; // length of the encoded form
  const value = res.headers.get('content-length');
  if (value === null || !/^\s*\d+\s*$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * Fetch `url` into memory, reporting progress. Throws FetchError (network, HTTP status, truncated body),
 * IntegrityError (size or sha256 differs from `expectedBytes` / `sha256`, naming both values), or the
 * signal's reason when aborted (the body stream is cancelled).
 */
export async function fetchWithProgress(
  url: string,
  opts: FetchWithProgressOptions = {},
): Promise<Uint8Array> {
  const { signal, onProgress, expectedBytes } = opts;
  const label = opts.label ?? url;
  if (expectedBytes !== undefined && !(Number.isSafeInteger(expectedBytes) && expectedBytes >= 0)) {
    throw new RangeError(
      `fetchWithProgress: expectedBytes must be a non-negative integer, got ${expectedBytes}`,
    );
  }
  const want = opts.sha256?.toLowerCase();
  if (want !== undefined && !isSha256Hex(want)) {
    throw new RangeError(
      `fetchWithProgress: sha256 must be 64 hex characters, got ${JSON.stringify(opts.sha256)}`,
    );
  }
  const doFetch = opts.fetch ?? globalThis.fetch;
  signal?.throwIfAborted();

  let res: Response;
  try {
    res = await doFetch(url, { signal });
  } catch (e) {
    if (signal?.aborted) throw signal.reason;
    throw new FetchError(label, `network error: ${message(e)}`);
  }
  if (signal?.aborted) {
    await res.body?.cancel().catch(() => undefined);
    throw signal.reason;
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => undefined);
    throw new FetchError(
      label,
      `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`,
      res.status,
    );
  }
  const length = contentLength(res);
  if (length !== undefined && expectedBytes !== undefined && length !== expectedBytes) {
    await res.body?.cancel().catch(() => undefined);
    throw new IntegrityError(
      label,
      'bytes',
      `the server announces ${length} bytes (Content-Length), the manifest ${expectedBytes}`,
    );
  }

  const bytes = await readBody(
    res,
    label,
    expectedBytes ?? length,
    expectedBytes !== undefined,
    signal,
    onProgress,
  );
  if (expectedBytes !== undefined && bytes.length !== expectedBytes) {
    throw new IntegrityError(label, 'bytes', `received ${bytes.length} bytes, expected ${expectedBytes}`);
  }
  if (length !== undefined && bytes.length !== length) {
    throw new FetchError(label, `the response ended after ${bytes.length} of ${length} bytes`, res.status);
  }
  if (want !== undefined) {
    const actual = await sha256Hex(bytes, label);
    if (actual !== want) throw new IntegrityError(label, 'sha256', `expected ${want}, got ${actual}`);
  }
  return bytes;
}

async function readBody(
  res: Response,
  label: string,
  total: number | undefined,
  totalFromManifest: boolean,
  signal: AbortSignal | undefined,
  onProgress: ((p: FetchProgress) => void) | undefined,
): Promise<Uint8Array> {
  onProgress?.({ loaded: 0, total });
  if (res.body === null) {
    const all = new Uint8Array(await res.arrayBuffer());
    if (all.length > 0) onProgress?.({ loaded: all.length, total });
    return all;
  }
  const reader = res.body.getReader();
  const cancel = () => void reader.cancel(signal?.reason).catch(() => undefined);
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    let buf = new Uint8Array(total !== undefined && total <= MAX_PREALLOCATION ? total : 1 << 16);
    let loaded = 0;
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        throw new FetchError(label, `the download failed after ${loaded} bytes: ${message(e)}`, res.status);
      }
      if (signal?.aborted) throw signal.reason;
      if (chunk.done) break;
      const part = chunk.value;
      if (total !== undefined && loaded + part.length > total) {
        const why = `more than the ${totalFromManifest ? 'expected' : 'announced (Content-Length)'} ${total} bytes`;
        if (totalFromManifest) throw new IntegrityError(label, 'bytes', `received ${why}`);
        throw new FetchError(label, `the server sent ${why}`, res.status);
      }
      if (loaded + part.length > buf.length) {
        const grown = new Uint8Array(Math.max(buf.length * 2, loaded + part.length));
        grown.set(buf.subarray(0, loaded));
        buf = grown;
      }
      buf.set(part, loaded);
      loaded += part.length;
      onProgress?.({ loaded, total });
    }
    return loaded === buf.length ? buf : buf.slice(0, loaded);
  } catch (e) {
    cancel();
    throw e;
  } finally {
    signal?.removeEventListener('abort', cancel);
  }
}
