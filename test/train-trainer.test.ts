/**
 * The training loop on stories260K: first-step losses against their closed forms (DPO starts at
 * ln 2 and KTO at 1/2 because the policy is its own reference; SFT at the reference model's token
 * mean NLL), learning (the loss falls), the NaN guard, last-k-layer adapters, and feedback events
 * turned into examples.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import { buildLlamaDecoder } from '../src/graph/llama.js';
import { loadBackend } from '../src/engine/backend.js';
import { checkpointBase } from '../src/methods/feeds.js';
import { loraModules, adapterTensor } from '../src/formats/peft-adapter.js';
import { referenceLogits } from '../src/reference/llama.js';
import { Trainer } from '../src/train/trainer.js';
import { initLora } from '../src/train/init-lora.js';
import { trainingExamples, type Examples } from '../src/train/examples.js';
import { adapterWith, paramsOf } from '../src/train/adapter-params.js';
import type { FeedbackEvent } from '../src/train/feedback.js';
import { InvalidInputError } from '../src/errors.js';
import {
  loadAdapter,
  makeIa3Adapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
} from './helpers/peft-fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')));
const tokenizer = Llama2cTokenizer.parse(bytes(fixture('llama2c/tok512.bin')), 512);
const prompt = 'Once upon a time';
const stories = [
  ', there was a little girl named Lily. She loved to play outside.',
  ', there was a boy named Tom. He had a big red ball.',
  ', a cat named Tom saw a bird in the tree.',
  ', there was a little dog. The dog liked to run in the park.',
];
const events: FeedbackEvent[] = [
  { prompt, completion: stories[0], correction: stories[0].replaceAll('Lily', 'Tom').replace('girl', 'boy') },
  { prompt, completion: stories[1], rating: 1 },
  { prompt, completion: stories[3], rating: -1 },
  { prompt, chosen: stories[2], rejected: stories[3] },
  { prompt, completion: stories[2] },
];

describe('Trainer', () => {
  let trainer: Trainer;
  let examples: Examples;
  beforeAll(async () => {
    trainer = new Trainer(
      await loadBackend({ backend: 'wasm' }),
      buildLlamaDecoder(ckpt),
      ckpt.config,
      checkpointBase(ckpt),
    );
    examples = trainingExamples(events, tokenizer);
  });

  it('turns each kind of feedback into the examples of each objective', () => {
    expect(examples.sft).toHaveLength(4); // correction, +1, chosen, demonstration
    expect(examples.kto.map((r) => r.desirable)).toEqual([true, false, true, false, true, false, true]);
    // correction, pair, and the +1 / -1 of the same prompt.
    expect(examples.dpo).toHaveLength(3);
    const promptIds = tokenizer.encode(prompt, { bos: true });
    for (const r of [...examples.sft, ...examples.kto]) {
      expect(r.tokens.slice(0, r.completionStart)).toEqual(promptIds.slice(0, r.completionStart));
      expect(r.completionStart).toBeGreaterThanOrEqual(promptIds.length - 1);
    }
    const text = tokenizer.decode(examples.sft[0].tokens.slice(examples.sft[0].completionStart));
    expect(text).toContain('named Tom');
  });

  it('starts at the closed-form losses: SFT the base NLL, DPO ln 2, KTO 1/2', async () => {
    const start = initLora(ckpt.config, { rank: 4, targets: ['q_proj', 'v_proj'], seed: 3 });
    const losses: Record<string, number> = {};
    for (const method of ['sft', 'dpo', 'kto'] as const) {
      const r = await trainer.train(start, examples, { method, steps: 1, batchSize: 2, lr: 0 });
      losses[method] = r.losses[0];
    }
    expect(losses.dpo).toBeCloseTo(Math.LN2, 6);
    expect(losses.kto).toBeCloseTo(0.5, 6);
    // SFT of one step over the first two rows in its seeded order: the float64 reference's token mean NLL.
    const nll = (row: { tokens: readonly number[]; completionStart: number }) => {
      const logits = referenceLogits(ckpt, row.tokens);
      let s = 0;
      for (let j = row.completionStart; j < row.tokens.length; j++) {
        const l = logits[j - 1];
        const max = Math.max(...l);
        s -= l[row.tokens[j]] - (max + Math.log(l.reduce((a, v) => a + Math.exp(v - max), 0)));
      }
      return s;
    };
    const all = examples.sft.map((r) => ({ nll: nll(r), n: r.tokens.length - r.completionStart }));
    // Which two rows came first depends on the seeded shuffle; one of the pairs must match.
    const candidates = all.flatMap((a, i) => all.slice(i + 1).map((b) => (a.nll + b.nll) / (a.n + b.n)));
    expect(Math.min(...candidates.map((c) => Math.abs(c - losses.sft)))).toBeLessThan(1e-5);
  });

  it('learns: the SFT and DPO losses fall over a few steps', async () => {
    const start = initLora(ckpt.config, { rank: 4, targets: 'all-linear', seed: 3 });
    const sft = await trainer.train(start, examples, { method: 'sft', steps: 12, batchSize: 4, lr: 5e-3 });
    expect(sft.losses[11]).toBeLessThan(0.8 * sft.losses[0]);
    const dpo = await trainer.train(start, examples, { method: 'dpo', steps: 12, batchSize: 3, lr: 5e-3 });
    expect(dpo.losses[11]).toBeLessThan(0.8 * Math.LN2);
    expect(dpo.skipped).toBe(0);
  });

  it('trains IA3 vectors, prompt-tuning embeddings and prefix-tuning keys and values too', async () => {
    const ia3 = loadAdapter(makeIa3Adapter({ targets: ['k_proj', 'v_proj', 'down_proj'], scale: 0.1 }));
    const prompt = loadAdapter(makePromptTuningAdapter({ numVirtualTokens: 4, scale: 0.5 }));
    const prefix = loadAdapter(makePrefixTuningAdapter({ numVirtualTokens: 4, scale: 0.5 }));
    for (const start of [ia3, prompt, prefix]) {
      const r = await trainer.train(start, examples, { method: 'sft', steps: 12, batchSize: 4, lr: 2e-2 });
      expect(r.losses[11]).toBeLessThan(0.9 * r.losses[0]);
      expect(r.adapter.config.peft_type).toBe(start.config.peft_type);
      const moved = [...paramsOf(r.adapter)].some(
        ([name, p]) => maxAbsDiff(p, paramsOf(start).get(name)!) > 1e-3,
      );
      expect(moved).toBe(true);
    }
  });

  it('trains only the last k layers of a last-layers adapter', async () => {
    const start = initLora(ckpt.config, {
      rank: 2,
      targets: ['q_proj', 'down_proj'],
      lastLayers: 2,
      seed: 1,
    });
    const modules = [...loraModules(start).keys()];
    expect(modules).toEqual([
      'model.layers.3.self_attn.q_proj',
      'model.layers.3.mlp.down_proj',
      'model.layers.4.self_attn.q_proj',
      'model.layers.4.mlp.down_proj',
    ]);
    const r = await trainer.train(start, examples, { method: 'sft', steps: 2, lr: 1e-2 });
    for (const t of loraModules(r.adapter).values()) {
      expect(Math.max(...adapterTensor(r.adapter, t.b).map(Math.abs))).toBeGreaterThan(0); // B moved from 0
    }
  });

  it('skips a step whose loss or gradient is not finite and keeps the adapter', async () => {
    // A LoRA on lm_head whose B is 3e38 (finite, so a valid adapter) overflows the logits to ±Infinity:
    // the loss is NaN, every step is skipped and the adapter comes back bit for bit.
    const start = initLora(ckpt.config, { rank: 2, targets: ['lm_head'], seed: 1 });
    const params = paramsOf(start);
    params.get('base_model.model.lm_head.lora_B.weight')!.fill(3e38);
    const huge = adapterWith(start, params);
    const progress: boolean[] = [];
    const r = await trainer.train(huge, examples, { method: 'sft', steps: 3, lr: 1e-2 }, (p) =>
      progress.push(p.skipped),
    );
    expect(progress).toEqual([true, true, true]);
    expect(r.skipped).toBe(3);
    expect(r.losses.every((l) => !Number.isFinite(l))).toBe(true);
    for (const [name, p] of paramsOf(r.adapter)) expect(Array.from(p)).toEqual(Array.from(params.get(name)!));
  });

  it('refuses a method with no examples, naming what it needs', async () => {
    const start = initLora(ckpt.config, { rank: 2, seed: 1 });
    const onlyRatings = trainingExamples([{ prompt, completion: stories[1], rating: -1 }], tokenizer);
    await expect(trainer.train(start, onlyRatings, { method: 'sft', steps: 1 })).rejects.toThrow(
      InvalidInputError,
    );
    await expect(trainer.train(start, onlyRatings, { method: 'dpo', steps: 1 })).rejects.toThrow(
      /preference pairs/,
    );
  });
});
