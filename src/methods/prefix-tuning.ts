/**
 * Prefix tuning (PEFT peft_type "PREFIX_TUNING"), as PEFT runs it at inference: PeftModel.get_prompt
 * in inference mode takes the saved prompt_embeddings [P, num_layers * 2 * token_dim] (the prefix
 * encoder's output, projection included), views them as [batch, P, num_layers * 2, heads, head_dim],
 * permutes [2, 0, 3, 1, 4] and splits pairs: layer l's keys are slice 2l, its values slice 2l + 1,
 * each [batch, heads, P, head_dim], used as past_key_values as saved (no rotation). For grouped-query
 * models utils/other.py _prepare_prompt_learning_config sets heads = num_key_value_heads and
 * token_dim = num_key_value_heads * head_dim (PEFT #1901, promptLearningDims). So key[l][h, p, j] =
 * prompt_embeddings[p, (2l) · D + h · head_dim + j], the value at (2l + 1) · D, D = token_dim.
 *
 * Slot feeds: those keys and values, per layer [num_key_value_heads, P, head_dim], as the first P
 * entries of the KV cache; the real tokens follow at positions P, P+1, ...
 */
import { InvalidInputError } from '../errors.js';
import { adapterTensor, promptLearningDims } from '../formats/peft-adapter.js';
import { headDim } from '../formats/checkpoint.js';
import { type AdapterMethod, wrongType } from './feeds.js';

export const prefixTuning: AdapterMethod = {
  peftType: 'PREFIX_TUNING',
  blend: 'none',
  feeds(adapter, weight, base) {
    const config = adapter.config;
    if (config.peft_type !== 'PREFIX_TUNING') throw wrongType(adapter, 'PREFIX_TUNING');
    if (weight !== 1) {
      throw new InvalidInputError(
        adapter.label,
        'weight',
        `PREFIX_TUNING has no blend weight (got ${weight})`,
      );
    }
    const c = base.config;
    const hd = headDim(c);
    const heads = c.num_key_value_heads;
    const { rows: p, cols, tokenDim: d, numLayers } = promptLearningDims(config, c);
    if (d !== heads * hd || numLayers !== c.num_hidden_layers) {
      throw new TypeError(
        `${adapter.label}: the prefix does not fit the base (check it against the base first)`,
      );
    }
    const e = adapterTensor(adapter, 'prompt_embeddings');
    const slab = (column: number): Float32Array => {
      const out = new Float32Array(heads * p * hd);
      for (let t = 0; t < p; t++) {
        for (let h = 0; h < heads; h++) {
          const from = t * cols + column * d + h * hd;
          out.set(e.subarray(from, from + hd), (h * p + t) * hd);
        }
      }
      return out;
    };
    const layers = Array.from({ length: numLayers }, (_, l) => l);
    return {
      modules: new Map(),
      prefix: { tokens: p, keys: layers.map((l) => slab(2 * l)), values: layers.map((l) => slab(2 * l + 1)) },
    };
  },
};
