/**
 * QLoRA: `edge-adapters quantize` on a model folder (linears and embedding), then the quantized base
 * loaded with its quantized ops ('native') and dequantized at load ('dequantize'), with and without
 * a LoRA adapter, against the float64 reference run on the dequantized weights.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { main } from '../src/cli.js';
import { Runtime } from '../src/runtime.js';
import { decodeModel } from '../src/formats/onnx/index.js';
import { dequantizedFormats, quantizedFormats, type Kernels } from '../src/graph/dequantize-weights.js';
import { InvalidInputError } from '../src/errors.js';
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

/** The checkpoint the quantized graph computes: every weight as the graph dequantizes it. */
function dequantized(rt: Runtime): Checkpoint {
  const tensors = new Map(ckpt.tensors);
  const [vocab, hidden] = [ckpt.config.vocab_size, ckpt.config.hidden_size];
  tensors.set('model.embed_tokens.weight', {
    shape: [vocab, hidden],
    data: rt.adapters.baseWeight('model.embed_tokens'),
  });
  for (const { module, in: inF, out } of linearModules(ckpt.config)) {
    if (module === 'lm_head') continue; // below: quantized, it no longer equals the tied embedding
    tensors.set(`${module}.weight`, { shape: [out, inF], data: rt.adapters.baseWeight(module) });
  }
  const config = { ...ckpt.config };
  const head = rt.adapters.baseWeight('lm_head');
  if (maxAbsDiff(head, tensors.get('model.embed_tokens.weight')!.data) > 0) {
    config.tie_word_embeddings = false;
    tensors.set('lm_head.weight', { shape: [vocab, hidden], data: head });
  }
  return { config, tensors };
}

const float = path.join(work, 'float');
async function floatFolder(): Promise<string> {
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
  return float;
}

describe('quantized bases', () => {
  const formats: [string, string[]][] = [
    ['int4', ['--format', 'int4', '--block-size', '32']],
    ['nf4', ['--format', 'nf4', '--double-quant']],
    ['int8', ['--format', 'int8']],
  ];
  // 'native' without the prompt slot, so the quantized embedding runs as GatherBlockQuantized too
  // (the prompt slot patches a float Gather: with it, the embedding alone is dequantized).
  const loads: { kernels: Kernels; slots?: { prompt: false } }[] = [
    { kernels: 'native', slots: { prompt: false } },
    { kernels: 'dequantize' },
  ];
  for (const [name, args] of formats) {
    it(`${name} + embedding: logits equal the reference on the dequantized weights, native and dequantized at load, with and without a LoRA adapter`, async () => {
      const out = path.join(work, name);
      await cli(['quantize', '--model', await floatFolder(), ...args, '--embeddings', '--out', out]);
      const bytes = statSync(path.join(out, 'model.onnx')).size;
      expect(bytes).toBeLessThan(statSync(path.join(float, 'model.onnx')).size);
      const graph = decodeModel(new Uint8Array(readFileSync(path.join(out, 'model.onnx'))));
      expect(graph.graph?.node.some((n) => n.opType === 'GatherBlockQuantized')).toBe(true);

      const files = makeLoraAdapter({ seed: 9, scale: 0.1 });
      for (const load of loads) {
        const rt = await Runtime.create({ model: out, ...load });
        expect(rt.model.quantization).toEqual({ formats: [name], kernels: load.kernels });
        const deq = dequantized(rt);
        const moved = maxAbsDiff((await rt.logits(tokens))[11], referenceLogits(ckpt, tokens)[11]);
        expect(moved).toBeGreaterThan(1e-3); // quantization really changed the weights
        const base = await rt.logits(tokens);
        const want = referenceLogits(deq, tokens);
        for (let i = 0; i < tokens.length; i++) expect(maxAbsDiff(base[i], want[i])).toBeLessThan(1e-4);

        await rt.adapters.add('qlora', {
          config: files.get('adapter_config.json')!,
          weights: files.get('adapter_model.safetensors')!,
        });
        await rt.adapters.activate('qlora');
        const got = await rt.logits(tokens);
        const wantAdapter = referenceLogitsWithAdapters(deq, [{ adapter: loadAdapter(files) }], tokens);
        for (let i = 0; i < tokens.length; i++) expect(maxAbsDiff(got[i], wantAdapter[i])).toBeLessThan(1e-4);
        await rt.release();
      }
    });
  }

  it("kernels 'auto' dequantizes every format at load on wasm; 'native' none, 'dequantize' all", () => {
    expect(dequantizedFormats(undefined, 'wasm')).toEqual(['int4', 'nf4', 'int8']);
    expect(dequantizedFormats('auto', 'wasm')).toEqual(['int4', 'nf4', 'int8']);
    expect(dequantizedFormats('native', 'wasm')).toEqual([]);
    expect(dequantizedFormats('dequantize', 'node')).toEqual(['int4', 'nf4', 'int8']);
    expect(() => dequantizedFormats('fast' as Kernels, 'wasm')).toThrow(InvalidInputError);
    expect(() => dequantizedFormats('fast' as Kernels, 'wasm')).toThrow(
      /options: kernels: unknown kernels "fast"/,
    );
  });

  it('a float base reports no quantization', async () => {
    expect(
      quantizedFormats(
        decodeModel(new Uint8Array(readFileSync(path.join(await floatFolder(), 'model.onnx')))),
      ),
    ).toEqual([]);
    const rt = await Runtime.create({ model: float, slots: false });
    expect(rt.model.quantization).toBeUndefined();
    await rt.release();
  });

  it('--exclude-lm-head keeps lm_head float32 (the tied embedding, bit for bit)', async () => {
    const out = path.join(work, 'int8-float-head');
    await cli([
      'quantize',
      '--model',
      await floatFolder(),
      '--format',
      'int8',
      '--exclude-lm-head',
      '--out',
      out,
    ]);
    const rt = await Runtime.create({ model: out });
    const embedding = ckpt.tensors.get('model.embed_tokens.weight')!.data;
    expect(maxAbsDiff(rt.adapters.baseWeight('lm_head'), embedding)).toBe(0);
    expect(
      maxAbsDiff(
        rt.adapters.baseWeight('model.layers.0.mlp.up_proj'),
        ckpt.tensors.get('model.layers.0.mlp.up_proj.weight')!.data,
      ),
    ).toBeGreaterThan(0);
    await rt.release();
  });
});
