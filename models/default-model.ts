/**
 * The models the project runs without downloading anything:
 *
 *   DEFAULT_MODEL_DIR   the project's own default model (models/default, committed): a 1.8 M-parameter
 *                       Llama trained from scratch on TinyStories by models/pretrain-default.ts; the
 *                       demo and `npm run demo` run it
 *   stories260K         llama2.c's stories260K, converted on first use from the shared fixtures into
 *                       models/out/ (not committed): the tests' and benches' reference model, with its
 *                       golden llama2.c output
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { main } from '../src/cli.js';

export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('./default', import.meta.url));
export const STORIES260K_DIR = fileURLToPath(new URL('./out/stories260K', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../../shared/fixtures/llama2c/', import.meta.url));

export async function ensureStories260K(): Promise<string> {
  if (existsSync(`${STORIES260K_DIR}/model.onnx`)) return STORIES260K_DIR;
  const checkpoint = `${FIXTURES}stories260K.bin`;
  const tokenizer = `${FIXTURES}tok512.bin`;
  for (const f of [checkpoint, tokenizer]) {
    if (!existsSync(f)) throw new Error(`stories260K is converted from ${f}, which is missing`);
  }
  await main(['convert', 'llama2c', checkpoint, tokenizer, '--out', STORIES260K_DIR], () => {});
  return STORIES260K_DIR;
}
