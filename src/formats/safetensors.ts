/**
 * The safetensors format (Hugging Face): 8 bytes little-endian header length N, N bytes of UTF-8
 * JSON header, then the tensor data. Reading validates the header as the reference Rust
 * implementation does; writing produces the bytes the Python/Rust library writes.
 */
import { type EdgeAdaptersError, ModelFormatError } from '../errors.js';
import { compareCodePoints } from './code-point-order.js';
import { fromBfloat16Array, fromFloat16Array, toBfloat16Array, toFloat16Array } from './dtype.js';

/** Every dtype of the format, in the reference's enum order (= increasing alignment). */
export const SAFETENSORS_DTYPES = [
  'BOOL',
  'F4',
  'F6_E2M3',
  'F6_E3M2',
  'U8',
  'I8',
  'F8_E5M2',
  'F8_E4M3',
  'F8_E8M0',
  'I16',
  'U16',
  'F16',
  'BF16',
  'I32',
  'U32',
  'F32',
  'C64',
  'F64',
  'I64',
  'U64',
] as const;

export type SafetensorsDtype = (typeof SAFETENSORS_DTYPES)[number];

/** Bits per element of each dtype. */
export const DTYPE_BITS: Readonly<Record<SafetensorsDtype, number>> = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
};

const DTYPE_RANK = new Map<string, number>(SAFETENSORS_DTYPES.map((d, i) => [d, i]));

export function isSafetensorsDtype(x: unknown): x is SafetensorsDtype {
  return typeof x === 'string' && DTYPE_RANK.has(x);
}

export interface SafetensorsEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Little-endian, row-major element bytes. After parsing: a view into the file, not a copy. */
  bytes: Uint8Array;
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  /** Tensors in file (data offset) order. */
  tensors: Map<string, SafetensorsEntry>;
}

/** A typed error class of src/errors.ts: ModelFormatError for models, AdapterFormatError for adapters. */
export type FormatErrorClass = new (
  file: string,
  field: string | undefined,
  message: string,
) => EdgeAdaptersError;

export interface SafetensorsOptions {
  /** The file name used in error messages. */
  file?: string;
  /** The error class thrown; ModelFormatError by default. */
  error?: FormatErrorClass;
}

/** The reference implementation refuses headers larger than this. */
export const MAX_HEADER_SIZE = 100_000_000;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function options(opts: string | SafetensorsOptions | undefined, defaultFile: string) {
  const o = typeof opts === 'string' ? { file: opts } : (opts ?? {});
  return { file: o.file ?? defaultFile, Err: o.error ?? ModelFormatError };
}

const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

const isIndex = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/** Number of bytes of `shape` elements of `dtype`, or an error message. */
function byteLength(dtype: SafetensorsDtype, shape: readonly number[]): number | string {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return `shape [${shape.join(', ')}] overflows`;
  }
  const bits = n * DTYPE_BITS[dtype];
  if (!Number.isSafeInteger(bits)) return `shape [${shape.join(', ')}] overflows`;
  if (bits % 8 !== 0) return `${n} elements of ${dtype} do not end on a byte boundary`;
  return bits / 8;
}

/**
 * Parse a safetensors file. Tensor bytes are views into `bytes` (no copy).
 * Throws `opts.error` (ModelFormatError by default) naming the file and the tensor or field at fault.
 */
export function parseSafetensors(
  bytes: Uint8Array,
  opts: string | SafetensorsOptions = 'model.safetensors',
): SafetensorsFile {
  const { file, Err } = options(opts, 'model.safetensors');
  if (bytes.length < 8)
    throw new Err(file, 'header', `file is ${bytes.length} bytes, shorter than the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  if (n > MAX_HEADER_SIZE)
    throw new Err(file, 'header', `header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit`);
  if (8 + n > bytes.length) {
    throw new Err(file, 'header', `header length ${n} runs past the end of the ${bytes.length}-byte file`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes.subarray(8, 8 + n));
  } catch {
    throw new Err(file, 'header', 'header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw new Err(file, 'header', `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isRecord(header)) throw new Err(file, 'header', 'header is not a JSON object');

  let metadata: Record<string, string> = {};
  const infos: { name: string; dtype: SafetensorsDtype; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (value === null) continue;
      if (!isRecord(value)) throw new Err(file, '__metadata__', 'must be an object of strings');
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string')
          throw new Err(file, `__metadata__.${k}`, 'metadata values must be strings');
      }
      metadata = Object.fromEntries(Object.entries(value)) as Record<string, string>; // own keys, even __proto__
      continue;
    }
    if (!isRecord(value)) throw new Err(file, name, 'tensor entry is not an object');
    const { dtype, shape, data_offsets: offsets } = value;
    if (!isSafetensorsDtype(dtype)) throw new Err(file, name, `unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isIndex)) {
      throw new Err(file, name, 'shape must be an array of non-negative integers');
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
      throw new Err(file, name, 'data_offsets must be [begin, end], non-negative integers');
    }
    infos.push({
      name,
      dtype,
      shape: shape as number[],
      begin: offsets[0] as number,
      end: offsets[1] as number,
    });
  }

  // As the reference: order by (begin, end), then the offsets must tile the data buffer exactly.
  infos.sort((a, b) => a.begin - b.begin || a.end - b.end);
  const data = bytes.subarray(8 + n);
  const tensors = new Map<string, SafetensorsEntry>();
  let start = 0;
  for (const t of infos) {
    if (t.begin !== start || t.end < t.begin) {
      const why =
        t.end < t.begin
          ? 'end before begin'
          : t.begin < start
            ? 'overlaps the previous tensor'
            : 'leaves a gap';
      throw new Err(
        file,
        t.name,
        `invalid data_offsets [${t.begin}, ${t.end}]: ${why} (expected begin ${start})`,
      );
    }
    start = t.end;
    const size = byteLength(t.dtype, t.shape);
    if (typeof size === 'string') throw new Err(file, t.name, size);
    if (t.end - t.begin !== size) {
      throw new Err(
        file,
        t.name,
        `data_offsets [${t.begin}, ${t.end}] hold ${t.end - t.begin} bytes but ${t.dtype} [${t.shape.join(', ')}] needs ${size}`,
      );
    }
    if (t.end > data.length) {
      throw new Err(
        file,
        t.name,
        `data_offsets [${t.begin}, ${t.end}] run past the ${data.length}-byte data buffer`,
      );
    }
    tensors.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: data.subarray(t.begin, t.end) });
  }
  if (start !== data.length) {
    throw new Err(
      file,
      'data_offsets',
      `tensors cover ${start} bytes but the data buffer has ${data.length}`,
    );
  }
  return { metadata, tensors };
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * Serialize tensors exactly as the safetensors library does: sorted by descending dtype (enum order)
 * then by name, header JSON without spaces (`__metadata__` first, then the tensors in data order),
 * padded with spaces to a multiple of 8. Metadata keys keep the object's order (Python passes a
 * hash map, so its order is unspecified beyond one key).
 */
export function serializeSafetensors(
  tensors: Iterable<[string, SafetensorsEntry]>,
  metadata?: Record<string, string>,
  opts: string | SafetensorsOptions = 'model.safetensors',
): Uint8Array {
  const { file, Err } = options(opts, 'model.safetensors');
  if (!LITTLE_ENDIAN) throw new Err(file, undefined, 'big-endian hosts are not supported');
  const list = [...tensors];
  const seen = new Set<string>();
  for (const [name, t] of list) {
    if (name === '__metadata__' || seen.has(name))
      throw new Err(file, name, 'duplicate or reserved tensor name');
    seen.add(name);
    if (LONE_SURROGATE.test(name)) throw new Err(file, name, 'tensor name is not valid Unicode');
    if (!isSafetensorsDtype(t.dtype)) throw new Err(file, name, `unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!t.shape.every(isIndex)) throw new Err(file, name, 'shape must be non-negative integers');
    const size = byteLength(t.dtype, t.shape);
    if (typeof size === 'string') throw new Err(file, name, size);
    if (size !== t.bytes.length) {
      throw new Err(
        file,
        name,
        `${t.dtype} [${t.shape.join(', ')}] needs ${size} bytes, got ${t.bytes.length}`,
      );
    }
  }
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Err(file, `__metadata__.${k}`, 'metadata values must be strings');
    }
  }
  list.sort(
    ([an, a], [bn, b]) =>
      (DTYPE_RANK.get(b.dtype) ?? 0) - (DTYPE_RANK.get(a.dtype) ?? 0) || compareCodePoints(an, bn),
  );

  const parts: string[] = [];
  if (metadata !== undefined) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  let offset = 0;
  for (const [name, t] of list) {
    const end = offset + t.bytes.length;
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const header = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(header.length / 8) * 8;
  if (padded > MAX_HEADER_SIZE) throw new Err(file, 'header', `header of ${padded} bytes exceeds the limit`);
  const out = new Uint8Array(8 + padded + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, padded % 2 ** 32, true);
  view.setUint32(4, Math.floor(padded / 2 ** 32), true);
  out.set(header, 8);
  out.fill(0x20, 8 + header.length, 8 + padded);
  let at = 8 + padded;
  for (const [, t] of list) {
    out.set(t.bytes, at);
    at += t.bytes.length;
  }
  return out;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkLength(length: number, shape: readonly number[]): void {
  if (!shape.every(isIndex) || elementCount(shape) !== length) {
    throw new RangeError(`shape [${shape.join(', ')}] does not hold ${length} elements`);
  }
}

/** An F32 entry viewing `data`'s bytes (no copy). */
export function float32Entry(data: Float32Array, shape: number[]): SafetensorsEntry {
  checkLength(data.length, shape);
  return { dtype: 'F32', shape, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** An F16 entry: `data` rounded to float16 (nearest, ties to even). */
export function float16Entry(data: Float32Array, shape: number[]): SafetensorsEntry {
  checkLength(data.length, shape);
  const bits = toFloat16Array(data);
  return { dtype: 'F16', shape, bytes: new Uint8Array(bits.buffer) };
}

/** A BF16 entry: `data` rounded to bfloat16 as torch does. */
export function bfloat16Entry(data: Float32Array, shape: number[]): SafetensorsEntry {
  checkLength(data.length, shape);
  const bits = toBfloat16Array(data);
  return { dtype: 'BF16', shape, bytes: new Uint8Array(bits.buffer) };
}

/** Copy bytes into a fresh aligned buffer. */
function aligned(bytes: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}

/**
 * A tensor's values as a new Float32Array: F32 copied, F16/BF16 widened exactly, F64 rounded.
 * Any other dtype is refused with `error` naming the file and tensor.
 */
export function tensorToFloat32(
  t: SafetensorsEntry,
  file = 'model.safetensors',
  name = 'tensor',
  error: FormatErrorClass = ModelFormatError,
): Float32Array {
  if (!LITTLE_ENDIAN) throw new error(file, name, 'big-endian hosts are not supported');
  const n = elementCount(t.shape);
  if (byteLength(t.dtype, t.shape) !== t.bytes.length)
    throw new error(file, name, `${t.dtype} [${t.shape.join(', ')}] does not match ${t.bytes.length} bytes`);
  switch (t.dtype) {
    case 'F32':
      return new Float32Array(aligned(t.bytes), 0, n);
    case 'F16':
      return fromFloat16Array(new Uint16Array(aligned(t.bytes), 0, n));
    case 'BF16':
      return fromBfloat16Array(new Uint16Array(aligned(t.bytes), 0, n));
    case 'F64':
      return Float32Array.from(new Float64Array(aligned(t.bytes), 0, n));
    default:
      throw new error(file, name, `unsupported dtype ${t.dtype}: expected F32, F16, BF16 or F64`);
  }
}
