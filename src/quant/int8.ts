/**
 * Per-channel symmetric int8 for ai.onnx DequantizeLinear (opset 13+, per-axis) + MatMul.
 *
 * Each row n of W [N, K] (one output channel) gets scale = max|W[n, :]| / 127 (float32) and
 * q = saturate(round_half_even(w / scale)) in [-127, 127], zero point 0: QuantizeLinear's own
 * arithmetic, so a graph-side QuantizeLinear of W would give the same codes. Dequantized:
 * w = q * scale (float32), which is what DequantizeLinear computes. An all-zero row gets scale 1 (its
 * codes are all 0), so no scale is ever 0.
 *
 * Why per-channel, not blockwise: blocked DequantizeLinear needs opset 21, above the decoder's
 * opset 17; per-channel keeps 8-bit error far below 4-bit's and needs no contrib op.
 */
import { fround32, roundHalfEven } from './round.js';

export interface Int8Weight {
  format: 'int8';
  n: number;
  k: number;
  /** [n, k] codes, row-major like W. */
  data: Int8Array;
  /** [n] float32 scale per output channel. */
  scales: Float32Array;
}

export function quantizeInt8(w: Float32Array, n: number, k: number): Int8Weight {
  if (w.length !== n * k)
    throw new RangeError(`int8: W holds ${w.length} values, [${n}, ${k}] needs ${n * k}`);
  const data = new Int8Array(n * k);
  const scales = new Float32Array(n);
  for (let row = 0; row < n; row++) {
    let amax = 0;
    for (let i = 0; i < k; i++) amax = Math.max(amax, Math.abs(w[row * k + i]));
    const scale = amax === 0 ? 1 : fround32(amax / 127);
    scales[row] = scale;
    for (let i = 0; i < k; i++) {
      const q = roundHalfEven(fround32(w[row * k + i] / scale));
      data[row * k + i] = q < -127 ? -127 : q > 127 ? 127 : q;
    }
  }
  return { format: 'int8', n, k, data, scales };
}

export function dequantizeInt8(q: Int8Weight): Float32Array {
  const out = new Float32Array(q.n * q.k);
  for (let row = 0; row < q.n; row++) {
    const s = q.scales[row];
    for (let i = 0; i < q.k; i++) out[row * q.k + i] = q.data[row * q.k + i] * s;
  }
  return out;
}
