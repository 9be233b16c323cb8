/**
 * `adapters.json`: the list of adapters an app can fetch, with what is needed to check them before
 * and after the download (base-model fingerprint, byte count, sha256). Documented in
 * docs/adapter-manifest.md.
 *
 * ```json
 * { "version": 1,
 *   "base": { "fingerprint": "<64 hex>", "name": "tiny-llama" },
 *   "adapters": [{ "id": "style-formal", "version": "3", "method": "LORA", "base": "<64 hex>",
 *                  "url": "style-formal.zip", "sha256": "<64 hex>", "bytes": 123456, "format": "zip" }] }
 * ```
 *
 * The base-model fingerprint (`modelFingerprint`) is the sha256 of a canonical JSON of the config.json
 * fields that fix the architecture, plus, optionally, a string identifying the weights. It lets the
 * loader refuse an adapter made for another base before downloading it.
 */
import { ModelFormatError } from '../errors.js';
import { ManifestError } from './errors.js';
import { isSha256Hex, sha256Hex } from './hash.js';

export const MANIFEST_VERSION = 1;

/** `zip`: one zip bundle. `peft-folder`: a folder URL holding the two files of a PEFT adapter. */
export type BundleFormat = 'zip' | 'peft-folder';

export interface ManifestEntry {
  /** Unique in the manifest; the cache key (with the sha256). */
  id: string;
  /** The adapter's own version, as written (numbers are kept as their decimal string). */
  version: string;
  /** PEFT `peft_type` or a finer name (`LORA`, `DORA`, `IA3`, ...): informational. */
  method: string;
  /** Fingerprint of the base model the adapter was trained on (64 hex, lowercase). */
  base: string;
  /** Absolute when the manifest URL allowed resolving it, otherwise as written. */
  url: string;
  /** zip: of the zip file. peft-folder: of adapter_model.safetensors. 64 hex, lowercase. */
  sha256: string;
  /** zip: of the zip file. peft-folder: of adapter_model.safetensors. */
  bytes: number;
  format: BundleFormat;
  /** peft-folder only (required there): sha256 of adapter_config.json. */
  config_sha256?: string;
  description?: string;
}

export interface Manifest {
  version: typeof MANIFEST_VERSION;
  /** The URL the manifest was read from (as given to parseManifest). */
  url: string;
  /** The base model the manifest is for. Entries name their own base, usually this one. */
  base: { fingerprint: string; name?: string };
  adapters: ManifestEntry[];
}

const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

const CONTROL = /[\u0000-\u001f\u007f]/;

/** The base for relative URLs: the page's or worker's location, when there is one. */
function locationHref(): string | undefined {
  const loc = (globalThis as { location?: { href?: unknown } }).location;
  return typeof loc?.href === 'string' ? loc.href : undefined;
}

/**
 * `url` resolved against `base` (itself resolved against the page's location when relative). Returns
 * `url` unchanged when no absolute base is known; undefined when `url` is not a URL at all.
 */
export function resolveUrl(url: string, base: string | undefined): string | undefined {
  const here = locationHref();
  let absoluteBase: URL | undefined;
  try {
    absoluteBase = base === undefined ? undefined : new URL(base, here);
  } catch {
    absoluteBase = undefined;
  }
  try {
    return new URL(url, absoluteBase ?? here).href;
  } catch {
    // Relative, with nothing to resolve it against yet (Node, a relative manifest URL): keep it.
    const relative = !/^[a-z][a-z0-9+.-]*:/i.test(url) && !CONTROL.test(url);
    return absoluteBase === undefined && here === undefined && relative ? url : undefined;
  }
}

/**
 * Parse and validate an `adapters.json` (the parsed JSON, or its text). `url` is where it was read
 * from: it names the manifest in errors and is the base of relative adapter URLs. Throws
 * ManifestError naming the field, e.g. `adapters.json: adapters[2].sha256: expected 64 hex characters`.
 * Unknown keys are ignored (a newer publisher may add some).
 */
export function parseManifest(json: unknown, url: string): Manifest {
  const file = url.split(/[?#]/)[0].split('/').pop() || url;
  const fail = (field: string | undefined, message: string): never => {
    throw new ManifestError(file, field, message);
  };
  let doc = json;
  if (typeof json === 'string') {
    try {
      doc = JSON.parse(json);
    } catch (e) {
      return fail(undefined, `not valid JSON (${(e as Error).message})`);
    }
  }
  if (!isRecord(doc)) return fail(undefined, 'must be a JSON object');
  if (doc.version !== MANIFEST_VERSION) {
    return fail(
      'version',
      doc.version === undefined
        ? `missing (this library reads version ${MANIFEST_VERSION})`
        : `unsupported version ${JSON.stringify(doc.version)}; this library reads version ${MANIFEST_VERSION}`,
    );
  }

  const text = (o: Record<string, unknown>, key: string, at: string): string => {
    const v = o[key];
    if (v === undefined) return fail(at, 'missing');
    if (typeof v !== 'string' || v === '')
      return fail(at, `expected a non-empty string, got ${JSON.stringify(v)}`);
    if (CONTROL.test(v)) return fail(at, 'contains control characters');
    return v;
  };
  const optionalText = (o: Record<string, unknown>, key: string, at: string): string | undefined => {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') return fail(at, `expected a string, got ${JSON.stringify(v)}`);
    return v;
  };
  const hash = (o: Record<string, unknown>, key: string, at: string): string => {
    const v = o[key];
    if (v === undefined) return fail(at, 'missing');
    if (typeof v !== 'string' || !isSha256Hex(v.toLowerCase())) {
      return fail(at, `expected 64 hex characters (a sha256), got ${JSON.stringify(v)}`);
    }
    return v.toLowerCase();
  };

  if (!isRecord(doc.base))
    return fail('base', 'expected an object { "fingerprint": "<64 hex>", "name"?: "..." }');
  const base: Manifest['base'] = { fingerprint: hash(doc.base, 'fingerprint', 'base.fingerprint') };
  const baseName = optionalText(doc.base, 'name', 'base.name');
  if (baseName !== undefined) base.name = baseName;

  if (!Array.isArray(doc.adapters)) return fail('adapters', 'expected an array');
  const seen = new Map<string, number>();
  const adapters = doc.adapters.map((a: unknown, i: number): ManifestEntry => {
    const at = (k: string) => `adapters[${i}].${k}`;
    if (!isRecord(a)) return fail(`adapters[${i}]`, 'expected an object');
    const id = text(a, 'id', at('id'));
    const first = seen.get(id);
    if (first !== undefined)
      return fail(at('id'), `duplicate id ${JSON.stringify(id)} (also adapters[${first}])`);
    seen.set(id, i);

    let version: string;
    if (typeof a.version === 'number' && Number.isSafeInteger(a.version) && a.version >= 0) {
      version = String(a.version);
    } else if (a.version === undefined) {
      return fail(at('version'), 'missing');
    } else if (typeof a.version === 'string' && a.version !== '') {
      version = a.version;
    } else {
      return fail(
        at('version'),
        `expected a string or a non-negative integer, got ${JSON.stringify(a.version)}`,
      );
    }

    const format = a.format;
    if (format !== 'zip' && format !== 'peft-folder') {
      return fail(
        at('format'),
        format === undefined
          ? 'missing ("zip" or "peft-folder")'
          : `expected "zip" or "peft-folder", got ${JSON.stringify(format)}`,
      );
    }
    const written = text(a, 'url', at('url'));
    const resolved = resolveUrl(written, url);
    if (resolved === undefined) return fail(at('url'), `${JSON.stringify(written)} is not a valid URL`);

    const bytes = a.bytes;
    if (bytes === undefined) return fail(at('bytes'), 'missing');
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes <= 0) {
      return fail(at('bytes'), `expected a positive integer, got ${JSON.stringify(bytes)}`);
    }

    const entry: ManifestEntry = {
      id,
      version,
      method: text(a, 'method', at('method')),
      base: hash(a, 'base', at('base')),
      url: resolved,
      sha256: hash(a, 'sha256', at('sha256')),
      bytes,
      format,
    };
    if (format === 'peft-folder') entry.config_sha256 = hash(a, 'config_sha256', at('config_sha256'));
    else if (a.config_sha256 !== undefined)
      return fail(at('config_sha256'), 'only a "peft-folder" entry has one');
    const description = optionalText(a, 'description', at('description'));
    if (description !== undefined) entry.description = description;
    return entry;
  });
  return { version: MANIFEST_VERSION, url, base, adapters };
}

/** The config.json fields that fix a Llama-family architecture, in canonical (sorted) order. */
export const FINGERPRINT_FIELDS = [
  'head_dim',
  'hidden_size',
  'intermediate_size',
  'model_type',
  'num_attention_heads',
  'num_hidden_layers',
  'num_key_value_heads',
  'rms_norm_eps',
  'rope_theta',
  'tie_word_embeddings',
  'vocab_size',
] as const;

/** Names the scheme inside the hashed text; a change of fields or defaults gets a new one. */
export const FINGERPRINT_SCHEME = 'edge-adapters/base-fingerprint/1';

export interface FingerprintOptions {
  /**
   * Identifies the weights, so that two checkpoints of one architecture (a base and its fine-tune)
   * get different fingerprints. Opaque to this library; publisher and app must pass the same string.
   * Recommended: the sha256 (hex) of the original float checkpoint file the base was converted from
   * (for shards, their sha256s joined by "," in file-name order). Quantizing keeps the fingerprint.
   */
  weights?: string;
  /** Names config.json in errors. */
  file?: string;
}

/**
 * The canonical text that `modelFingerprint` hashes: a JSON object with sorted keys and no spaces,
 * numbers as ECMAScript writes them (JSON.stringify): the architecture fields of FINGERPRINT_FIELDS
 * with transformers' defaults filled in (num_key_value_heads = num_attention_heads, head_dim =
 * hidden_size / num_attention_heads, rope_theta = 10000, rms_norm_eps = 1e-6, tie_word_embeddings =
 * false; null counts as absent), plus "scheme" and "weights" (the option, or null).
 */
export function fingerprintText(config: object, opts: FingerprintOptions = {}): string {
  const file = opts.file ?? 'config.json';
  const c = config as Record<string, unknown>;
  const fail = (field: string, message: string): never => {
    throw new ModelFormatError(file, field, message);
  };
  const get = (k: string): unknown => (c[k] === null ? undefined : c[k]);
  const int = (k: string, fallback?: number): number => {
    const v = get(k) ?? fallback;
    if (v === undefined) return fail(k, 'missing');
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      return fail(k, `expected a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const positive = (k: string, fallback: number): number => {
    const v = get(k) ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      return fail(k, `expected a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    return fail('config', 'expected a config.json object');
  }
  const modelType = get('model_type');
  if (typeof modelType !== 'string' || modelType === '') {
    return fail('model_type', `expected a non-empty string, got ${JSON.stringify(modelType ?? null)}`);
  }
  const hidden = int('hidden_size');
  const heads = int('num_attention_heads');
  const tie = get('tie_word_embeddings') ?? false;
  if (typeof tie !== 'boolean')
    fail('tie_word_embeddings', `expected true or false, got ${JSON.stringify(tie)}`);
  const fields: Record<(typeof FINGERPRINT_FIELDS)[number], string | number | boolean> = {
    head_dim: int('head_dim', Math.floor(hidden / heads)),
    hidden_size: hidden,
    intermediate_size: int('intermediate_size'),
    model_type: modelType,
    num_attention_heads: heads,
    num_hidden_layers: int('num_hidden_layers'),
    num_key_value_heads: int('num_key_value_heads', heads),
    rms_norm_eps: positive('rms_norm_eps', 1e-6),
    rope_theta: positive('rope_theta', 10000),
    tie_word_embeddings: tie as boolean,
    vocab_size: int('vocab_size'),
  };
  if (opts.weights !== undefined && (typeof opts.weights !== 'string' || opts.weights === '')) {
    throw new TypeError('modelFingerprint: weights must be a non-empty string');
  }
  const canonical: Record<string, unknown> = {
    ...fields,
    scheme: FINGERPRINT_SCHEME,
    weights: opts.weights ?? null,
  };
  const keys = Object.keys(canonical).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(canonical[k])}`).join(',')}}`;
}

/**
 * A base model's fingerprint: sha256 (64 lowercase hex) of `fingerprintText(config, opts)`. Throws
 * ModelFormatError naming the config field when an architecture field is missing or invalid.
 */
export async function modelFingerprint(config: object, opts: FingerprintOptions = {}): Promise<string> {
  return sha256Hex(new TextEncoder().encode(fingerprintText(config, opts)), opts.file ?? 'config.json');
}
