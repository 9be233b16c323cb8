/**
 * `npm run demo`: the runtime on the default model, in the terminal — streamed generation, then the
 * same prompt with a PEFT prompt-tuning adapter hot-swapped in and out of the one session.
 *
 * The adapter is made the way PEFT's `prompt_tuning_init="TEXT"` initializes one: its virtual tokens
 * are the embeddings of a text, so it steers every story toward that text.
 */
import { Runtime } from '../src/runtime.js';
import { createPeftAdapter } from '../src/formats/peft-adapter.js';
import { parsePeftConfig } from '../src/formats/peft-config.js';
import { float32Entry } from '../src/formats/safetensors.js';
import { ensureDefaultModel } from './default-model.js';

const prompt = process.argv[2] ?? 'One day, they';
const steer = process.argv[3] ?? 'Tom and his dog Max went to the beach.';
const dir = await ensureDefaultModel();
const rt = await Runtime.create({ model: dir });
const show = async (label: string, input: string | number[] = prompt) => {
  process.stdout.write(`\n[${label}] ${prompt}`);
  for await (const chunk of rt.generate(input, { maxTokens: 60 })) process.stdout.write(chunk.text);
  process.stdout.write('\n');
};

await show('base model');

// The virtual tokens open the story (BOS + the text); the prompt then continues it, without a BOS of
// its own (BOS starts a new story for this model).
const ids = rt.model.tokenizer.encode(steer, { bos: true });
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
  prompt_tuning_init_text: steer,
  tokenizer_name_or_path: 'stories260K',
  base_model_name_or_path: 'stories260K',
  inference_mode: true,
});
await rt.adapters.add(
  'steer',
  createPeftAdapter(config, [['prompt_embeddings', float32Entry(embeddings, [ids.length, hidden])]]),
);
await rt.adapters.activate('steer');
await show(`prompt-tuning adapter "${steer}"`, rt.model.tokenizer.encode(` ${prompt}`));
rt.adapters.deactivate();
await show('base model again');
await rt.release();
