/**
 * Learned gates (src/mixtures/train-gates.ts) on stories260K with three LoRA experts: the training
 * graph's gradient with respect to the gates against central differences of the float64 mixture
 * oracle's loss (src/reference/mixtures.ts, an independent forward: float32 within 1e-7 of it, top 2
 * of 3 experts, so the top-k mask is on the path); then a few steps of training
 * that lower the loss, and the learned gates run at inference as the oracle runs them.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { buildLlamaDecoder } from '../src/graph/llama.js';
import { checkpointBase } from '../src/methods/feeds.js';
import { loadBackend } from '../src/engine/backend.js';
import { GateTrainer } from '../src/mixtures/train-gates.js';
import { MixtureReferenceSession } from '../src/reference/mixtures.js';
import { Runtime } from '../src/runtime.js';
import type { TrainingRow } from '../src/train/batch.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const tokenizer = Llama2cTokenizer.parse(bytes(fixture('llama2c/tok512.bin')), 512);
const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8');
const experts = [11, 12, 13].map((seed) =>
  loadAdapter(makeLoraAdapter({ seed, r: 4, scale: 0.1 }), `e${seed}`),
);
/** Rows of real text: BOS + 15 tokens, the last 10 scored. */
const rows: TrainingRow[] = [0, 500, 1500, 3000].map((at) => ({
  tokens: [1, ...tokenizer.encode(text.slice(at, at + 200)).slice(0, 15)],
  completionStart: 6,
}));

/** The SFT loss as the training graph defines it: -Σ logp(completion) / scored tokens, in float64. */
function referenceLoss(weights: Map<string, Float32Array>, topK: number): number {
  let sum = 0;
  let scored = 0;
  for (const row of rows) {
    const logits = new MixtureReferenceSession(ckpt, experts, {
      kind: 'gate',
      topK,
      temperature: 1,
      weights,
    }).forward(row.tokens);
    for (let j = row.completionStart; j < row.tokens.length; j++) {
      const l = logits[j - 1];
      const max = Math.max(...l);
      sum += l[row.tokens[j]] - max - Math.log(l.reduce((a, v) => a + Math.exp(v - max), 0));
      scored++;
    }
  }
  return -sum / scored;
}

describe('learned gates', () => {
  let trainer: GateTrainer;
  beforeAll(async () => {
    trainer = new GateTrainer(
      await loadBackend({ backend: 'wasm' }),
      buildLlamaDecoder(ckpt),
      ckpt.config,
      checkpointBase(ckpt),
      experts,
    );
  });
  afterAll(() => trainer.release());

  it('the gradient w.r.t. the gates equals central differences of the float64 oracle (top 2 of 3)', async () => {
    const w0 = (await trainer.train(rows, { steps: 1, lr: 0, topK: 2, batchSize: 4, seed: 3 })).weights;
    const { loss, grads } = await trainer.lossAndGradients(rows, w0, { topK: 2 });
    expect(Math.abs(loss - referenceLoss(w0, 2))).toBeLessThan(1e-4);
    const h = 1e-3;
    let largest = 0;
    for (const g of grads.values()) for (const v of g) largest = Math.max(largest, Math.abs(v));
    expect(largest).toBeGreaterThan(1e-3);
    for (const [module, index] of [
      ['model.layers.0.self_attn.q_proj', 5],
      ['model.layers.2.mlp.down_proj', 40],
      ['model.layers.4.self_attn.o_proj', 100],
      ['model.layers.3.mlp.gate_proj', 77],
    ] as const) {
      const nudged = (d: number) => {
        const w = new Map([...w0].map(([k, v]) => [k, Float32Array.from(v)]));
        w.get(module)![index] += d;
        return w;
      };
      const fd = (referenceLoss(nudged(h), 2) - referenceLoss(nudged(-h), 2)) / (2 * h);
      // measured: within 1e-7 (float32 graph) of gradients of 1e-3 to 2e-2
      expect(Math.abs(grads.get(module)![index] - fd)).toBeLessThan(1e-5 * largest);
    }
  });

  it('training lowers the loss, and the learned gates run at inference as the oracle runs them', async () => {
    const result = await trainer.train(rows, { steps: 12, lr: 3e-2, topK: 2, batchSize: 4, seed: 1 });
    expect(result.skipped).toBe(0);
    expect(result.losses.at(-1)!).toBeLessThan(result.losses[0] - 0.05);
    const rt = await Runtime.create({
      model: memorySource(
        checkpointToModelFolder(ckpt, {
          tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
        }),
        'stories260K',
      ),
      slots: { router: 'gate' },
    });
    try {
      for (const e of experts) await rt.adapters.add(e.label, e);
      const router = { kind: 'gate' as const, topK: 2, weights: result.weights };
      await rt.adapters.activateMixture({ experts: experts.map((e) => e.label), router });
      const got = await rt.logits(rows[0].tokens);
      const want = new MixtureReferenceSession(ckpt, experts, { ...router, temperature: 1 }).forward(
        rows[0].tokens,
      );
      got.forEach((row, i) => expect(maxAbsDiff(row, want[i])).toBeLessThan(1e-4));
    } finally {
      await rt.release();
    }
  });
});
