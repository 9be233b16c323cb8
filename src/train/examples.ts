/**
 * Feedback events (./feedback.ts) as training examples for each objective:
 *
 *                     sft                      kto                                 dpo
 *   rating +1         the completion           the completion, desirable           pairs with a -1 of the same prompt
 *   rating -1         —                        the completion, undesirable         pairs with a +1 of the same prompt
 *   correction        the correction           the correction +, the completion -  (correction, completion)
 *   pair              the chosen               the chosen +, the rejected -        (chosen, rejected)
 *   demonstration     the completion           the completion, desirable           —
 *
 * Text is tokenized as prompt + completion with BOS, and the completion starts where that sequence
 * leaves the prompt's own tokens (a token may span the boundary: it then counts as completion),
 * as TRL does. Rows are cut at `maxTokens`.
 */
import type { Tokenizer } from '../formats/tokenizer.js';
import type { TrainingRow } from './batch.js';
import type { FeedbackEvent } from './feedback.js';

export interface KtoRow extends TrainingRow {
  desirable: boolean;
}

export interface DpoPair {
  chosen: TrainingRow;
  rejected: TrainingRow;
}

export interface Examples {
  sft: TrainingRow[];
  kto: KtoRow[];
  dpo: DpoPair[];
}

export function encodeRow(
  tokenizer: Tokenizer,
  prompt: string,
  completion: string,
  maxTokens = 256,
): TrainingRow | undefined {
  const promptIds = tokenizer.encode(prompt, { bos: true });
  const all = tokenizer.encode(prompt + completion, { bos: true });
  let start = 0;
  while (start < promptIds.length && start < all.length && promptIds[start] === all[start]) start++;
  // The prompt's last token may merge with the completion's first: keep at least BOS before it.
  start = Math.max(1, Math.min(start, promptIds.length));
  const tokens = all.slice(0, maxTokens);
  if (start >= tokens.length) return undefined; // nothing of the completion is left
  return { tokens, completionStart: start };
}

export function trainingExamples(
  events: readonly FeedbackEvent[],
  tokenizer: Tokenizer,
  maxTokens = 256,
): Examples {
  const row = (prompt: string, completion: string) => encodeRow(tokenizer, prompt, completion, maxTokens);
  const out: Examples = { sft: [], kto: [], dpo: [] };
  const rated = new Map<string, { good: TrainingRow[]; bad: TrainingRow[] }>();
  const push = <T>(list: T[], item: T | undefined) => item !== undefined && list.push(item);
  const kto = (r: TrainingRow | undefined, desirable: boolean) => r && out.kto.push({ ...r, desirable });
  const pair = (chosen: TrainingRow | undefined, rejected: TrainingRow | undefined) =>
    chosen && rejected && out.dpo.push({ chosen, rejected });
  for (const e of events) {
    if ('rating' in e) {
      const r = row(e.prompt, e.completion);
      if (e.rating > 0) push(out.sft, r);
      kto(r, e.rating > 0);
      if (r) {
        const entry = rated.get(e.prompt) ?? { good: [], bad: [] };
        (e.rating > 0 ? entry.good : entry.bad).push(r);
        rated.set(e.prompt, entry);
      }
    } else if ('correction' in e) {
      const good = row(e.prompt, e.correction);
      const bad = row(e.prompt, e.completion);
      push(out.sft, good);
      kto(good, true);
      kto(bad, false);
      pair(good, bad);
    } else if ('chosen' in e) {
      const good = row(e.prompt, e.chosen);
      const bad = row(e.prompt, e.rejected);
      push(out.sft, good);
      kto(good, true);
      kto(bad, false);
      pair(good, bad);
    } else {
      const r = row(e.prompt, e.completion);
      push(out.sft, r);
      kto(r, true);
    }
  }
  for (const { good, bad } of rated.values()) for (const g of good) for (const b of bad) pair(g, b);
  return out;
}
