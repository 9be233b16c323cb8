/**
 * LoRA, rsLoRA and DoRA (PEFT peft_type "LORA"), as PEFT runs them at inference:
 *
 *   LoRA  y = W x + s · B A x             lora/layer.py Linear.forward
 *   DoRA  y = g ⊙ (W x + s · B A x)       lora/variants.py DoraLinearVariant.forward, lora/dora.py
 *
 * with A = lora_A.weight [r, in], B = lora_B.weight [out, r], s = lora_alpha / r (lora_alpha /
 * sqrt(r) with use_rslora; r, alpha from rank_pattern / alpha_pattern: targets.ts loraScaling) times
 * the blend weight, and g = lora_magnitude_vector / ||W + s · B A|| per output row (./dora.ts).
 *
 * Slot feeds: a = Aᵀ [in, r], b = (s · B)ᵀ [r, out]; for DoRA scale_out = g and b's columns times g,
 * so that y = g ⊙ W x + (x · a) · b. LoRA on the embedding (lora_embedding_A / _B) has no slot yet:
 * combine.ts refuses it before any method runs.
 */
import { IncompatibleAdapterError, ModelFormatError } from '../errors.js';
import { type PeftAdapter, WEIGHTS_FILE, adapterTensor, loraModules } from '../formats/peft-adapter.js';
import { type LowRankDims, doraScale } from './dora.js';
import { type AdapterMethod, type ModuleFeed, wrongType } from './feeds.js';
import { loraScaling } from './targets.js';

/**
 * The feed of one low-rank branch: a = lora_Aᵀ, b[k, o] = scaling · e[k] · g[o] · lora_B[o, k],
 * rounded to float32 once. `e`: AdaLoRA's singular values; `g`: DoRA's scale, also fed as scale_out.
 */
export function lowRankFeed(
  loraA: Float32Array,
  loraB: Float32Array,
  { rank: r, in: n, out }: LowRankDims,
  scaling: number,
  e?: ArrayLike<number>,
  g?: Float64Array,
): ModuleFeed {
  const a = new Float32Array(n * r);
  for (let k = 0; k < r; k++) for (let i = 0; i < n; i++) a[i * r + k] = loraA[k * n + i];
  const b = new Float32Array(r * out);
  for (let k = 0; k < r; k++) {
    const sk = scaling * (e === undefined ? 1 : e[k]);
    for (let o = 0; o < out; o++) b[k * out + o] = sk * (g === undefined ? 1 : g[o]) * loraB[o * r + k];
  }
  const feed: ModuleFeed = { rank: r, a, b };
  if (g !== undefined) feed.scaleOut = Float32Array.from(g);
  return feed;
}

export const lora: AdapterMethod = {
  peftType: 'LORA',
  blend: 'sequential',
  feeds(adapter: PeftAdapter, weight, base) {
    const config = adapter.config;
    if (config.peft_type !== 'LORA') throw wrongType(adapter, 'LORA');
    const file = `${adapter.label}/${WEIGHTS_FILE}`;
    const modules = new Map<string, ModuleFeed>();
    for (const [module, t] of loraModules(adapter)) {
      if (t.kind === 'embedding') {
        throw new IncompatibleAdapterError(file, t.a, `LoRA on ${module} is not supported yet`);
      }
      const s = weight * loraScaling(config, module);
      const loraA = adapterTensor(adapter, t.a);
      const loraB = adapterTensor(adapter, t.b);
      let g: Float64Array | undefined;
      if (t.magnitude !== undefined) {
        const w = base.weight(module);
        if (w.length !== t.out * t.in) {
          throw new ModelFormatError(
            'base model',
            module,
            `weight has ${w.length} values, expected ${t.out} x ${t.in}`,
          );
        }
        const magnitude = adapterTensor(adapter, t.magnitude);
        g = doraScale(w, loraA, loraB, s, magnitude, t, { file, tensor: t.magnitude });
      }
      modules.set(module, lowRankFeed(loraA, loraB, t, s, undefined, g));
    }
    return { modules };
  },
};
