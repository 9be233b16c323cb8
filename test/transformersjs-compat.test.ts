/**
 * An independent consumer of our model folders: transformers.js (with onnxruntime-node in Node)
 * loads a converted stories260K as a transformers.js-style folder (onnx/model.onnx, tokenizer.json)
 * and must generate the golden llama2.c text with its own tokenizer and generation loop.
 */
import { mkdtempSync, readFileSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { main } from '../src/cli.js';
import { loadModel } from '../src/load-model.js';

const work = mkdtempSync(path.join(tmpdir(), 'edge-adapters-tjs-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const golden = readFileSync(fixture('llama2c/stories260K.greedy-once-upon-a-time.txt'), 'utf8');

/** Re-lays a model folder the way transformers.js expects it: the graph under onnx/. */
function asTransformersJsFolder(src: string, dst: string): void {
  mkdirSync(path.join(dst, 'onnx'), { recursive: true });
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    writeFileSync(path.join(dst, f), readFileSync(path.join(src, f)));
  }
  writeFileSync(path.join(dst, 'onnx', 'model.onnx'), readFileSync(path.join(src, 'model.onnx')));
}

describe('transformers.js runs our converted folders', () => {
  for (const profile of ['standard', 'contrib']) {
    it(`${profile} profile: greedy generation is the golden llama2.c text`, async () => {
      const ours = path.join(work, `ours-${profile}`);
      await main(
        [
          'convert',
          'llama2c',
          fixture('llama2c/stories260K.bin'),
          fixture('llama2c/tok512.bin'),
          '--out',
          ours,
          '--profile',
          profile,
        ],
        () => {},
      );
      const name = `stories-${profile}`;
      asTransformersJsFolder(ours, path.join(work, name));

      const { AutoModelForCausalLM, AutoTokenizer, env } = await import('@huggingface/transformers');
      env.localModelPath = `${work}/`;
      env.allowRemoteModels = false;
      const tokenizer = await AutoTokenizer.from_pretrained(name);
      const model = await AutoModelForCausalLM.from_pretrained(name, { device: 'cpu', dtype: 'fp32' });
      const inputs = tokenizer('Once upon a time');
      expect((inputs.input_ids.tolist() as bigint[][])[0].map(Number)).toEqual([1, 403, 407, 261, 378]);
      const out = (await model.generate({ ...inputs, max_new_tokens: 252, do_sample: false })) as {
        tolist(): bigint[][];
      };
      const text = tokenizer.decode(out.tolist()[0], { skip_special_tokens: true });
      expect(`${text}\n`).toBe(golden);
      await model.dispose();

      // ...and our loader accepts the transformers.js layout too.
      const again = await loadModel(path.join(work, name));
      expect(again.tokenizer.decode([1, 403, 407, 261, 378])).toBe('Once upon a time');
      const { tokens } = await again.complete('Once upon a time', { maxTokens: 20 });
      expect(golden.startsWith(again.tokenizer.decode([1, 403, 407, 261, 378, ...tokens]))).toBe(true);
      await again.release();
    });
  }
});
