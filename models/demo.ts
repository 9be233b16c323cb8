/**
 * `npm run demo`: the runtime on the default model, in the terminal — streamed generation, then the
 * same prompt with a PEFT prompt-tuning adapter hot-swapped in and out of the one session.
 *
 * The adapter is made the way PEFT's `prompt_tuning_init="TEXT"` initializes one: its virtual tokens
 * are the embeddings of a text, so it steers every story toward that text.
 */
import { Runtime } from '../src/runtime.js';
import { ensureDefaultModel } from './default-model.js';
import { promptTuningFromText } from './prompt-adapter.js';

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
await rt.adapters.add('steer', promptTuningFromText(rt, steer));
await rt.adapters.activate('steer');
await show(`prompt-tuning adapter "${steer}"`, rt.model.tokenizer.encode(` ${prompt}`));
rt.adapters.deactivate();
await show('base model again');
await rt.release();
