/**
 * The float64 oracle of X-LoRA (PEFT tuners/xlora; src/mixtures/xlora.ts has the formulas and their
 * sources): a scaling pass (every expert times scaling_pass_value · global_scaling_weight: PEFT
 * passes the dummy scalings to the LoRA layers as scalings) gives each token's last hidden
 * state, the classifier turns it into scalings per LoRA module and expert, and the main pass weights
 * each expert's branch of module m by scalings[t, m, e] · global_scaling_weight. Written here apart
 * from the ONNX path: its own classifier, its own bookkeeping of which token a module call is for
 * (each module sees the tokens of a call in order, one call each).
 */
import type { Checkpoint } from '../formats/checkpoint.js';
import { loraModules, type PeftAdapter } from '../formats/peft-adapter.js';
import type { XLoraAdapter } from '../mixtures/xlora.js';
import { linearModules } from '../methods/targets.js';
import { ReferenceSession } from './llama.js';
import { applyLowRank, lowRank, type LowRank } from './peft.js';

/** A forward pass whose expert branches are weighted per token by `coefficients(module, t)`. */
class WeightedExperts extends ReferenceSession {
  private readonly branches = new Map<string, (LowRank | undefined)[]>();
  private readonly seen = new Map<string, number>();
  /** lm_head's input of every token so far: the last hidden state. */
  readonly hidden: Float64Array[] = [];

  constructor(
    ckpt: Checkpoint,
    experts: readonly PeftAdapter[],
    weight: number,
    private readonly coefficients: (module: string, t: number) => ArrayLike<number>,
  ) {
    super(ckpt);
    experts.forEach((adapter, e) => {
      for (const [module, t] of loraModules(adapter)) {
        if (!this.branches.has(module)) this.branches.set(module, new Array(experts.length).fill(undefined));
        this.branches.get(module)![e] = lowRank(adapter, t, weight);
      }
    });
  }

  protected override linear(x: Float64Array, module: string): Float64Array {
    if (module === 'lm_head') this.hidden.push(Float64Array.from(x));
    let y = super.linear(x, module);
    const branches = this.branches.get(module);
    if (!branches) return y;
    const t = this.seen.get(module) ?? 0;
    this.seen.set(module, t + 1);
    const c = this.coefficients(module, t);
    branches.forEach((b, e) => {
      if (b) y = applyLowRank(y, x, { ...b, scaling: b.scaling * c[e] });
    });
    return y;
  }
}

export class XLoraReferenceSession {
  private readonly scaling: WeightedExperts;
  private readonly main: WeightedExperts;
  /** scalings[t] per module (model order of the experts' modules), each [E]. */
  private readonly scalings: Float64Array[][] = [];
  private readonly modules: string[];

  constructor(
    ckpt: Checkpoint,
    private readonly x: XLoraAdapter,
    experts: readonly PeftAdapter[],
  ) {
    const targeted = new Set(experts.flatMap((a) => [...loraModules(a).keys()]));
    this.modules = linearModules(ckpt.config)
      .map((m) => m.module)
      .filter((m) => targeted.has(m));
    const E = experts.length;
    const pass = new Float64Array(E).fill(x.config.scaling_pass_value);
    // The scaling pass's LoRA layers get its dummy scalings, so global_scaling_weight applies there too.
    this.scaling = new WeightedExperts(ckpt, experts, x.config.global_scaling_weight, () => pass);
    const index = new Map(this.modules.map((m, i) => [m, i]));
    this.main = new WeightedExperts(ckpt, experts, x.config.global_scaling_weight, (module, t) => {
      return this.scalings[t][index.get(module) as number];
    });
  }

  forward(tokens: readonly number[]): Float64Array[] {
    const from = this.scaling.hidden.length;
    this.scaling.forward(tokens);
    for (const h of this.scaling.hidden.slice(from)) this.scalings.push(this.classify(h));
    return this.main.forward(tokens);
  }

  /** XLoraClassifier.forward and XLoraLayer.get_maybe_topk_scalings for one token. */
  private classify(h: Float64Array): Float64Array[] {
    const { config, classifier } = this.x;
    let v = h;
    classifier.layers.forEach((layer, i) => {
      const out = new Float64Array(layer.out);
      for (let o = 0; o < layer.out; o++) {
        let s = layer.b?.[o] ?? 0;
        for (let j = 0; j < layer.in; j++) s += layer.w[o * layer.in + j] * v[j];
        out[o] = classifier.relu && i < classifier.layers.length - 1 ? Math.max(0, s) : s;
      }
      v = out;
    });
    const E = config.layerwise_scalings ? v.length / this.modules.length : v.length;
    return this.modules.map((_, m) => {
      let s = config.layerwise_scalings ? v.slice(m * E, (m + 1) * E) : v.slice();
      if (config.enable_softmax) {
        const z = s.map((a) => Math.exp(a / config.softmax_temperature));
        const sum = z.reduce((a, b) => a + b, 0);
        s = z.map((a) => a / sum);
      }
      if (config.top_k_lora !== null) {
        const order = [...s.keys()].sort((a, b) => s[b] - s[a]);
        const kept = new Set(order.slice(0, config.top_k_lora));
        s = s.map((a, e) => (kept.has(e) ? a : 0));
      }
      return s;
    });
  }
}
