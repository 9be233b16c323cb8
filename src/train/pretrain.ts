/**
 * Pretraining a Llama-family model from scratch with the project's own training engine: the decoder
 * built with its weights as graph inputs (../graph/llama.ts `weights: 'inputs'`), next-token
 * cross-entropy on every position (the SFT objective with every token scored), gradients of every
 * weight from the same autodiff as adapter training, AdamW.
 *
 *   init     N(0, 0.02) for the embedding and the linears, 0.02 / √(2 · layers) for the projections
 *            that write into the residual stream (o_proj, down_proj), as GPT-2 and llama2.c's
 *            train.py do; norms 1
 *   batches  random windows of seqLength + 1 tokens from the token stream, seeded
 *   AdamW    β (0.9, 0.95), weight decay on the matrices only (not the norms), global-norm clipping,
 *            cosine schedule with warmup down to minLrRatio · lr (llama2.c's recipe)
 *
 * Returns the trained checkpoint in Hugging Face layout (model folders are written from it).
 */
import { InvalidInputError } from '../errors.js';
import type { Checkpoint, Float32Tensor, LlamaConfig } from '../formats/checkpoint.js';
import { expectedShapes } from '../formats/checkpoint.js';
import { fillNormal } from '../formats/synth.js';
import type { Backend } from '../engine/backend.js';
import { TrainingSession } from '../engine/training-session.js';
import { buildLlamaDecoder, weightInputs } from '../graph/llama.js';
import { makeBatch, type TrainingRow } from './batch.js';
import { seededRandom } from '../engine/sampling.js';
import { AdamW, allFinite, clipGradNorm } from './optimizer.js';
import { learningRate } from './schedule.js';
import { buildTrainingGraph } from './training-graph.js';

export interface PretrainOptions {
  config: LlamaConfig;
  /** The training token stream (BOS / EOS at document boundaries). */
  tokens: ArrayLike<number>;
  /** Held-out tokens: the mean loss of `evalBatches` fixed windows is reported every `evalEvery` steps. */
  evalTokens?: ArrayLike<number>;
  evalEvery?: number;
  evalBatches?: number;
  seqLength: number;
  batchSize: number;
  steps: number;
  lr: number;
  warmupSteps?: number;
  /** The cosine schedule ends at this fraction of lr (default 0.1). */
  minLrRatio?: number;
  weightDecay?: number;
  maxGradNorm?: number;
  seed?: number;
  backend: Backend;
  /** Start from these weights instead of a fresh init (to continue a run). */
  init?: Checkpoint;
  onProgress?: (p: PretrainProgress) => void;
  signal?: AbortSignal;
}

export interface PretrainProgress {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  gradNorm: number;
  skipped: boolean;
  /** Training tokens per second over this step. */
  tokensPerSecond: number;
  /** Held-out loss, on the steps it is measured. */
  evalLoss?: number;
}

export interface PretrainResult {
  checkpoint: Checkpoint;
  log: PretrainProgress[];
  seconds: number;
}

/** A fresh checkpoint with GPT-2 / llama2.c-style init. */
export function initCheckpoint(config: LlamaConfig, seed = 0): Checkpoint {
  const tensors = new Map<string, Float32Tensor>();
  const residualStd = 0.02 / Math.sqrt(2 * config.num_hidden_layers);
  let k = 0;
  for (const [name, shape] of expectedShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (shape.length === 1) data.fill(1);
    else fillNormal(data, seed * 1000 + k, 0, /(o_proj|down_proj)\.weight$/.test(name) ? residualStd : 0.02);
    tensors.set(name, { shape, data });
    k++;
  }
  return { config, tensors };
}

export async function pretrain(o: PretrainOptions): Promise<PretrainResult> {
  const { config, seqLength, batchSize, steps } = o;
  for (const [field, v] of Object.entries({ seqLength, batchSize, steps })) {
    if (!(Number.isInteger(v) && v >= 1))
      throw new InvalidInputError('pretrain', field, `must be an integer >= 1, got ${v}`);
  }
  if (seqLength + 1 > config.max_position_embeddings)
    throw new InvalidInputError(
      'pretrain',
      'seqLength',
      `${seqLength} + 1 exceeds max_position_embeddings ${config.max_position_embeddings}`,
    );
  if (o.tokens.length < seqLength + 2)
    throw new InvalidInputError('pretrain', 'tokens', 'fewer tokens than one window');
  const start = o.init ?? initCheckpoint(config, o.seed ?? 0);
  const inputs = weightInputs(start);
  const graph = buildTrainingGraph(buildLlamaDecoder(start, { weights: 'inputs' }), {
    slots: false,
    objective: 'sft',
    train: { values: inputs.map((i) => i.name) },
  });
  const session = await TrainingSession.create(
    o.backend,
    graph.model,
    config,
    graph.gradients,
    'pretraining graph',
  );
  const params = new Map(inputs.map((i) => [i.name, i.data.slice()]));
  const dims = new Map(inputs.map((i) => [i.name, i.dims]));
  const decayed = new Map([...params].filter(([name]) => (dims.get(name) as number[]).length === 2));
  const kept = new Map([...params].filter(([name]) => !decayed.has(name)));
  const betas: [number, number] = [0.9, 0.95];
  const decay = new AdamW(decayed, { lr: o.lr, betas, weightDecay: o.weightDecay ?? 0.1 });
  const noDecay = new AdamW(kept, { lr: o.lr, betas, weightDecay: 0 });
  const schedule = {
    name: 'cosine' as const,
    lr: o.lr,
    warmupSteps: o.warmupSteps ?? Math.min(100, Math.floor(steps / 10)),
    totalSteps: steps,
    minLrRatio: o.minLrRatio ?? 0.1,
  };
  const random = seededRandom(o.seed ?? 0);
  const window = (stream: ArrayLike<number>, at: number): TrainingRow => ({
    tokens: Array.from({ length: seqLength + 1 }, (_, i) => stream[at + i]),
    completionStart: 1,
  });
  const feeds = () => {
    const { Tensor } = o.backend.ort;
    return Object.fromEntries(
      [...params].map(([name, p]) => [name, new Tensor('float32', p, dims.get(name))]),
    );
  };
  const weights = (n: number) => new Float32Array(n).fill(1 / (n * seqLength));
  // Held-out windows at fixed, evenly spaced places.
  const evalRows: TrainingRow[][] = [];
  if (o.evalTokens && o.evalTokens.length > seqLength + 1) {
    const spots = (o.evalBatches ?? 4) * batchSize;
    const stride = Math.floor((o.evalTokens.length - seqLength - 1) / spots);
    for (let b = 0; b < (o.evalBatches ?? 4); b++)
      evalRows.push(
        Array.from({ length: batchSize }, (_, i) =>
          window(o.evalTokens as ArrayLike<number>, (b * batchSize + i) * stride),
        ),
      );
  }
  const evaluate = async () => {
    let sum = 0;
    for (const rows of evalRows)
      sum += (await session.run(makeBatch(rows), feeds(), { weights: weights(rows.length) })).loss;
    return sum / evalRows.length;
  };

  const log: PretrainProgress[] = [];
  const t0 = performance.now();
  try {
    for (let step = 0; step < steps; step++) {
      o.signal?.throwIfAborted();
      const t = performance.now();
      const rows = Array.from({ length: batchSize }, () =>
        window(o.tokens, Math.floor(random() * (o.tokens.length - seqLength - 1))),
      );
      const out = await session.run(makeBatch(rows), feeds(), { weights: weights(batchSize) });
      const grads = new Map([...out.grads].map(([name, g]) => [name, g.slice()]));
      const finite = allFinite(grads, out.loss);
      const gradNorm = finite ? clipGradNorm(grads, o.maxGradNorm ?? 1) : NaN;
      const rate = learningRate(step, schedule);
      if (finite) {
        decay.step(new Map([...decayed.keys()].map((k) => [k, grads.get(k) as Float32Array])), rate);
        noDecay.step(new Map([...kept.keys()].map((k) => [k, grads.get(k) as Float32Array])), rate);
      }
      const p: PretrainProgress = {
        step: step + 1,
        steps,
        loss: out.loss,
        lr: rate,
        gradNorm,
        skipped: !finite,
        tokensPerSecond: (batchSize * seqLength * 1000) / (performance.now() - t),
      };
      const every = o.evalEvery ?? 0;
      if (evalRows.length && every > 0 && ((step + 1) % every === 0 || step + 1 === steps))
        p.evalLoss = await evaluate();
      log.push(p);
      o.onProgress?.(p);
    }
  } finally {
    await session.release();
  }
  return { checkpoint: checkpointOf(config, params), log, seconds: (performance.now() - t0) / 1000 };
}

/** The trained weights back in Hugging Face layout: `{module}.weight.T` [in, out] -> `{module}.weight` [out, in]. */
function checkpointOf(config: LlamaConfig, params: Map<string, Float32Array>): Checkpoint {
  const tensors = new Map<string, Float32Tensor>();
  for (const [name, shape] of expectedShapes(config)) {
    const direct = params.get(name);
    if (direct) {
      tensors.set(name, { shape, data: direct });
      continue;
    }
    const t = params.get(`${name}.T`) as Float32Array;
    const [rows, cols] = shape; // [out, in]; t is [in, out]
    const data = new Float32Array(rows * cols);
    for (let i = 0; i < cols; i++) for (let o = 0; o < rows; o++) data[o * cols + i] = t[i * rows + o];
    tensors.set(name, { shape, data });
  }
  return { config, tensors };
}
