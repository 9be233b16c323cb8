/**
 * Adapter bundles: a zip (fflate) holding a PEFT adapter's `adapter_config.json` and
 * `adapter_model.safetensors`, at the root or under one folder (what `zip -r bundle.zip my-adapter/`
 * makes). Other files (README.md, ...) are ignored and never decompressed. Tensors may be any dtype
 * the safetensors file allows (F16 included): the bundle passes the bytes through untouched.
 *
 * Reading refuses, with an AdapterFormatError naming the bundle and the entry: a file that is not a
 * zip, entry names that could escape a folder (absolute, `..`, backslashes, drive letters), duplicate
 * names, missing or ambiguous adapter files, and declared sizes over a limit (zip bombs: the inflated
 * size is bounded by the declared one, which is checked before anything is inflated). Integrity of the
 * archive as a whole is the sha256 of the manifest (the store and the loader check it).
 */
import { type Zippable, unzipSync, zipSync } from 'fflate';
import { AdapterFormatError } from '../errors.js';

export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';

/** Default limit on the two adapter files' inflated size together: 2 GiB. */
export const DEFAULT_MAX_BUNDLE_BYTES = 2 ** 31;

export interface ReadBundleOptions {
  /** Limit on the inflated size of the two adapter files together (default 2 GiB). */
  maxBytes?: number;
}

export interface AdapterFiles {
  config: Uint8Array;
  weights: Uint8Array;
}

interface ZipEntry {
  /** As stored in the archive. */
  raw: string;
  /** Without `.` and empty segments. */
  segments: string[];
  size: number;
  originalSize: number;
  compression: number;
}

/** Why an entry name could escape the folder it is extracted to, or undefined when it is safe. */
function unsafeName(name: string): string | undefined {
  if (name.includes('\0')) return 'contains a NUL character';
  if (name.includes('\\')) return 'contains a backslash';
  if (name.startsWith('/')) return 'is an absolute path';
  if (/^[A-Za-z]:/.test(name)) return 'starts with a drive letter';
  if (name.split('/').includes('..')) return "has a '..' segment";
  return undefined;
}

/** The entries of a zip's central directory, without inflating anything. */
function listZip(zip: Uint8Array, label: string): ZipEntry[] {
  const entries: ZipEntry[] = [];
  try {
    unzipSync(zip, {
      filter: (f) => {
        entries.push({
          raw: f.name,
          segments: f.name.split('/').filter((s) => s !== '' && s !== '.'),
          size: f.size,
          originalSize: f.originalSize,
          compression: f.compression,
        });
        return false;
      },
    });
  } catch (e) {
    throw new AdapterFormatError(label, undefined, `not a valid zip file (${(e as Error).message})`);
  }
  return entries;
}

/**
 * The adapter's two files from a zip bundle. `label` names the bundle in errors (an adapter id or URL).
 */
export function readAdapterBundle(
  zip: Uint8Array,
  label: string,
  opts: ReadBundleOptions = {},
): AdapterFiles {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BUNDLE_BYTES;
  const fail = (entry: string | undefined, message: string): never => {
    throw new AdapterFormatError(label, entry, message);
  };
  if (!(zip instanceof Uint8Array)) return fail(undefined, 'expected the bytes of a zip file');
  const entries = listZip(zip, label);

  const byName = new Map<string, ZipEntry>();
  for (const e of entries) {
    const why = unsafeName(e.raw);
    if (why !== undefined) fail(e.raw, `unsafe entry name: ${why}`);
    const name = e.segments.join('/');
    if (e.raw.endsWith('/') || name === '') continue; // a folder
    if (byName.has(name)) fail(e.raw, 'duplicate entry name');
    byName.set(name, e);
  }

  const pick = (base: string): ZipEntry => {
    const all = [...byName.values()].filter(
      (e) => e.segments.at(-1) === base && e.segments[0] !== '__MACOSX',
    );
    const found = all.filter((e) => e.segments.length <= 2);
    if (found.length === 1) return found[0];
    if (found.length > 1) {
      return fail(base, `found ${found.map((e) => e.raw).join(', ')}: a bundle holds one adapter`);
    }
    const deeper =
      all.length > 0 ? ` (found ${all.map((e) => e.raw).join(', ')}, more than one folder deep)` : '';
    const names = [...byName.keys()];
    const listing =
      names.length > 0
        ? `; it holds ${names.slice(0, 10).join(', ')}${names.length > 10 ? ', ...' : ''}`
        : '; it is empty';
    return fail(base, `missing from the bundle, at its root or in one folder${deeper}${listing}`);
  };
  const config = pick(CONFIG_FILE);
  const weights = pick(WEIGHTS_FILE);
  const folder = (e: ZipEntry) => e.segments.slice(0, -1).join('/');
  if (folder(config) !== folder(weights)) {
    fail(undefined, `${config.raw} and ${weights.raw} are in different folders`);
  }

  for (const e of [config, weights]) {
    if (e.originalSize > maxBytes) {
      fail(e.raw, `inflates to ${e.originalSize} bytes, over the ${maxBytes}-byte limit`);
    }
    if (e.compression !== 0 && e.compression !== 8) {
      fail(e.raw, `unsupported compression method ${e.compression} (expected 0 = stored or 8 = deflate)`);
    }
    if (e.compression === 0 && e.size !== e.originalSize) {
      fail(e.raw, `stored entry of ${e.size} bytes declares ${e.originalSize}`);
    }
  }
  if (config.originalSize + weights.originalSize > maxBytes) {
    fail(
      undefined,
      `the adapter files inflate to ${config.originalSize + weights.originalSize} bytes, over the ${maxBytes}-byte limit`,
    );
  }

  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(zip, { filter: (f) => f.name === config.raw || f.name === weights.raw });
  } catch (e) {
    return fail(undefined, `not a valid zip file (${(e as Error).message})`);
  }
  const out = (e: ZipEntry): Uint8Array => {
    const data = files[e.raw];
    if (data === undefined || data.length !== e.originalSize) {
      return fail(e.raw, `inflated to ${data?.length ?? 0} bytes, the archive declares ${e.originalSize}`);
    }
    return data;
  };
  return { config: out(config), weights: out(weights) };
}

export interface WriteBundleOptions {
  /** Deflate level: 0 stores (fastest), 9 compresses most. Default 6. */
  level?: 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9;
}

/** Entry times are fixed (1980-01-01, the zip epoch) so that the same files give the same bytes. */
const FIXED_MTIME = new Date(1980, 0, 1, 0, 0, 0);

/**
 * A zip of `files` (name -> bytes, e.g. serializePeftAdapter's output), in the map's order.
 * Deterministic: the same files in the same order give the same bytes (and so the same sha256).
 */
export function writeAdapterBundle(
  files: Map<string, Uint8Array>,
  opts: WriteBundleOptions = {},
): Uint8Array {
  const level = opts.level ?? 6;
  const zippable: Zippable = {};
  for (const [name, bytes] of files) {
    const why = name === '' || name.endsWith('/') ? 'is not a file name' : unsafeName(name);
    if (why !== undefined) throw new AdapterFormatError('bundle', name, `unsafe entry name: ${why}`);
    if (!(bytes instanceof Uint8Array)) throw new AdapterFormatError('bundle', name, 'expected bytes');
    zippable[name] = [bytes, { level, mtime: FIXED_MTIME }];
  }
  return zipSync(zippable);
}
