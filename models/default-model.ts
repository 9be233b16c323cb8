/**
 * The default model: llama2.c's stories260K, converted to a model folder under models/out/ on first
 * use. The checkpoint is read from the shared fixtures (../shared/fixtures/llama2c); the converted
 * folder is a build product and is not committed.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { main } from '../src/cli.js';

export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('./out/stories260K', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../../shared/fixtures/llama2c/', import.meta.url));

export async function ensureDefaultModel(): Promise<string> {
  if (existsSync(`${DEFAULT_MODEL_DIR}/model.onnx`)) return DEFAULT_MODEL_DIR;
  const checkpoint = `${FIXTURES}stories260K.bin`;
  const tokenizer = `${FIXTURES}tok512.bin`;
  for (const f of [checkpoint, tokenizer]) {
    if (!existsSync(f)) throw new Error(`the default model is converted from ${f}, which is missing`);
  }
  await main(['convert', 'llama2c', checkpoint, tokenizer, '--out', DEFAULT_MODEL_DIR], () => {});
  return DEFAULT_MODEL_DIR;
}
