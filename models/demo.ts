/**
 * `npm run demo`: the runtime on the default model in the terminal — a streamed story from the base,
 * then the same prompt with each of the project's task adapters hot-swapped into the one session
 * (models/default-adapters: LoRA, IA3, prompt tuning, prefix tuning), then the base again.
 *
 *   npm run demo -- "once upon a time, there was"
 */
import path from 'node:path';
import { Runtime } from '../src/runtime.js';
import { DEFAULT_MODEL_DIR } from './default-model.js';
import { ADAPTERS_DIR, demoAdapters } from '../demo/make-adapters.js';

const prompt = process.argv[2] ?? 'once upon a time';
const rt = await Runtime.create({ model: DEFAULT_MODEL_DIR });
const show = async (label: string) => {
  process.stdout.write(`\n[${label}] ${prompt}`);
  for await (const chunk of rt.generate(prompt, { maxTokens: 80, temperature: 0.8, topP: 0.95, seed: 1 }))
    process.stdout.write(chunk.text);
  process.stdout.write('\n');
};

await show('base model');
for (const { id, method } of demoAdapters()) {
  await rt.adapters.add(id, path.join(ADAPTERS_DIR, id));
  await rt.adapters.activate(id);
  await show(`${method} adapter "${id}"`);
}
rt.adapters.deactivate();
await show('base model again');
await rt.release();
