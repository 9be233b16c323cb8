/**
 * Prompt tuning (PEFT peft_type "PROMPT_TUNING"), as PEFT runs it at inference: PeftModel.get_prompt
 * in inference mode returns prompt_encoder.embedding.weight, the saved prompt_embeddings
 * [num_virtual_tokens, hidden], and PeftModelForCausalLM.forward feeds cat(prompts,
 * embed_tokens(input_ids)) as inputs_embeds: the P virtual tokens come first, at positions 0..P-1.
 *
 * Slot feeds: the rows of the prompt slot (virtual token k = id vocab_size + k). No blend weight: PEFT
 * has none for prompt learning (combine.ts refuses one).
 */
import { InvalidInputError } from '../errors.js';
import { type PeftAdapter, adapterTensor, promptLearningDims } from '../formats/peft-adapter.js';
import { type PeftType, isPromptLearning } from '../formats/peft-config.js';
import { type AdapterFeeds, type AdapterMethod, type BaseModel, wrongType } from './feeds.js';

/** Prompt tuning and P-tuning alike: the saved prompt_embeddings as the virtual tokens' embeddings. */
export function promptFeeds(
  type: PeftType,
  adapter: PeftAdapter,
  weight: number,
  base: BaseModel,
): AdapterFeeds {
  const config = adapter.config;
  if (config.peft_type !== type || !isPromptLearning(config)) throw wrongType(adapter, type);
  if (weight !== 1) {
    throw new InvalidInputError(adapter.label, 'weight', `${type} has no blend weight (got ${weight})`);
  }
  const { rows, cols } = promptLearningDims(config, base.config);
  const embeddings = adapterTensor(adapter, 'prompt_embeddings');
  if (cols !== base.config.hidden_size || embeddings.length !== rows * cols) {
    throw new TypeError(
      `${adapter.label}: prompt_embeddings do not fit the base (check it against the base first)`,
    );
  }
  return { modules: new Map(), prompt: { tokens: rows, embeddings } };
}

export const promptTuning: AdapterMethod = {
  peftType: 'PROMPT_TUNING',
  blend: 'none',
  feeds: (adapter, weight, base) => promptFeeds('PROMPT_TUNING', adapter, weight, base),
};
