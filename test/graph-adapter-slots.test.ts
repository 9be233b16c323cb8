/**
 * The slot patch on graphs as exporters write them: optimum / transformers.js models commonly
 * declare ai.onnx opset 14, so the patch may only use ops as opset 14 defines them (no Shape
 * `start`, Split with its sizes as an input). The same model declared at opset 14 and at the
 * builder's 17, patched and given the same LoRA adapter, gives the same logits.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { withFields } from '../src/formats/onnx/walk.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { makeLoraAdapter } from './helpers/peft-fixtures.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { decodeModel, encodeModel } from '../src/formats/onnx/index.js';
import { Runtime } from '../src/runtime.js';
import { addAdapterSlots, type SlotOptions } from '../src/graph/adapter-slots.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const files = checkpointToModelFolder(ckpt, {
  tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
});
const lora = makeLoraAdapter({ seed: 8, scale: 0.1 });
const adapter = { config: lora.get('adapter_config.json')!, weights: lora.get('adapter_model.safetensors')! };

async function logitsAt(version: bigint, slots?: SlotOptions): Promise<Float32Array[]> {
  const model = decodeModel(files.get('model.onnx')!);
  const opsetImport = model.opsetImport.map((o) => (o.domain === '' ? withFields(o, { version }) : o));
  const folder = new Map(files).set('model.onnx', encodeModel(withFields(model, { opsetImport })));
  const rt = await Runtime.create({ model: memorySource(folder, `opset ${version}`), slots });
  try {
    await rt.adapters.add('lora', adapter);
    await rt.adapters.activate('lora');
    return await rt.logits([1, 403, 407, 261, 378, 291, 400, 46]);
  } finally {
    await rt.release();
  }
}

describe('adapter slots on an opset-14 graph', () => {
  it('load, and give the logits of the same graph at opset 17', async () => {
    const [at14, at17] = [await logitsAt(14n), await logitsAt(17n)];
    expect(at14).toHaveLength(8);
    for (let i = 0; i < 8; i++) expect(maxAbsDiff(at14[i], at17[i])).toBeLessThan(1e-5);
  });
});

describe('adapter slots with a Split fan-out limit (WebGPU binds each output as a storage buffer)', () => {
  it('every packed input becomes a tree of Splits no wider than the limit, with the same logits', async () => {
    const plain = await logitsAt(17n);
    for (const max of [2, 3]) {
      const { model } = addAdapterSlots(decodeModel(files.get('model.onnx')!), { maxSplitOutputs: max });
      const splits = model.graph!.node.filter((n) => n.opType === 'Split');
      expect(Math.max(...splits.map((n) => n.output.length))).toBeLessThanOrEqual(max);
      // each of the 5 layers' blocks of q_proj's A is made exactly once, from a chain rooted in the input
      const blocks = splits
        .flatMap((n) => n.output)
        .filter((o) => /^lora_A\.self_attn\.q_proj\/block_/.test(o));
      expect(blocks.sort()).toEqual([0, 1, 2, 3, 4].map((k) => `lora_A.self_attn.q_proj/block_${k}`));
      const tree = await logitsAt(17n, { maxSplitOutputs: max });
      for (let i = 0; i < 8; i++) expect(maxAbsDiff(tree[i], plain[i])).toBeLessThan(1e-6);
    }
    for (const bad of [1, 2.5, NaN])
      expect(() => addAdapterSlots(decodeModel(files.get('model.onnx')!), { maxSplitOutputs: bad })).toThrow(
        /slots: maxSplitOutputs: must be an integer >= 2/,
      );
    // the adapter moves the logits, so equal logits mean every block reached its module
    const base = await (async () => {
      const rt = await Runtime.create({ model: memorySource(files, 'base') });
      try {
        return await rt.logits([1, 403, 407, 261, 378, 291, 400, 46]);
      } finally {
        await rt.release();
      }
    })();
    expect(maxAbsDiff(base[7], plain[7])).toBeGreaterThan(1e-2);
  });
});
