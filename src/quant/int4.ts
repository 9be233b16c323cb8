/**
 * Blockwise 4-bit integer quantization in onnxruntime's MatMulNBits layout (com.microsoft).
 *
 * The weight is W [N, K] (Hugging Face [out, in]); each row n is cut into ceil(K / blockSize) blocks
 * along K. MatMulNBits stores
 *
 *   B            uint8 [N, ceil(K/bs), bs/2]   element 2j in the LOW nibble, 2j+1 in the high nibble
 *   scales       float32 [N * ceil(K/bs)]
 *   zero_points  uint8 [N * ceil(ceil(K/bs)/2)]  (asymmetric only; block 2j in the low nibble)
 *
 * and dequantizes w = (q - zp) * scale, with zp = 8 (2^(bits-1)) when zero_points is absent.
 *
 * The arithmetic is MLAS's BlockwiseQuantizer (onnxruntime/core/mlas/lib/q4_dq.cpp), the code behind
 * onnxruntime's MatMul4BitsQuantizer, in float32:
 * - symmetric (the default here): scale = v / -8 where v is the block's value of largest magnitude
 *   (so it maps exactly to code 0); q = clamp(roundf(w * (1/scale) + 8), 0, 15); no zero_points input.
 * - asymmetric: min = min(block, 0), max = max(block, 0), scale = (max - min) / 15,
 *   zp = clamp(roundf(-min / scale), 0, 15); q = clamp(roundf(w * (1/scale) + zp), 0, 15).
 * roundf rounds half away from zero. A scale of 0 (all-zero block) gives 1/scale = 0, so every code
 * is the zero point and dequantizes to 0.
 *
 * Symmetric is the default: zero stays exactly zero (padding, pruned rows), there is one tensor less
 * to feed, and MatMulNBits' default zero point (8) is exactly this scheme. Asymmetric is available
 * (`symmetric: false`) for weights whose blocks are far from centred.
 *
 * K not a multiple of the block size: the last block is padded with zeros, as onnxruntime's Python
 * quantizer does (np.pad before quantizing); a zero quantizes to the zero point, so the padding
 * dequantizes to exactly 0 and never changes the block's scale (0 is always inside the range).
 */
import { fround32, roundf } from './round.js';

export interface Int4Options {
  /** Elements per block along K: 16, 32, 64, 128 or 256 (MatMulNBits accepts any power of 2 >= 16). Default 32. */
  blockSize?: number;
  /** Symmetric (no zero points, zp = 8). Default true. */
  symmetric?: boolean;
}

export interface Int4Weight {
  format: 'int4';
  /** Rows of W (out features). */
  n: number;
  /** Columns of W (in features). */
  k: number;
  blockSize: number;
  /** ceil(k / blockSize). */
  blocks: number;
  /** [n, blocks, blockSize / 2] packed codes, element 0 in the low nibble. */
  data: Uint8Array;
  /** [n * blocks] float32 scales. */
  scales: Float32Array;
  /** [n * ceil(blocks / 2)] packed zero points (asymmetric only). */
  zeroPoints?: Uint8Array;
}

export const INT4_BLOCK_SIZES = [16, 32, 64, 128, 256] as const;

function checkBlockSize(bs: number): void {
  if (!Number.isInteger(bs) || bs < 16 || (bs & (bs - 1)) !== 0) {
    throw new RangeError(`int4 block size must be a power of 2 >= 16, got ${bs}`);
  }
}

/** Quantizes W [n, k] (row-major) to MatMulNBits' 4-bit layout. */
export function quantizeInt4(w: Float32Array, n: number, k: number, opts: Int4Options = {}): Int4Weight {
  const bs = opts.blockSize ?? 32;
  checkBlockSize(bs);
  if (w.length !== n * k)
    throw new RangeError(`int4: W holds ${w.length} values, [${n}, ${k}] needs ${n * k}`);
  const symmetric = opts.symmetric ?? true;
  const blocks = Math.ceil(k / bs);
  const half = bs / 2;
  const data = new Uint8Array(n * blocks * half);
  const scales = new Float32Array(n * blocks);
  const zpBytes = Math.ceil(blocks / 2);
  // Unused high nibble of an odd block count: MLAS leaves it at 8.
  const zeroPoints = symmetric ? undefined : new Uint8Array(n * zpBytes).fill(0x88);
  const block = new Float32Array(bs);

  for (let row = 0; row < n; row++) {
    for (let b = 0; b < blocks; b++) {
      block.fill(0); // zero padding past k
      const start = b * bs;
      const len = Math.min(bs, k - start);
      block.set(w.subarray(row * k + start, row * k + start + len));
      let scale: number;
      let zp: number;
      if (symmetric) {
        // range2scale: the signed value of largest magnitude (max wins ties), / -8.
        let min = Infinity;
        let max = -Infinity;
        for (let i = 0; i < len; i++) {
          if (block[i] < min) min = block[i];
          if (block[i] > max) max = block[i];
        }
        const v = Math.abs(max) > Math.abs(min) ? max : min;
        scale = fround32(v / -8);
        zp = 8;
      } else {
        let min = 0;
        let max = 0;
        for (let i = 0; i < len; i++) {
          if (block[i] < min) min = block[i];
          if (block[i] > max) max = block[i];
        }
        scale = fround32(fround32(max - min) / 15);
        let zpf = min;
        if (scale !== 0) zpf = fround32(0 - fround32(min / scale));
        zp = zpf < 0 ? 0 : zpf > 15 ? 15 : roundf(zpf);
        const zi = row * zpBytes + (b >> 1);
        zeroPoints![zi] = b & 1 ? (zeroPoints![zi] & 0x0f) | (zp << 4) : (zeroPoints![zi] & 0xf0) | zp;
      }
      scales[row * blocks + b] = scale;
      const rs = scale !== 0 ? fround32(1 / scale) : 0;
      const out = (row * blocks + b) * half;
      for (let i = 0; i < bs; i += 2) {
        const q0 = quantizeOne(block[i], rs, zp);
        const q1 = quantizeOne(block[i + 1], rs, zp);
        data[out + i / 2] = q0 | (q1 << 4);
      }
    }
  }
  return { format: 'int4', n, k, blockSize: bs, blocks, data, scales, zeroPoints };
}

function quantizeOne(v: number, rs: number, zp: number): number {
  const q = roundf(fround32(fround32(v * rs) + zp));
  return q < 0 ? 0 : q > 15 ? 15 : q;
}

/** The 4-bit code of element `col` of row `row`. */
export function int4Code(q: Int4Weight, row: number, col: number): number {
  const byte =
    q.data[(row * q.blocks + Math.floor(col / q.blockSize)) * (q.blockSize / 2) + ((col % q.blockSize) >> 1)];
  return col & 1 ? byte >> 4 : byte & 0x0f;
}

/** The zero point of block `b` of row `row` (8 when symmetric). */
export function int4ZeroPoint(q: Int4Weight, row: number, b: number): number {
  if (!q.zeroPoints) return 8;
  const byte = q.zeroPoints[row * Math.ceil(q.blocks / 2) + (b >> 1)];
  return b & 1 ? byte >> 4 : byte & 0x0f;
}

/** W [n, k] as MatMulNBits computes it: (q - zp) * scale in float32. */
export function dequantizeInt4(q: Int4Weight): Float32Array {
  const { n, k, blockSize: bs, blocks, data, scales } = q;
  const out = new Float32Array(n * k);
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < blocks; b++) {
      const scale = scales[row * blocks + b];
      const zp = int4ZeroPoint(q, row, b);
      const bytes = (row * blocks + b) * (bs / 2);
      const at = row * k + b * bs;
      const len = Math.min(bs, k - b * bs);
      for (let i = 0; i < len; i++) {
        const byte = data[bytes + (i >> 1)];
        out[at + i] = ((i & 1 ? byte >> 4 : byte & 0x0f) - zp) * scale;
      }
    }
  }
  return out;
}
