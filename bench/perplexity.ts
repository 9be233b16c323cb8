/**
 * Perplexity of stories260K on TinyStories text for each base format (fp32 / int8 / int4 / nf4):
 * how much quantization costs in quality. The text is the last 64 KB of the 197 KB TinyStories
 * sample in ../shared/fixtures (stories260K was trained on TinyStories, so this measures the gap
 * between formats, not generalization).
 *
 *   npx tsx bench/perplexity.ts
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { main as cli } from '../src/cli.js';
import { loadModel } from '../src/load-model.js';

const FIXTURES = fileURLToPath(new URL('../../shared/fixtures/', import.meta.url));
const OUT = fileURLToPath(new URL('./out/perplexity/', import.meta.url));
const quiet = () => {};

const float = `${OUT}fp32`;
if (!existsSync(`${float}/model.onnx`)) {
  await cli(
    [
      'convert',
      'llama2c',
      `${FIXTURES}llama2c/stories260K.bin`,
      `${FIXTURES}llama2c/tok512.bin`,
      '--out',
      float,
    ],
    quiet,
  );
}
const formats: [string, string[]][] = [
  ['fp32', []],
  ['int8', ['--format', 'int8']],
  ['int4 (block 32)', ['--format', 'int4', '--block-size', '32']],
  ['nf4 (block 64)', ['--format', 'nf4']],
  ['nf4 + double quant', ['--format', 'nf4', '--double-quant']],
  ['int8, embedding too', ['--format', 'int8', '--embeddings']],
  ['int4 (block 32), embedding too', ['--format', 'int4', '--block-size', '32', '--embeddings']],
  ['nf4 (block 64), embedding too (int4)', ['--format', 'nf4', '--embeddings']],
  ['int4 (block 32), lm_head float', ['--format', 'int4', '--block-size', '32', '--exclude-lm-head']],
];
const text = readFileSync(`${FIXTURES}corpora/tinystories-197KB.txt`, 'utf8');
const heldOut = text.slice(text.length - 64_000);
const window = 256;

console.log('| base format | model.onnx bytes | perplexity | vs fp32 |');
console.log('|---|---|---|---|');
let fp32 = 0;
for (const [name, args] of formats) {
  const dir = args.length ? `${OUT}${args.join('').replace(/[^a-z0-9]/gi, '')}` : float;
  if (args.length) await cli(['quantize', '--model', float, ...args, '--out', dir], quiet);
  const model = await loadModel(dir, { slots: false });
  const ids = model.tokenizer.encode(heldOut, { bos: true });
  let nll = 0;
  let count = 0;
  for (let start = 0; start + 1 < ids.length; start += window) {
    const chunk = ids.slice(start, start + window + 1);
    const logits = await model.logits(chunk.slice(0, -1));
    for (let i = 0; i < logits.length; i++) {
      const row = logits[i];
      let max = -Infinity;
      for (const v of row) max = Math.max(max, v);
      let sum = 0;
      for (const v of row) sum += Math.exp(v - max);
      nll -= row[chunk[i + 1]] - max - Math.log(sum);
      count++;
    }
  }
  await model.release();
  const ppl = Math.exp(nll / count);
  if (!args.length) fp32 = ppl;
  const size = statSync(`${dir}/model.onnx`).size;
  console.log(
    `| ${name} | ${size.toLocaleString('en-US')} | ${ppl.toFixed(3)} | ${(ppl / fp32).toFixed(4)}x |`,
  );
}
console.log(
  `\n${Math.round(heldOut.length / 1000)} KB of text, windows of ${window} tokens, onnxruntime-web wasm.`,
);
