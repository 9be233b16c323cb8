/**
 * AdaLoRA (PEFT peft_type "ADALORA") after rank allocation, as PEFT runs it at inference
 * (adalora/layer.py SVDLinear.forward):
 *
 *   y = W x + s · B (A ⊙ E) x      s = lora_alpha / (init_r + 1e-5)   (targets.ts loraScaling)
 *
 * with A = lora_A [r, in], E = lora_E [r, 1] (singular values), B = lora_B [out, r], r the rows the
 * rank_pattern mask kept, and the scaling still over init_r (adalora/model.py
 * resize_modules_by_rank_pattern keeps ranknum), times the blend weight.
 *
 * Slot feeds: a = Aᵀ [in, r], b[k, o] = s · E[k] · B[o, k]. Several AdaLoRA / LoRA adapters blend
 * as LoRA does (concatenated ranks).
 */
import { adapterTensor, loraModules } from '../formats/peft-adapter.js';
import { type AdapterMethod, type ModuleFeed, wrongType } from './feeds.js';
import { lowRankFeed } from './lora.js';
import { loraScaling } from './targets.js';

export const adalora: AdapterMethod = {
  peftType: 'ADALORA',
  blend: 'sequential',
  feeds(adapter, weight) {
    const config = adapter.config;
    if (config.peft_type !== 'ADALORA') throw wrongType(adapter, 'ADALORA');
    const modules = new Map<string, ModuleFeed>();
    for (const [module, t] of loraModules(adapter)) {
      if (t.e === undefined) throw new TypeError(`${adapter.label}: ${module} has no lora_E`);
      const s = weight * loraScaling(config, module);
      const e = adapterTensor(adapter, t.e);
      modules.set(module, lowRankFeed(adapterTensor(adapter, t.a), adapterTensor(adapter, t.b), t, s, e));
    }
    return { modules };
  },
};
