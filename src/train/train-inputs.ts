/**
 * The optimizer loop for graph inputs trained as they are (a mixture's gates, UniPELT's parts): each
 * step samples rows, runs the training graph (SFT) with the parameters fed as inputs beside fixed
 * feeds, skips a non-finite step (the parameters are kept), clips the global gradient norm and steps
 * AdamW in place. The adapter trainer (./trainer.ts) does the same for PEFT adapters, whose tensors
 * need mapping to slots first.
 *
 * `rowsPerRun: 1` runs the rows of a step one at a time and sums their losses and gradients, which is
 * the batch's loss exactly: for parts whose value depends on the whole sequence of a call (UniPELT's
 * gates average over it), a padded batch would not be what inference runs.
 */
import type * as ort from 'onnxruntime-web';
import { InvalidInputError } from '../errors.js';
import type { TrainingSession } from '../engine/training-session.js';
import { seededRandom } from '../engine/sampling.js';
import { yieldToEventLoop } from '../event-loop.js';
import { makeBatch, type TrainingRow } from './batch.js';
import { AdamW, allFinite, clipGradNorm } from './optimizer.js';

export interface InputParam {
  data: Float32Array;
  dims: number[];
}

export interface TrainInputsOptions {
  steps: number;
  /** Rows per step (default 8, or all there are). */
  batchSize?: number;
  lr?: number;
  maxGradNorm?: number;
  seed?: number;
  rowsPerRun?: 'batch' | 1;
  signal?: AbortSignal;
}

/** The SFT loss of `rows` and the gradient of every parameter, at the parameters' current values. */
export async function lossAndGradients(
  session: TrainingSession,
  rows: readonly TrainingRow[],
  fixed: Record<string, ort.Tensor>,
  params: ReadonlyMap<string, InputParam>,
  rowsPerRun: 'batch' | 1 = 'batch',
): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const { Tensor } = session.ort;
  const feeds = { ...fixed };
  for (const [name, p] of params) feeds[name] = new Tensor('float32', p.data, p.dims);
  const scored = rows.reduce((n, r) => n + r.tokens.length - r.completionStart, 0);
  const runs = rowsPerRun === 1 ? rows.map((r) => [r]) : [rows];
  let loss = 0;
  const grads = new Map([...params].map(([name, p]) => [name, new Float32Array(p.data.length)]));
  for (const run of runs) {
    const out = await session.run(makeBatch(run), feeds, {
      weights: new Float32Array(run.length).fill(1 / scored),
    });
    loss += out.loss;
    for (const [name, g] of grads) {
      const part = out.grads.get(name);
      if (!part)
        throw new InvalidInputError('train', name, 'the training graph has no gradient for this input');
      for (let i = 0; i < g.length; i++) g[i] += part[i];
    }
  }
  return { loss, grads };
}

export async function trainInputs(
  session: TrainingSession,
  rows: readonly TrainingRow[],
  fixed: Record<string, ort.Tensor>,
  params: ReadonlyMap<string, InputParam>,
  options: TrainInputsOptions,
  onProgress?: (p: { step: number; steps: number; loss: number }) => void,
): Promise<{ losses: number[]; skipped: number }> {
  const { steps } = options;
  if (!(Number.isInteger(steps) && steps >= 1))
    throw new InvalidInputError('train', 'steps', `must be an integer >= 1, got ${steps}`);
  if (rows.length === 0) throw new InvalidInputError('train', 'rows', 'no training rows');
  const optimizer = new AdamW(new Map([...params].map(([k, p]) => [k, p.data])), {
    lr: options.lr ?? 1e-2,
    weightDecay: 0,
  });
  const random = seededRandom(options.seed ?? 0);
  const batchSize = Math.min(rows.length, options.batchSize ?? 8);
  const losses: number[] = [];
  let skipped = 0;
  for (let step = 0; step < steps; step++) {
    await yieldToEventLoop();
    if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
    const picked = Array.from({ length: batchSize }, () => rows[Math.floor(random() * rows.length)]);
    const { loss, grads } = await lossAndGradients(session, picked, fixed, params, options.rowsPerRun);
    losses.push(loss);
    if (allFinite(grads, loss)) {
      clipGradNorm(grads, options.maxGradNorm ?? 1);
      optimizer.step(grads);
    } else skipped++;
    onProgress?.({ step: step + 1, steps, loss });
  }
  return { losses, skipped };
}
