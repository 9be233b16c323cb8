/**
 * DoRA's per-row magnitude scale, as PEFT computes it at inference (lora/dora.py
 * DoraLinearLayer.get_weight_norm and forward, eval mode):
 *
 *   g = lora_magnitude_vector / ||W + s · B A||   one value per output row (norm along dim 1 of [out, in])
 *
 * without forming the dense [out, in] delta: per row o,
 *
 *   ||W_o + s (BA)_o||² = ||W_o||² + 2 s · B_o · (W Aᵀ)_o + s² · B_o (A Aᵀ) B_oᵀ
 *
 * with W Aᵀ [out, r] (one pass over W, O(out·in·r)) and A Aᵀ [r, r], accumulated in float64.
 * Not a registered method: LoRA with use_dora (./lora.ts), as in PEFT.
 */
import { IncompatibleAdapterError } from '../errors.js';

export interface LowRankDims {
  rank: number;
  in: number;
  out: number;
}

/**
 * ||W + s · B A|| per output row. `w` [out, in], `loraA` [r, in] and `loraB` [out, r] row-major (PEFT
 * layouts).
 */
export function doraWeightNorm(
  w: Float32Array,
  loraA: Float32Array,
  loraB: Float32Array,
  scaling: number,
  { rank: r, in: n, out }: LowRankDims,
): Float64Array {
  // A Aᵀ [r, r].
  const gram = new Float64Array(r * r);
  for (let k = 0; k < r; k++) {
    for (let l = k; l < r; l++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += loraA[k * n + i] * loraA[l * n + i];
      gram[k * r + l] = s;
      gram[l * r + k] = s;
    }
  }
  const norms = new Float64Array(out);
  const wa = new Float64Array(r); // (W Aᵀ)_o
  for (let o = 0; o < out; o++) {
    const row = o * n;
    let ww = 0;
    for (let i = 0; i < n; i++) ww += w[row + i] * w[row + i];
    // Four rows of A per pass over the row of W (which stays in cache): the hot loop of an activation.
    let k = 0;
    for (; k + 4 <= r; k += 4) {
      const a0 = k * n;
      const a1 = a0 + n;
      const a2 = a1 + n;
      const a3 = a2 + n;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let i = 0; i < n; i++) {
        const v = w[row + i];
        s0 += v * loraA[a0 + i];
        s1 += v * loraA[a1 + i];
        s2 += v * loraA[a2 + i];
        s3 += v * loraA[a3 + i];
      }
      wa[k] = s0;
      wa[k + 1] = s1;
      wa[k + 2] = s2;
      wa[k + 3] = s3;
    }
    for (; k < r; k++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += w[row + i] * loraA[k * n + i];
      wa[k] = s;
    }
    let cross = 0;
    let quad = 0;
    for (let k = 0; k < r; k++) {
      const bk = loraB[o * r + k];
      cross += bk * wa[k];
      let gb = 0;
      for (let l = 0; l < r; l++) gb += gram[k * r + l] * loraB[o * r + l];
      quad += bk * gb;
    }
    norms[o] = Math.sqrt(Math.max(0, ww + 2 * scaling * cross + scaling * scaling * quad));
  }
  return norms;
}

/** g = magnitude / ||W + s · B A|| per output row; refuses a zero norm (PEFT would produce NaN). */
export function doraScale(
  w: Float32Array,
  loraA: Float32Array,
  loraB: Float32Array,
  scaling: number,
  magnitude: ArrayLike<number>,
  dims: LowRankDims,
  where: { file: string; tensor: string },
): Float64Array {
  const norms = doraWeightNorm(w, loraA, loraB, scaling, dims);
  return norms.map((norm, o) => {
    const g = magnitude[o] / norm;
    if (!Number.isFinite(g)) {
      throw new IncompatibleAdapterError(
        where.file,
        where.tensor,
        `row ${o} of W + scaling · B A has norm ${norm}: DoRA's magnitude / norm is not finite`,
      );
    }
    return g;
  });
}
