/**
 * Arrow's expert prototypes (PEFT lora/arrow.py ArrowLoraLinearLayer.build_prototypes): for each
 * module and each LoRA expert, the top right singular vector of the expert's ΔW = B A [out, in], a
 * unit vector in the module's input space. At run time a token x goes to the experts whose
 * prototypes it is most aligned with, |x · p| (./../graph/expert-router.ts).
 *
 * PEFT finds the vector by 15 power iterations on ΔWᵀΔW from a seeded random start, in float32. Here
 * it is computed exactly, in float64, from the slot form a = Aᵀ [in, r], b = s Bᵀ [r, out]
 * (ΔWᵀ = s⁻¹ a b, and the scaling does not change singular vectors): with a = Q R (Gram-Schmidt, Q
 * orthonormal [in, r]) ΔWᵀΔW ∝ Q (R b bᵀ Rᵀ) Qᵀ, so the vector is Q w for the top eigenvector w of the
 * r x r symmetric matrix R b bᵀ Rᵀ (Jacobi rotations). Where PEFT's iteration has converged the two
 * agree up to sign, which |x · p| ignores.
 */
import type { ModuleFeed } from '../methods/feeds.js';

/** The unit top right singular vector [in] of the branch of `feed` (zeros for a zero branch). */
export function arrowPrototype(feed: ModuleFeed, inF: number, outF: number): Float64Array {
  const r = feed.rank;
  // Columns of a, orthonormalized (modified Gram-Schmidt); R is upper-triangular [r, r].
  const q = Array.from({ length: r }, (_, k) =>
    Float64Array.from({ length: inF }, (_, i) => feed.a[i * r + k]),
  );
  const rr = new Float64Array(r * r);
  for (let k = 0; k < r; k++) {
    for (let j = 0; j < k; j++) {
      const d = dot(q[j], q[k]);
      rr[j * r + k] = d;
      for (let i = 0; i < inF; i++) q[k][i] -= d * q[j][i];
    }
    const norm = Math.sqrt(dot(q[k], q[k]));
    rr[k * r + k] = norm;
    if (norm > 0) for (let i = 0; i < inF; i++) q[k][i] /= norm;
  }
  // M = R b bᵀ Rᵀ: (R b) is [r, out].
  const rb = new Float64Array(r * outF);
  for (let k = 0; k < r; k++)
    for (let j = k; j < r; j++) {
      const w = rr[k * r + j];
      if (w !== 0) for (let o = 0; o < outF; o++) rb[k * outF + o] += w * feed.b[j * outF + o];
    }
  const m = new Float64Array(r * r);
  for (let i = 0; i < r; i++)
    for (let j = i; j < r; j++) {
      let s = 0;
      for (let o = 0; o < outF; o++) s += rb[i * outF + o] * rb[j * outF + o];
      m[i * r + j] = m[j * r + i] = s;
    }
  const w = topEigenvector(m, r);
  const v = new Float64Array(inF);
  for (let k = 0; k < r; k++) for (let i = 0; i < inF; i++) v[i] += w[k] * q[k][i];
  const norm = Math.sqrt(dot(v, v));
  return norm > 0 ? v.map((x) => x / norm) : v;
}

/** The eigenvector of the largest eigenvalue of a symmetric n x n matrix (cyclic Jacobi). */
export function topEigenvector(matrix: Float64Array, n: number): Float64Array {
  const a = Float64Array.from(matrix);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) off += a[i * n + j] ** 2;
    if (off === 0 || off < 1e-30 * frobenius(a)) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p];
          const akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k];
          const aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  let best = 0;
  for (let i = 1; i < n; i++) if (a[i * n + i] > a[best * n + best]) best = i;
  return Float64Array.from({ length: n }, (_, k) => v[k * n + best]);
}

function dot(x: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * y[i];
  return s;
}

function frobenius(a: Float64Array): number {
  let s = 0;
  for (const x of a) s += x * x;
  return s;
}
