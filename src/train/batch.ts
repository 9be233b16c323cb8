/**
 * Training rows as the training graph's inputs (./training-graph.ts). A row is a token sequence —
 * prompt then completion — and the index where the completion starts; only completion tokens are
 * scored. Rows are padded on the right to the longest: padding is never attended to by real tokens
 * (it comes after them, and its attention_mask is 0) and never scored.
 *
 * Virtual tokens (prompt tuning, P-tuning) go before every row, as at inference: they are attended
 * to, sit at positions 0..P-1, and are not scored. A prefix (prefix tuning) is P entries of the KV
 * cache before every row: attended to, and the row's positions start at P.
 */
import { InvalidInputError } from '../errors.js';
import type { BatchTensors } from '../engine/training-session.js';

export interface TrainingRow {
  tokens: readonly number[];
  /** Index in `tokens` of the first completion token (>= 1: something must come before it). */
  completionStart: number;
}

export interface Batch extends BatchTensors {
  /** Completion tokens scored per row. */
  scored: number[];
}

export function makeBatch(
  rows: readonly TrainingRow[],
  virtualTokens: readonly number[] = [],
  prefix = 0,
): Batch {
  if (rows.length === 0) throw new InvalidInputError('batch', undefined, 'no rows');
  rows.forEach((r, i) => {
    if (!(r.completionStart >= 1 && r.completionStart < r.tokens.length)) {
      throw new InvalidInputError(
        'batch',
        `[${i}].completionStart`,
        `must be in [1, ${r.tokens.length - 1}] (a prompt token first, a completion token after), got ${r.completionStart}`,
      );
    }
  });
  const v = virtualTokens.length;
  const length = v + Math.max(...rows.map((r) => r.tokens.length));
  const n = rows.length * length;
  const total = prefix + length;
  const batch: Batch = {
    size: rows.length,
    length,
    prefix,
    inputIds: new BigInt64Array(n),
    attentionMask: new BigInt64Array(rows.length * total),
    positionIds: new BigInt64Array(n),
    labels: new BigInt64Array(n),
    lossMask: new Float32Array(n),
    scored: [],
  };
  rows.forEach((row, b) => {
    const ids = [...virtualTokens, ...row.tokens];
    const base = b * length;
    for (let i = 0; i < prefix; i++) batch.attentionMask[b * total + i] = 1n;
    for (let i = 0; i < length; i++) {
      batch.positionIds[base + i] = BigInt(prefix + i);
      if (i < ids.length) {
        batch.inputIds[base + i] = BigInt(ids[i]);
        batch.attentionMask[b * total + prefix + i] = 1n;
      }
      // Position i predicts ids[i + 1]; scored when that is a completion token.
      if (i + 1 < ids.length && i + 1 >= v + row.completionStart) {
        batch.labels[base + i] = BigInt(ids[i + 1]);
        batch.lossMask[base + i] = 1;
      }
    }
    batch.scored.push(row.tokens.length - row.completionStart);
  });
  return batch;
}
