/**
 * RLAIF: preferences from an AI judge instead of a person. For each prompt, k completions are
 * sampled from the current adapter; the judge scores them (higher is better); the best and the worst
 * become a preference pair when the judge prefers one (equal scores teach nothing). DPO then trains
 * on the pairs, as on a user's own (Lee et al. 2023, "RLAIF"; the pairing is best-vs-worst, as in
 * iterative DPO recipes).
 *
 * A judge is a function — a rule, a classifier, another model — or a model's log-likelihood: see
 * `logProbJudge`.
 */
import { InvalidInputError } from '../errors.js';
import type { PreferencePair } from './feedback.js';

/** Scores of `completions` of `prompt`, one number each, higher = better. */
export type Judge = (
  prompt: string,
  completions: readonly string[],
) => readonly number[] | Promise<readonly number[]>;

export interface RlaifOptions {
  prompts: readonly string[];
  /** Completions sampled per prompt (k >= 2, default 4). */
  samples?: number;
  /** One sampled completion of `prompt` (`seed` differs per sample). */
  sample: (prompt: string, seed: number) => Promise<string>;
  judge: Judge;
  /** The first sample's seed (default 0). */
  seed?: number;
  signal?: AbortSignal;
}

export interface JudgedPrompt {
  prompt: string;
  completions: string[];
  scores: number[];
}

/** The judged samples of every prompt, and the pairs they give. */
export async function rlaifPreferences(
  o: RlaifOptions,
): Promise<{ pairs: PreferencePair[]; judged: JudgedPrompt[] }> {
  const k = o.samples ?? 4;
  if (!(Number.isInteger(k) && k >= 2))
    throw new InvalidInputError('rlaif', 'samples', `must be an integer >= 2, got ${k}`);
  if (o.prompts.length === 0) throw new InvalidInputError('rlaif', 'prompts', 'no prompts to sample');
  const pairs: PreferencePair[] = [];
  const judged: JudgedPrompt[] = [];
  let seed = o.seed ?? 0;
  for (const prompt of o.prompts) {
    const completions: string[] = [];
    for (let i = 0; i < k; i++) {
      o.signal?.throwIfAborted();
      completions.push(await o.sample(prompt, seed++));
    }
    const scores = [...(await o.judge(prompt, completions))];
    if (scores.length !== k || scores.some((s) => typeof s !== 'number' || Number.isNaN(s))) {
      throw new InvalidInputError(
        'rlaif',
        'judge',
        `must return ${k} numbers for ${k} completions, got ${JSON.stringify(scores)}`,
      );
    }
    judged.push({ prompt, completions, scores });
    const best = scores.indexOf(Math.max(...scores));
    const worst = scores.indexOf(Math.min(...scores));
    if (scores[best] > scores[worst] && completions[best] !== completions[worst]) {
      pairs.push({ prompt, chosen: completions[best], rejected: completions[worst] });
    }
  }
  return { pairs, judged };
}

/**
 * A judge that scores a completion by its mean token log-probability under a scoring model (a
 * model with a judging adapter active, say): `logProb(prompt, completion)` returns the sum and the
 * number of tokens.
 */
export function logProbJudge(
  logProb: (prompt: string, completion: string) => Promise<{ sum: number; tokens: number }>,
): Judge {
  return async (prompt, completions) => {
    const out: number[] = [];
    for (const c of completions) {
      const { sum, tokens } = await logProb(prompt, c);
      out.push(tokens > 0 ? sum / tokens : -Infinity);
    }
    return out;
  };
}
