/**
 * bitsandbytes NF4 (QLoRA's 4-bit NormalFloat), bit-compatible with bitsandbytes' quantize_4bit /
 * dequantize_4bit (quant_type='nf4') and laid out as onnxruntime's MatMulBnb4 (com.microsoft) reads it.
 *
 * Like bitsandbytes, the weight W [N, K] (Hugging Face [out, in]) is quantized as ONE flat row-major
 * array of N*K values cut into blocks of `blockSize` (64 by default), so a block may span rows when K
 * is not a multiple of the block size; only the last block can be short. Per block (csrc/kernels.cu,
 * kQuantizeBlockwise with DATA_TYPE NF4, all float32):
 *
 *   absmax = max |w|                       (stored float32)
 *   code   = dQuantizeNF4(w * (1 / absmax)) (bitsandbytes' decision tree: thresholds are the
 *                                           midpoints of adjacent NF4 values)
 *   packed two per byte, element 2j in the HIGH nibble, 2j+1 in the low nibble
 *   dequantized: NF4[code] * absmax
 *
 * An all-zero block has absmax 0: 1/0 = inf, 0 * inf = NaN, every comparison in the tree is false and
 * the code is 0b0000 (-1.0), exactly as the kernel does; it dequantizes to -1 * 0 = 0. A short last
 * block is padded with 0.0 for the absmax (harmless) and an odd element count leaves the last byte's
 * low nibble as the code of a padding zero (0b0111).
 *
 * Double quantization (bnb_4bit_use_double_quant, `compress_statistics`): bitsandbytes stores
 * offset = mean(absmax) and quantizes absmax - offset with quantize_blockwise: blocks of 256, the
 * signed 8-bit dynamic map (create_dynamic_map()), nearest code by dQuantize's binary search, a
 * float32 absmax per block. dequantize_4bit restores absmax = code[q] * absmax2 + offset (float32).
 * MatMulBnb4 has no nested statistics, so the graph feeds that restored float32 absmax: the values
 * the graph computes with are exactly the values bitsandbytes dequantizes to.
 *
 * The one value not bit-reproducible from torch is the offset itself: torch's float32 mean reduces
 * in an order of its own; here the sum is taken in float64 and rounded once. The offset is stored
 * with the weight, so quantize/dequantize here are self-consistent; to import a bitsandbytes
 * checkpoint, use its stored offset.
 */
import { fround32 } from './round.js';

/** bitsandbytes' NF4 values (nf4_dequantization_lut), as float32. */
export const NF4_CODE: Float32Array = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

/** bitsandbytes' dQuantizeNF4: the code of a value already divided by its block's absmax. */
export function nf4Index(x: number): number {
  // Thresholds as float32 literals, compared in float32 (x is a float32 value).
  if (x > T[0])
    if (x > T[1])
      if (x > T[2]) return x > T[3] ? 0b1111 : 0b1110;
      else return x > T[4] ? 0b1101 : 0b1100;
    else if (x > T[5]) return x > T[6] ? 0b1011 : 0b1010;
    else return x > T[7] ? 0b1001 : 0b1000;
  else if (x > T[8])
    if (x > T[9]) return x > T[10] ? 0b0111 : 0b0110;
    else return x > T[11] ? 0b0101 : 0b0100;
  else if (x > T[12]) return x > T[13] ? 0b0011 : 0b0010;
  else return x > T[14] ? 0b0001 : 0b0000;
}

const T = Float32Array.from([
  0.03979014977812767, 0.3893125355243683, 0.6427869200706482, 0.8614784181118011, 0.5016634166240692,
  0.2035212516784668, 0.2920137718319893, 0.1202552504837513, -0.33967943489551544, -0.13791173323988914,
  -0.045525018125772476, -0.23460740596055984, -0.6106329262256622, -0.4599952697753906, -0.8480964004993439,
]);

export const NF4_BLOCK_SIZE = 64;
export const NESTED_BLOCK_SIZE = 256;

export interface Nf4Options {
  /** bitsandbytes blocksize; 64 is what QLoRA (and transformers' BitsAndBytesConfig) uses. */
  blockSize?: number;
  /** Double quantization of the absmax (bnb_4bit_use_double_quant). Default false. */
  doubleQuant?: boolean;
}

/** bitsandbytes' nested QuantState (state2 + offset). */
export interface NestedAbsmax {
  /** 8-bit codes of absmax - offset, one per 4-bit block. */
  q: Uint8Array;
  /** float32 absmax of each block of 256 codes. */
  absmax: Float32Array;
  /** The 256-value dynamic map (create_dynamic_map(signed=True)). */
  code: Float32Array;
  blockSize: number;
  /** float32 mean of the first-level absmax. */
  offset: number;
}

export interface Nf4Weight {
  format: 'nf4';
  n: number;
  k: number;
  blockSize: number;
  /** ceil(n*k/2) bytes: flat row-major [n, k], element 2j in the high nibble. */
  data: Uint8Array;
  /** Per-block float32 absmax (when doubleQuant: the restored values, as dequantize_4bit computes them). */
  absmax: Float32Array;
  /** The stored, double-quantized absmax, when doubleQuant. */
  nested?: NestedAbsmax;
}

/** Quantizes W [n, k] (row-major) as bitsandbytes.functional.quantize_4bit(W, quant_type='nf4'). */
export function quantizeNf4(w: Float32Array, n: number, k: number, opts: Nf4Options = {}): Nf4Weight {
  const bs = opts.blockSize ?? NF4_BLOCK_SIZE;
  if (!Number.isInteger(bs) || bs < 2 || bs % 2 !== 0)
    throw new RangeError(`nf4 block size must be even, got ${bs}`);
  const total = n * k;
  if (w.length !== total)
    throw new RangeError(`nf4: W holds ${w.length} values, [${n}, ${k}] needs ${total}`);
  const blocks = Math.ceil(total / bs);
  const absmax = new Float32Array(blocks);
  const data = new Uint8Array(Math.ceil(total / 2));
  for (let b = 0; b < blocks; b++) {
    const start = b * bs;
    const end = Math.min(start + bs, total);
    let amax = 0; // the kernel starts at -FLT_MAX and reduces fmaxf(|v|) over values and zero padding
    for (let i = start; i < end; i++) amax = Math.max(amax, Math.abs(w[i]));
    absmax[b] = amax;
    const inv = fround32(1 / amax);
    for (let i = start; i < start + bs; i += 2) {
      if (i >= total) break;
      const hi = nf4Index(fround32(w[i] * inv));
      const lo = nf4Index(fround32((i + 1 < total ? w[i + 1] : 0) * inv));
      data[i >> 1] = (hi << 4) | lo;
    }
  }
  if (!opts.doubleQuant) return { format: 'nf4', n, k, blockSize: bs, data, absmax };
  const nested = quantizeNested(absmax);
  return { format: 'nf4', n, k, blockSize: bs, data, absmax: dequantizeNested(nested), nested };
}

/** bitsandbytes' double quantization of a float32 absmax vector. */
export function quantizeNested(absmax: Float32Array): NestedAbsmax {
  let sum = 0;
  for (const v of absmax) sum += v;
  const offset = fround32(sum / absmax.length);
  const centred = absmax.map((v) => v - offset); // Float32Array.map rounds each to float32
  const code = dynamicMap();
  const { q, absmax: absmax2 } = quantizeBlockwise(centred, code, NESTED_BLOCK_SIZE);
  return { q, absmax: absmax2, code, blockSize: NESTED_BLOCK_SIZE, offset };
}

/** dequantize_blockwise(q, state2) + offset, in float32. */
export function dequantizeNested(nested: NestedAbsmax): Float32Array {
  const out = dequantizeBlockwise(nested.q, nested.absmax, nested.code, nested.blockSize);
  for (let i = 0; i < out.length; i++) out[i] = fround32(out[i] + nested.offset);
  return out;
}

/** W [n, k] as dequantize_4bit(quant_type='nf4') returns it (float32). */
export function dequantizeNf4(q: Nf4Weight): Float32Array {
  const absmax = q.nested ? dequantizeNested(q.nested) : q.absmax;
  const total = q.n * q.k;
  const out = new Float32Array(total);
  for (let i = 0; i < total; i++) {
    const byte = q.data[i >> 1];
    const c = i & 1 ? byte & 0x0f : byte >> 4;
    out[i] = NF4_CODE[c] * absmax[Math.floor(i / q.blockSize)];
  }
  return out;
}

/**
 * bitsandbytes' quantize_blockwise (8-bit, General8bit): per block absmax, code index by dQuantize's
 * binary search over the sorted 256-value `code` of x * (1 / absmax).
 */
export function quantizeBlockwise(
  values: Float32Array,
  code: Float32Array,
  blockSize: number,
): { q: Uint8Array; absmax: Float32Array } {
  const blocks = Math.ceil(values.length / blockSize);
  const absmax = new Float32Array(blocks);
  const q = new Uint8Array(values.length);
  for (let b = 0; b < blocks; b++) {
    const start = b * blockSize;
    const end = Math.min(start + blockSize, values.length);
    let amax = 0;
    for (let i = start; i < end; i++) amax = Math.max(amax, Math.abs(values[i]));
    absmax[b] = amax;
    const inv = fround32(1 / amax);
    for (let i = start; i < end; i++) q[i] = dQuantize(code, fround32(values[i] * inv));
  }
  return { q, absmax };
}

export function dequantizeBlockwise(
  q: Uint8Array,
  absmax: Float32Array,
  code: Float32Array,
  blockSize: number,
): Float32Array {
  const out = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) out[i] = code[q[i]] * absmax[Math.floor(i / blockSize)];
  return out;
}

/** bitsandbytes' dQuantize<0> (csrc/kernels.cu): binary search, then the nearer neighbour by midpoint. */
export function dQuantize(code: Float32Array, x: number): number {
  let pivot = 127;
  let upperPivot = 255;
  let lowerPivot = 0;
  let lower = -1;
  let upper = 1;
  let val = code[pivot];
  for (let i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lowerPivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upperPivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upperPivot === 255) upper = code[upperPivot];
  if (lowerPivot === 0) lower = code[lowerPivot];
  if (x > val) {
    const mid = fround32(fround32(upper + val) * 0.5);
    return x > mid ? upperPivot : pivot;
  }
  const mid = fround32(fround32(lower + val) * 0.5);
  return x < mid ? lowerPivot : pivot;
}

let dynamic: Float32Array | undefined;

/**
 * bitsandbytes.functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for
 * each exponent i in 0..6, the midpoints of torch.linspace(0.1, 1, 2^i + 1) (float32) scaled by
 * 10^(i-6), with both signs; then 0 and 1; sorted. 256 float32 values.
 */
export function dynamicMap(): Float32Array {
  if (dynamic) return dynamic.slice();
  const data: number[] = [];
  const maxExp = 7;
  const nonSign = 7;
  for (let i = 0; i < maxExp; i++) {
    const items = 2 ** (i + nonSign - maxExp) + 1;
    const b = linspace32(0.1, 1, items);
    const scale = fround32(Number(`1e${-(maxExp - 1) + i}`));
    for (let j = 0; j + 1 < items; j++) {
      const mean = fround32(fround32(b[j] + b[j + 1]) / 2);
      data.push(fround32(scale * mean));
      data.push(fround32(-scale * mean));
    }
  }
  data.push(0, 1);
  while (data.length < 256) data.push(0);
  data.sort((a, b) => a - b);
  dynamic = Float32Array.from(data);
  return dynamic.slice();
}

/** torch.linspace(start, end, steps, dtype=float32) as its CPU kernel computes it. */
function linspace32(start: number, end: number, steps: number): Float32Array {
  const s = fround32(start);
  const e = fround32(end);
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = s;
    return out;
  }
  const step = fround32(fround32(e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  for (let i = 0; i < steps; i++) {
    out[i] = i < halfway ? fround32(s + fround32(step * i)) : fround32(e - fround32(step * (steps - i - 1)));
  }
  return out;
}
