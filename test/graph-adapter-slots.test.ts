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

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const files = checkpointToModelFolder(ckpt, {
  tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
});
const lora = makeLoraAdapter({ seed: 8, scale: 0.1 });
const adapter = { config: lora.get('adapter_config.json')!, weights: lora.get('adapter_model.safetensors')! };

async function logitsAt(version: bigint): Promise<Float32Array[]> {
  const model = decodeModel(files.get('model.onnx')!);
  const opsetImport = model.opsetImport.map((o) => (o.domain === '' ? withFields(o, { version }) : o));
  const folder = new Map(files).set('model.onnx', encodeModel(withFields(model, { opsetImport })));
  const rt = await Runtime.create({ model: memorySource(folder, `opset ${version}`) });
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
