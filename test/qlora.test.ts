/**
 * QLoRA: `edge-adapters quantize` on a model folder, then the quantized base (with and without
 * adapters) against the float64 reference run on the dequantized weights.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { main } from '../src/cli.js';
import { Runtime } from '../src/runtime.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { referenceLogits } from '../src/reference/llama.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { linearModules } from '../src/methods/targets.js';
import type { Checkpoint } from '../src/formats/checkpoint.js';
import { loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

const work = mkdtempSync(path.join(tmpdir(), 'edge-adapters-qlora-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const cli = (args: string[]) => main(args, () => {});
const ckpt = parseLlama2cCheckpoint(new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))));
const tokens = [1, 403, 407, 261, 378, 300, 301, 263, 302, 290, 281, 266];

/** The checkpoint the quantized graph computes: every linear weight as the graph dequantizes it. */
function dequantized(rt: Runtime): Checkpoint {
  const tensors = new Map(ckpt.tensors);
  for (const { module, in: inF, out } of linearModules(ckpt.config)) {
    if (module === 'lm_head') continue; // below: quantized, it no longer equals the tied embedding
    tensors.set(`${module}.weight`, { shape: [out, inF], data: rt.adapters.baseWeight(module) });
  }
  const config = { ...ckpt.config };
  const head = rt.adapters.baseWeight('lm_head');
  if (maxAbsDiff(head, ckpt.tensors.get('model.embed_tokens.weight')!.data) > 0) {
    config.tie_word_embeddings = false;
    tensors.set('lm_head.weight', { shape: [ckpt.config.vocab_size, ckpt.config.hidden_size], data: head });
  }
  return { config, tensors };
}

describe('quantized bases', () => {
  const float = path.join(work, 'float');
  const formats: [string, string[]][] = [
    ['int4', ['--format', 'int4', '--block-size', '32']],
    ['nf4', ['--format', 'nf4', '--double-quant']],
    ['int8', ['--format', 'int8']],
  ];
  for (const [name, args] of formats) {
    it(`${name}: logits equal the reference on the dequantized weights, with and without a LoRA adapter`, async () => {
      if (!statSync(float, { throwIfNoEntry: false })) {
        await cli([
          'convert',
          'llama2c',
          fixture('llama2c/stories260K.bin'),
          fixture('llama2c/tok512.bin'),
          '--out',
          float,
        ]);
      }
      const out = path.join(work, name);
      await cli(['quantize', '--model', float, ...args, '--out', out]);
      const bytes = statSync(path.join(out, 'model.onnx')).size;
      expect(bytes).toBeLessThan(statSync(path.join(float, 'model.onnx')).size);

      const rt = await Runtime.create({ model: out });
      const deq = dequantized(rt);
      const moved = maxAbsDiff((await rt.logits(tokens))[11], referenceLogits(ckpt, tokens)[11]);
      expect(moved).toBeGreaterThan(1e-3); // quantization really changed the weights
      const base = await rt.logits(tokens);
      const want = referenceLogits(deq, tokens);
      for (let i = 0; i < tokens.length; i++) expect(maxAbsDiff(base[i], want[i])).toBeLessThan(1e-4);

      const files = makeLoraAdapter({ seed: 9, scale: 0.1 });
      await rt.adapters.add('qlora', {
        config: files.get('adapter_config.json')!,
        weights: files.get('adapter_model.safetensors')!,
      });
      await rt.adapters.activate('qlora');
      const got = await rt.logits(tokens);
      const wantAdapter = referenceLogitsWithAdapters(deq, [{ adapter: loadAdapter(files) }], tokens);
      for (let i = 0; i < tokens.length; i++) expect(maxAbsDiff(got[i], wantAdapter[i])).toBeLessThan(1e-4);
      await rt.release();
    });
  }
});
