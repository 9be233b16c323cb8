/**
 * Does the personal adapter learn from feedback? A simulated user who prefers stories whose hero is
 * named Tom over Lily gives about 30 feedback events on the base model's own stories (llama2.c
 * stories260K, prompt "Once upon a time", sampled at temperature 1):
 *
 *   a story with "Tom"   thumbs up  (rating +1)
 *   a story with "Lily"  an edit: the user renames Lily to Tom  (correction)
 *   other stories        no feedback
 *
 * Each method then trains a fresh personal LoRA through the runtime's own API (rt.feedback,
 * rt.train) on that log — SFT on the thumbs-up and corrected stories, KTO on all of them as
 * desirable / undesirable, DPO on the (corrected, original) pairs — and RLAIF instead asks a
 * rule-based judge (+1 Tom, -1 Lily, 0 otherwise) to rank 8 samples per logged prompt and trains DPO
 * on the best-vs-worst pairs, for 3 rounds, each sampling the policy the last one left (the first
 * round mostly learns "not Lily", the later ones "Tom rather than another name").
 *
 * Measured per method, against the base in the same run:
 *   Tom rate      the share of N sampled stories (seeds 0..N-1, 48 tokens, temperature 1) that name Tom
 *   perplexity    on held-out TinyStories text (not in any feedback), 128-token windows, computed from
 *                 the inference session's logits (not the training graph)
 * The bar: the Tom rate at least 3x the base rate (or +40 points), perplexity at most +10%.
 */
import { readFileSync } from 'node:fs';
import { Runtime } from '../../src/runtime.js';
import type { FeedbackEvent } from '../../src/train/feedback.js';
import type { TrainMethod, TrainRequest } from '../../src/personal-adapter.js';

export const PROMPT = 'Once upon a time';
export const EVENTS = 30;

/** The hyperparameters of each method (chosen on this task: docs in README "Learning from feedback"). */
export const RECIPES: Record<TrainMethod, Omit<TrainRequest, 'method'>> = {
  sft: { steps: 15, lr: 2e-3, batchSize: 8 },
  kto: { steps: 15, lr: 2e-3, batchSize: 8, beta: 0.1 },
  dpo: { steps: 10, lr: 5e-4, batchSize: 8, beta: 0.1 },
  // 3 rounds of: 8 samples for each of the 30 logged prompts, judged; DPO on best-vs-worst pairs.
  rlaif: { steps: 10, lr: 5e-4, batchSize: 8, beta: 0.1, samples: 8, rounds: 3, maxTokens: 48 },
};

/** The rule-based AI judge of the RLAIF row. */
export const nameJudge = (_prompt: string, completions: readonly string[]): number[] =>
  completions.map((c) => (/\bTom\b/.test(c) ? 1 : /\bLily\b/.test(c) ? -1 : 0));

export interface MethodResult {
  method: TrainMethod | 'base';
  events: number;
  pairs?: number;
  steps: number;
  seconds: number;
  tom: number;
  lily: number;
  perplexity: number;
  firstLoss?: number;
  lastLoss?: number;
}

/** The simulated user's feedback on the base model's stories. */
export async function simulatedFeedback(rt: Runtime, count = EVENTS): Promise<FeedbackEvent[]> {
  const events: FeedbackEvent[] = [];
  for (let seed = 1000; events.length < count; seed++) {
    const { text } = await rt.complete(PROMPT, { maxTokens: 48, temperature: 1, seed });
    if (/\bTom\b/.test(text)) events.push({ prompt: PROMPT, completion: text, rating: 1 });
    else if (/\bLily\b/.test(text))
      events.push({ prompt: PROMPT, completion: text, correction: text.replaceAll('Lily', 'Tom') });
  }
  return events;
}

/** The share of `samples` sampled stories that name Tom, and Lily. */
export async function nameRates(rt: Runtime, samples: number): Promise<{ tom: number; lily: number }> {
  let tom = 0;
  let lily = 0;
  for (let seed = 0; seed < samples; seed++) {
    const { text } = await rt.complete(PROMPT, { maxTokens: 48, temperature: 1, seed });
    if (/\bTom\b/.test(text)) tom++;
    if (/\bLily\b/.test(text)) lily++;
  }
  return { tom: tom / samples, lily: lily / samples };
}

/** Perplexity of held-out TinyStories text with the active adapter, from the inference logits. */
export async function perplexity(rt: Runtime, text: string, window = 128): Promise<number> {
  const ids = rt.model.tokenizer.encode(text, { bos: false });
  const bos = rt.model.tokenizer.bosId ?? 1;
  let nll = 0;
  let count = 0;
  for (let i = 0; i + window - 1 <= ids.length; i += window - 1) {
    const tokens = [bos, ...ids.slice(i, i + window - 1)];
    const logits = await rt.logits(tokens);
    for (let j = 1; j < tokens.length; j++) {
      const l = logits[j - 1];
      let max = -Infinity;
      for (const v of l) max = Math.max(max, v);
      let sum = 0;
      for (const v of l) sum += Math.exp(v - max);
      nll -= l[tokens[j]] - max - Math.log(sum);
      count++;
    }
  }
  return Math.exp(nll / count);
}

export function heldOutText(corpus: string): string {
  return readFileSync(corpus, 'utf8').slice(150_000, 170_000);
}

/** The whole experiment: the base row, then one row per method, each on a fresh personal adapter. */
export async function learningExperiment(o: {
  model: string;
  corpus: string;
  methods: readonly TrainMethod[];
  samples: number;
  log?: (line: string) => void;
}): Promise<MethodResult[]> {
  const held = heldOutText(o.corpus);
  const make = () =>
    Runtime.create({ model: o.model, personal: { lora: { rank: 4, targets: 'all-linear', seed: 1 } } });
  const base = await make();
  const events = await simulatedFeedback(base);
  const baseRates = await nameRates(base, o.samples);
  const results: MethodResult[] = [
    {
      method: 'base',
      events: 0,
      steps: 0,
      seconds: 0,
      ...baseRates,
      perplexity: await perplexity(base, held),
    },
  ];
  o.log?.(`base: Tom ${baseRates.tom}, Lily ${baseRates.lily}`);
  await base.release();
  for (const method of o.methods) {
    const rt = await make();
    for (const e of events) await rt.feedback(e);
    const report = await rt.train({
      method,
      seed: 0,
      ...RECIPES[method],
      ...(method === 'rlaif' ? { judge: nameJudge } : {}),
    });
    const rates = await nameRates(rt, o.samples);
    const finite = report.losses.filter(Number.isFinite);
    results.push({
      method,
      events: events.length,
      pairs: report.pairs,
      steps: report.losses.length,
      seconds: report.seconds,
      ...rates,
      perplexity: await perplexity(rt, held),
      firstLoss: finite[0],
      lastLoss: finite[finite.length - 1],
    });
    o.log?.(`${method}: Tom ${rates.tom}, Lily ${rates.lily}, ${report.seconds.toFixed(1)} s`);
    await rt.release();
  }
  return results;
}
