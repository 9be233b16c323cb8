/**
 * Learning works, measured: the experiment of bench/learning.ts (bench/lib/learning-experiment.ts)
 * with 100 sampled stories per row instead of 200. About 30 simulated feedback events that prefer
 * stories whose hero is Tom over Lily must raise the Tom rate of sampled stories to at least 3x the
 * base rate (or by 40 points), with held-out TinyStories perplexity at most 10% higher, for SFT, KTO,
 * DPO and RLAIF with a rule-based judge, each trained through rt.feedback / rt.train.
 */
import { describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { learningExperiment, type MethodResult } from '../bench/lib/learning-experiment.js';
import { ensureStories260K } from '../models/default-model.js';

describe('learning from feedback on stories260K', () => {
  it('SFT, KTO, DPO and RLAIF each raise the preferred behaviour 3x at most +10% perplexity', async () => {
    const results = await learningExperiment({
      model: await ensureStories260K(),
      corpus: fixture('corpora/tinystories-197KB.txt'),
      methods: ['sft', 'kto', 'dpo', 'rlaif'],
      samples: 100,
    });
    const [base, ...trained] = results;
    expect(base.tom).toBeGreaterThan(0); // the base model does name Tom sometimes (~5%)
    expect(base.tom).toBeLessThan(0.15);
    const row = (r: MethodResult) =>
      `${r.method}: Tom ${r.tom} (base ${base.tom}), perplexity ${r.perplexity} (base ${base.perplexity})`;
    for (const r of trained) {
      expect(r.tom >= 3 * base.tom || r.tom >= base.tom + 0.4, row(r)).toBe(true);
      expect(r.perplexity / base.perplexity, row(r)).toBeLessThanOrEqual(1.1);
      expect(r.lastLoss!, row(r)).toBeLessThan(r.firstLoss!);
    }
    expect(trained.map((r) => r.method)).toEqual(['sft', 'kto', 'dpo', 'rlaif']);
  }, 900_000);
});
