/**
 * A PEFT prompt-tuning adapter initialized the way PEFT's `prompt_tuning_init="TEXT"` does it: its
 * virtual tokens are the embeddings of a text (BOS + the text), so it steers generation toward it.
 */
import type { Runtime } from '../src/runtime.js';
import { createPeftAdapter, type PeftAdapter } from '../src/formats/peft-adapter.js';
import { parsePeftConfig } from '../src/formats/peft-config.js';
import { float32Entry } from '../src/formats/safetensors.js';

export function promptTuningFromText(rt: Runtime, text: string, baseName = 'stories260K'): PeftAdapter {
  const ids = rt.model.tokenizer.encode(text, { bos: true });
  const hidden = rt.model.config.hidden_size;
  const table = rt.adapters.baseWeight('model.embed_tokens');
  const embeddings = new Float32Array(ids.length * hidden);
  ids.forEach((id, k) => embeddings.set(table.subarray(id * hidden, (id + 1) * hidden), k * hidden));
  const config = parsePeftConfig({
    peft_type: 'PROMPT_TUNING',
    task_type: 'CAUSAL_LM',
    num_virtual_tokens: ids.length,
    token_dim: hidden,
    num_transformer_submodules: 1,
    num_attention_heads: rt.model.config.num_attention_heads,
    num_layers: rt.model.config.num_hidden_layers,
    prompt_tuning_init: 'TEXT',
    prompt_tuning_init_text: text,
    tokenizer_name_or_path: baseName,
    base_model_name_or_path: baseName,
    inference_mode: true,
  });
  return createPeftAdapter(config, [['prompt_embeddings', float32Entry(embeddings, [ids.length, hidden])]]);
}
