/**
 * The float64 oracle of token-level mixtures of LoRA experts: the reference forward (./llama.ts)
 * with, on every module the experts target, PEFT's Arrow routing (lora/arrow.py
 * ArrowLoraLinearLayer.forward) or a learned gate in its place:
 *
 *   score_e = |x · p_e|  (Arrow: p_e the top right singular vector of expert e's B_e A_e)
 *           =  x · g_e   (gate: the given router column g_e)
 *   c = softmax over the top k scores / temperature, 0 elsewhere
 *   y = W x + Σ_e c_e · s_e B_e A_e x
 *
 * It shares nothing with the ONNX path but the PEFT reading (./peft.ts lowRank): the prototypes
 * come from power iteration on ΔWᵀΔW, with ΔW formed explicitly, run to convergence (PEFT runs 15
 * iterations; src/mixtures/arrow.ts solves the small eigenproblem instead).
 */
import type { Checkpoint } from '../formats/checkpoint.js';
import { loraModules, type PeftAdapter } from '../formats/peft-adapter.js';
import { ReferenceSession } from './llama.js';
import { applyLowRank, lowRank, type LowRank } from './peft.js';

export type ReferenceRouter =
  | { kind: 'arrow'; topK: number; temperature: number }
  | { kind: 'gate'; topK: number; temperature: number; weights: ReadonlyMap<string, ArrayLike<number>> };

interface RoutedModule {
  /** Per expert (undefined where the expert leaves the module alone). */
  branches: (LowRank | undefined)[];
  /** Per expert: the vector the token is scored against. */
  routers: Float64Array[];
}

export class MixtureReferenceSession extends ReferenceSession {
  private readonly routed = new Map<string, RoutedModule>();

  constructor(
    ckpt: Checkpoint,
    experts: readonly PeftAdapter[],
    private readonly router: ReferenceRouter,
  ) {
    super(ckpt);
    const e = experts.length;
    experts.forEach((adapter, x) => {
      for (const [module, t] of loraModules(adapter)) {
        let m = this.routed.get(module);
        if (!m) {
          m = { branches: new Array(e).fill(undefined), routers: [] };
          this.routed.set(module, m);
        }
        m.branches[x] = lowRank(adapter, t, 1);
      }
    });
    for (const [module, m] of this.routed) {
      const inF = this.inFeatures(module);
      for (let x = 0; x < e; x++) {
        if (router.kind === 'gate') {
          const w = router.weights.get(module);
          m.routers.push(Float64Array.from({ length: inF }, (_, i) => (w ? w[i * e + x] : 0)));
        } else {
          const b = m.branches[x];
          m.routers.push(b ? powerIterationPrototype(b, inF) : new Float64Array(inF));
        }
      }
    }
  }

  protected override linear(x: Float64Array, module: string): Float64Array {
    const y = super.linear(x, module);
    const m = this.routed.get(module);
    if (!m) return y;
    const { kind, topK, temperature } = this.router;
    const scores = m.routers.map((p) => {
      let s = 0;
      for (let i = 0; i < x.length; i++) s += x[i] * p[i];
      return kind === 'arrow' ? Math.abs(s) : s;
    });
    const kept = scores
      .map((s, e) => ({ s, e }))
      .sort((p, q) => q.s - p.s)
      .slice(0, topK);
    const max = kept[0].s / temperature;
    const weights = kept.map(({ s }) => Math.exp(s / temperature - max));
    const total = weights.reduce((a, b) => a + b, 0);
    let out = y;
    kept.forEach(({ e }, j) => {
      const b = m.branches[e];
      if (b) out = applyLowRank(out, x, { ...b, scaling: (b.scaling * weights[j]) / total });
    });
    return out;
  }

  private inFeatures(module: string): number {
    const m = this.routed.get(module) as RoutedModule;
    const b = m.branches.find((x) => x !== undefined) as LowRank;
    return b.a.length / b.r;
  }
}

/** The unit top right singular vector of ΔW = B A: power iteration on ΔWᵀΔW until it settles. */
function powerIterationPrototype({ a, b, r }: LowRank, inF: number): Float64Array {
  const outF = b.length / r;
  const dw = new Float64Array(outF * inF);
  for (let o = 0; o < outF; o++)
    for (let k = 0; k < r; k++) {
      const bok = b[o * r + k];
      for (let i = 0; i < inF; i++) dw[o * inF + i] += bok * a[k * inF + i];
    }
  let v = Float64Array.from({ length: inF }, (_, i) => 1 + ((i * 7919) % 13) / 13);
  for (let iter = 0; iter < 100000; iter++) {
    const u = new Float64Array(outF);
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += dw[o * inF + i] * v[i];
      u[o] = s;
    }
    const w = new Float64Array(inF);
    for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) w[i] += dw[o * inF + i] * u[o];
    let norm = 0;
    for (const t of w) norm += t * t;
    norm = Math.sqrt(norm);
    if (norm === 0) return w;
    let change = 0;
    for (let i = 0; i < inF; i++) {
      w[i] /= norm;
      change = Math.max(change, Math.abs(w[i] - v[i]));
    }
    v = w;
    if (change < 1e-14) break;
  }
  return v;
}
