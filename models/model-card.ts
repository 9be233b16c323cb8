/**
 * The default model's card (models/default/README.md) and loss curve (loss.svg): what it was trained
 * on, its size, how long it took, the losses, and its held-out perplexity next to llama2.c's
 * stories260K on the same text — per token (each with its own tokenizer) and in bits per byte (which
 * compares across tokenizers).
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Runtime } from '../src/runtime.js';
import { checkpointToModelFolder } from '../src/convert.js';
import type { LlamaConfig } from '../src/formats/checkpoint.js';
import { expectedShapes } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { memorySource } from '../src/formats/files.js';
import type { PretrainProgress } from '../src/train/pretrain.js';

const SAMPLE_PROMPT = 'once upon a time';

export interface CardInput {
  dir: string;
  config: LlamaConfig;
  log: PretrainProgress[];
  seconds: number;
  tokenizerSeconds: number;
  trainTokens: number;
  evalStories: string[];
  stories: number;
  heldOut: number;
  options: { steps: number; batchSize: number; seqLength: number; lr: number; seed: number; backend: string };
  fixturesRoot: string;
}

export interface HeldOut {
  tokens: number;
  bytes: number;
  /** exp(NLL / tokens). */
  perplexity: number;
  bitsPerByte: number;
}

/** NLL of each story after BOS (its EOS not scored), summed over `stories`. */
export async function heldOutPerplexity(rt: Runtime, stories: readonly string[]): Promise<HeldOut> {
  let nll = 0;
  let tokens = 0;
  let bytes = 0;
  const limit = rt.model.config.max_position_embeddings - 1;
  for (const story of stories) {
    const ids = rt.model.tokenizer.encode(story);
    if (ids.length >= limit) continue;
    const { sum, tokens: n } = await rt.logProb('', story);
    nll -= sum;
    tokens += n;
    bytes += new TextEncoder().encode(story).byteLength;
  }
  return { tokens, bytes, perplexity: Math.exp(nll / tokens), bitsPerByte: nll / Math.LN2 / bytes };
}

function parameterCount(config: LlamaConfig): number {
  let n = 0;
  for (const shape of expectedShapes(config).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/** A small SVG line chart of the training loss (smoothed) and the held-out losses. */
export function lossSvg(log: readonly PretrainProgress[]): string {
  const W = 640;
  const H = 320;
  const pad = 40;
  const smooth: number[] = [];
  let ema = log[0]?.loss ?? 0;
  for (const p of log) {
    ema = 0.95 * ema + 0.05 * p.loss;
    smooth.push(ema);
  }
  const evals = log.filter((p) => p.evalLoss !== undefined);
  const all = [...smooth, ...evals.map((p) => p.evalLoss as number)];
  const lo = Math.floor(Math.min(...all) * 2) / 2;
  const hi = Math.ceil(Math.max(...log.slice(Math.floor(log.length / 50)).map((p) => p.loss)) * 2) / 2;
  const x = (step: number) => pad + ((W - 2 * pad) * step) / log.length;
  const y = (loss: number) => H - pad - ((H - 2 * pad) * (Math.min(loss, hi) - lo)) / (hi - lo);
  const line = smooth.map((l, i) => `${i ? 'L' : 'M'}${x(i + 1).toFixed(1)},${y(l).toFixed(1)}`).join('');
  const dots = evals
    .map(
      (p) =>
        `<circle cx="${x(p.step).toFixed(1)}" cy="${y(p.evalLoss as number).toFixed(1)}" r="3" fill="#d62728"/>`,
    )
    .join('');
  const ticks = Array.from({ length: Math.round((hi - lo) * 2) + 1 }, (_, k) => lo + k / 2)
    .map(
      (v) =>
        `<text x="${pad - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(1)}</text><line x1="${pad}" x2="${W - pad}" y1="${y(v)}" y2="${y(v)}" stroke="#eee"/>`,
    )
    .join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>${ticks}
<path d="${line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>${dots}
<text x="${W / 2}" y="${H - 8}" text-anchor="middle">step (of ${log.length})</text>
<text x="${pad}" y="16">loss (nats/token): training, smoothed (blue); held-out (red)</text>
</svg>
`;
}

export async function writeModelCard(c: CardInput): Promise<void> {
  const size = (dir: string) => statSync(path.join(dir, 'model.onnx')).size;
  const variants: [string, string][] = [
    ['fp32', c.dir],
    ['int8', `${c.dir}-int8`],
    ['int4 (block 32)', `${c.dir}-int4`],
  ];
  const rows: string[] = [];
  for (const [name, dir] of variants) {
    const rt = await Runtime.create({ model: dir, slots: false });
    const h = await heldOutPerplexity(rt, c.evalStories);
    rows.push(
      `| ${name} | ${size(dir).toLocaleString('en-US')} | ${h.perplexity.toFixed(3)} | ${h.bitsPerByte.toFixed(4)} |`,
    );
    await rt.release();
  }
  const stories260K = parseLlama2cCheckpoint(
    new Uint8Array(readFileSync(path.join(c.fixturesRoot, 'llama2c/stories260K.bin'))),
  );
  const tokenizerBin = new Uint8Array(readFileSync(path.join(c.fixturesRoot, 'llama2c/tok512.bin')));
  const theirFolder = checkpointToModelFolder(stories260K, {
    tokenizerFiles: new Map([['tokenizer.bin', tokenizerBin]]),
  });
  const other = await Runtime.create({ model: memorySource(theirFolder, 'stories260K'), slots: false });
  const theirs = await heldOutPerplexity(other, c.evalStories);
  await other.release();
  const ours = await Runtime.create({ model: c.dir, slots: false });
  const sample = (await ours.complete(SAMPLE_PROMPT, { maxTokens: 120 })).text;
  await ours.release();

  const last = c.log[c.log.length - 1];
  const evals = c.log.filter((p) => p.evalLoss !== undefined);
  const tokensSeen = c.options.steps * c.options.batchSize * c.options.seqLength;
  const meanTps = c.log.reduce((a, p) => a + p.tokensPerSecond, 0) / c.log.length;
  writeFileSync(path.join(c.dir, 'loss.svg'), lossSvg(c.log));
  const card = `# edge-adapters default model

A Llama-family language model trained from scratch by this project's own training engine (reverse-mode
autodiff over ONNX graphs, run by onnxruntime; \`src/train/pretrain.ts\`) on TinyStories, to be the
small, fast base the demo and the tests run on the device. Reproduce with
\`npx tsx models/pretrain-default.ts\` (seeded; the numbers below are that run's).

| | |
| --- | --- |
| architecture | LlamaForCausalLM: ${c.config.num_hidden_layers} layers, hidden ${c.config.hidden_size}, ${c.config.num_attention_heads} heads (${c.config.num_key_value_heads} kv heads, head_dim ${c.config.hidden_size / c.config.num_attention_heads}), SwiGLU ${c.config.intermediate_size}, RoPE θ ${c.config.rope_theta}, tied embeddings, context ${c.config.max_position_embeddings} |
| parameters | ${parameterCount(c.config).toLocaleString('en-US')} |
| tokenizer | byte-level BPE, ${c.config.vocab_size} tokens (\`<unk>\` 0, \`<s>\` 1, \`</s>\` 2), trained by the project (\`src/formats/bpe-trainer.ts\`) in ${c.tokenizerSeconds.toFixed(1)} s; Hugging Face tokenizer.json |
| data | TinyStories (CDLA-Sharing-1.0), the 4.2 MB lower-cased sample in ../shared/fixtures/corpora: ${c.stories.toLocaleString('en-US')} stories, the last ${c.heldOut.toLocaleString('en-US')} (5%) held out; ${c.trainTokens.toLocaleString('en-US')} training tokens, each story as \`<s>\` story \`</s>\` |
| training | ${c.options.steps.toLocaleString('en-US')} steps × ${c.options.batchSize} windows of ${c.options.seqLength} tokens (${tokensSeen.toLocaleString('en-US')} tokens, ${(tokensSeen / c.trainTokens).toFixed(1)} epochs); AdamW β (0.9, 0.95), weight decay 0.1 on matrices, lr ${c.options.lr} cosine to 10% with warmup, clipping 1; seed ${c.options.seed}; onnxruntime-node (${c.options.backend}) |
| training time | ${(c.seconds / 60).toFixed(1)} min on 2 cores (${Math.round(meanTps).toLocaleString('en-US')} tokens/s) |
| final loss | training ${last.loss.toFixed(3)}, held-out ${evals.length ? (evals[evals.length - 1].evalLoss as number).toFixed(3) : '—'} nats/token |

![loss curve](loss.svg)

## Held-out perplexity

Every held-out story (${c.evalStories.length.toLocaleString('en-US')} stories, the last 5%, never trained on), scored from \`<s>\`, each token of the story (not \`</s>\`):

| model | model.onnx bytes | perplexity (per own token) | bits per byte |
| --- | --- | --- | --- |
${rows.join('\n')}
| llama2.c stories260K (fp32, 512-token vocabulary) | ${(theirFolder.get('model.onnx') as Uint8Array).byteLength.toLocaleString('en-US')} | ${theirs.perplexity.toFixed(3)} | ${theirs.bitsPerByte.toFixed(4)} |

Per-token perplexities are not comparable across tokenizers (a 2048-token vocabulary packs more text
into a token than stories260K's 512); bits per byte are. stories260K was trained on cased TinyStories
(and far more of it); this text is lower-cased, which costs it some of its score.

## A sample

Greedy, from "${SAMPLE_PROMPT}" (the model knows lower-case text only):

> ${SAMPLE_PROMPT}${sample.replace(/\n+/g, ' ')}
`;
  writeFileSync(path.join(c.dir, 'README.md'), card);
}
