/**
 * P-tuning (PEFT peft_type "P_TUNING"). Its prompt encoder (an MLP or LSTM over the virtual token
 * embeddings) only runs while training: utils/save_and_load.py get_peft_model_state_dict saves
 * get_prompt_embedding_to_save(), the encoder's output, as prompt_embeddings, and a model loaded for
 * inference (PeftModel.from_pretrained, is_trainable=False, so inference_mode=True) loads them into
 * prompt_encoder.embedding, which PeftModel.get_prompt returns as is. So at inference the saved
 * prompt_embeddings [num_virtual_tokens, hidden] are final: the same feeds as prompt tuning.
 */
import type { AdapterMethod } from './feeds.js';
import { promptFeeds } from './prompt-tuning.js';

export const pTuning: AdapterMethod = {
  peftType: 'P_TUNING',
  blend: 'none',
  feeds: (adapter, weight, base) => promptFeeds('P_TUNING', adapter, weight, base),
};
