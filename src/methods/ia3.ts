/**
 * IA3 (PEFT peft_type "IA3"), as PEFT runs it at inference (ia3/layer.py Linear.forward):
 *
 *   y = W (x ⊙ l)   on feedforward modules (ia3_l [1, in])
 *   y = (W x) ⊙ l   on the others          (ia3_l [out, 1])
 *
 * Slot feeds: scale_in = w · l or scale_out = w · l, no branch (rank 0). Several IA3 adapters blend
 * as IA3Model.add_weighted_adapter builds the blend: l = Σ wᵢ lᵢ (combine.ts adds the scales).
 */
import { adapterTensor, ia3Modules } from '../formats/peft-adapter.js';
import { type AdapterMethod, type ModuleFeed, wrongType } from './feeds.js';

export const ia3: AdapterMethod = {
  peftType: 'IA3',
  blend: 'sum',
  feeds(adapter, weight) {
    if (adapter.config.peft_type !== 'IA3') throw wrongType(adapter, 'IA3');
    const modules = new Map<string, ModuleFeed>();
    for (const [module, t] of ia3Modules(adapter)) {
      const scale = Float32Array.from(adapterTensor(adapter, t.tensor), (l) => weight * l);
      const feed: ModuleFeed = { rank: 0, a: new Float32Array(0), b: new Float32Array(0) };
      if (t.feedforward) feed.scaleIn = scale;
      else feed.scaleOut = scale;
      modules.set(module, feed);
    }
    return { modules };
  },
};
