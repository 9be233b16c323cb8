/**
 * The training loop of an adapter on the device. Each step:
 *
 *   1. a batch of examples (./examples.ts), sampled in a seeded shuffled order, epoch after epoch;
 *   2. the adapter's current tensors fed to the training graph's slots (methods/, as at inference);
 *   3. one onnxruntime run: loss, sequence log-probs, slot gradients (./training-graph.ts);
 *   4. the gradients taken back to the PEFT tensors (./adapter-params.ts);
 *   5. a non-finite loss or gradient skips the step (the adapter is kept); otherwise the gradients are
 *      clipped to a global norm and AdamW steps with the schedule's learning rate (./optimizer.ts).
 *
 * DPO and KTO compare with a reference: the adapter as it was when train() started. Its log-probs
 * of every example are computed once, before the first step, with the scoring graph (no gradients).
 * KTO's KL estimate z is, as in TRL, the mean of policy minus reference log-probs of mismatched
 * pairs (each row's prompt with the next row's completion), clamped at 0 and not differentiated.
 */
import { InvalidInputError } from '../errors.js';
import { headDim, type LlamaConfig } from '../formats/checkpoint.js';
import type * as ort from 'onnxruntime-web';
import type { ModelProto } from '../formats/onnx/onnx_pb.js';
import type { PeftAdapter } from '../formats/peft-adapter.js';
import type { Backend } from '../engine/backend.js';
import { slotTensors } from '../engine/slot-feeds.js';
import { TrainingSession } from '../engine/training-session.js';
import { adapterFeeds } from '../methods/combine.js';
import type { BaseModel } from '../methods/feeds.js';
import { slotsFor } from '../methods/slots-for.js';
import type { SlotLayout } from '../graph/adapter-slots.js';
import { adapterWith, checkTrainable, paramsOf, tensorGradients, type Params } from './adapter-params.js';
import { makeBatch, type TrainingRow } from './batch.js';
import type { DpoPair, Examples, KtoRow } from './examples.js';
import { seededRandom } from '../engine/sampling.js';
import { yieldToEventLoop } from '../event-loop.js';
import type { Objective } from './losses.js';
import { AdamW, allFinite, clipGradNorm } from './optimizer.js';
import { learningRate, type ScheduleName } from './schedule.js';
import { buildTrainingGraph } from './training-graph.js';

export interface TrainOptions {
  method: Objective;
  /** Optimizer steps. */
  steps: number;
  /** Rows per step (sft, kto) or pairs per step (dpo). Default 8 rows / 4 pairs, or all there are. */
  batchSize?: number;
  /** Peak learning rate (default 1e-3). */
  lr?: number;
  schedule?: ScheduleName;
  warmupSteps?: number;
  /** AdamW's decoupled weight decay (default 0, transformers' TrainingArguments default). */
  weightDecay?: number;
  /** Clip the global gradient norm to this (default 1, transformers' default). */
  maxGradNorm?: number;
  /** DPO / KTO temperature β (default 0.1, TRL's). */
  beta?: number;
  /** KTO's λ_D and λ_U (default 1, 1). */
  desirableWeight?: number;
  undesirableWeight?: number;
  /** Seeds the order of examples. */
  seed?: number;
  signal?: AbortSignal;
}

export interface TrainProgress {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  /** The global gradient norm before clipping. */
  gradNorm: number;
  /** True when the step was skipped for a non-finite loss or gradient. */
  skipped: boolean;
}

export interface TrainResult {
  adapter: PeftAdapter;
  /** Loss of every step (NaN or Infinity where skipped). */
  losses: number[];
  skipped: number;
  examples: number;
}

interface Sessions {
  layout: SlotLayout;
  sessions: Map<string, TrainingSession>;
}

export class Trainer {
  private readonly cache = new Map<string, Sessions>();

  constructor(
    private readonly backend: Backend,
    /** The base decoder graph (float or quantized; a training graph dequantizes it). */
    private readonly graph: ModelProto,
    private readonly config: LlamaConfig,
    private readonly base: BaseModel,
  ) {}

  /** The training (or scoring: 'logps') session for an adapter's slots, built once and kept. */
  private async session(
    adapter: PeftAdapter,
    objective: Objective | 'logps',
  ): Promise<{ session: TrainingSession; layout: SlotLayout }> {
    const slots = slotsFor([adapter.config], this.config);
    const key = JSON.stringify(slots);
    let entry = this.cache.get(key);
    if (!entry) {
      entry = { layout: undefined as unknown as SlotLayout, sessions: new Map() };
      this.cache.set(key, entry);
    }
    let session = entry.sessions.get(objective);
    if (!session) {
      // Each session holds the base weights: keep the scoring session and one objective's.
      for (const [name, s] of [...entry.sessions]) {
        if (name !== 'logps' && objective !== 'logps') {
          await s.release();
          entry.sessions.delete(name);
        }
      }
      const type = adapter.config.peft_type;
      const past = Array.from({ length: this.config.num_hidden_layers }, (_, i) => [
        `past_key_values.${i}.key`,
        `past_key_values.${i}.value`,
      ]).flat();
      const train = {
        lora: type === 'LORA',
        scales: type === 'IA3',
        prompt: type === 'PROMPT_TUNING',
        values: type === 'PREFIX_TUNING' ? past : [],
      };
      const graph = buildTrainingGraph(this.graph, { slots, objective, train });
      session = await TrainingSession.create(this.backend, graph.model, this.config, graph.gradients);
      entry.layout = graph.layout;
      entry.sessions.set(objective, session);
    }
    return { session, layout: entry.layout };
  }

  /**
   * The slot tensors, virtual tokens and prefix of `adapter` alone; `slotsFor(rows)` adds the prefix
   * as the past keys and values of each of `rows` rows.
   */
  private feeds(adapter: PeftAdapter, layout: SlotLayout) {
    const feeds = adapterFeeds([{ adapter, weight: 1 }], this.base);
    const virtual = Array.from({ length: feeds.prompt?.tokens ?? 0 }, (_, k) => this.config.vocab_size + k);
    const slots = slotTensors(this.backend.ort, layout, feeds);
    const prefix = feeds.prefix;
    const { Tensor } = this.backend.ort;
    const slotsFor = (rows: number): Record<string, ort.Tensor> => {
      if (!prefix) return slots;
      const out = { ...slots };
      const shape = [rows, this.config.num_key_value_heads, prefix.tokens, headDim(this.config)];
      const tile = (one: Float32Array) => {
        const all = new Float32Array(rows * one.length);
        for (let b = 0; b < rows; b++) all.set(one, b * one.length);
        return new Tensor('float32', all, shape);
      };
      prefix.keys.forEach((k, i) => (out[`past_key_values.${i}.key`] = tile(k)));
      prefix.values.forEach((v, i) => (out[`past_key_values.${i}.value`] = tile(v)));
      return out;
    };
    return { slotsFor, virtual, prefix: prefix?.tokens ?? 0 };
  }

  /** Σ log p of each row's completion under `adapter`, in batches. */
  async logProbs(adapter: PeftAdapter, rows: readonly TrainingRow[], batchSize = 8): Promise<Float64Array> {
    const { session, layout } = await this.session(adapter, 'logps');
    const { slotsFor, virtual, prefix } = this.feeds(adapter, layout);
    const out = new Float64Array(rows.length);
    for (let i = 0; i < rows.length; i += batchSize) {
      const part = rows.slice(i, i + batchSize);
      const r = await session.run(makeBatch(part, virtual, prefix), slotsFor(part.length));
      out.set(r.seqLogps, i);
    }
    return out;
  }

  async train(
    start: PeftAdapter,
    examples: Examples,
    options: TrainOptions,
    onProgress?: (p: TrainProgress) => void,
  ): Promise<TrainResult> {
    checkTrainable(start.config, start.label);
    if (start.config.peft_type === 'P_TUNING')
      throw new InvalidInputError(
        `${start.label}/adapter_config.json`,
        'peft_type',
        'P-tuning trains an encoder; train PROMPT_TUNING instead',
      );
    const { method, steps } = options;
    if (!(Number.isInteger(steps) && steps >= 1))
      throw new InvalidInputError('train', 'steps', `must be an integer >= 1, got ${steps}`);
    const items: (TrainingRow | KtoRow | DpoPair)[] = examples[method];
    if (items.length === 0) {
      const needs = {
        sft: 'demonstrations, corrections or thumbs-up ratings',
        kto: 'ratings, corrections or pairs',
        dpo: 'preference pairs, corrections, or up and down ratings of one prompt',
      };
      throw new InvalidInputError(
        'train',
        'feedback',
        `no examples for ${method}: it needs ${needs[method]}`,
      );
    }
    const lr = options.lr ?? 1e-3;
    const beta = options.beta ?? 0.1;
    const maxGradNorm = options.maxGradNorm ?? 1;
    const batchSize = Math.min(items.length, options.batchSize ?? (method === 'dpo' ? 4 : 8));
    const schedule = {
      name: options.schedule ?? 'constant',
      lr,
      warmupSteps: options.warmupSteps ?? 0,
      totalSteps: steps,
    };
    learningRate(0, schedule); // validates the schedule before any work

    const { session, layout } = await this.session(start, method);
    const { virtual, prefix } = this.feeds(start, layout);
    const rowsOf = (item: TrainingRow | KtoRow | DpoPair): TrainingRow[] =>
      'chosen' in item ? [item.chosen, item.rejected] : [item];
    // The reference: log-probs under the adapter as it was at the start.
    const reference = method === 'sft' ? undefined : await this.logProbs(start, items.flatMap(rowsOf));
    const refOf = (index: number) =>
      method === 'dpo' ? [reference![2 * index], reference![2 * index + 1]] : [reference![index]];

    const params: Params = paramsOf(start);
    const optimizer = new AdamW(params, { lr, weightDecay: options.weightDecay ?? 0 });
    const order = shuffled(items.length, seededRandom(options.seed ?? 0));
    let cursor = 0;
    const losses: number[] = [];
    let skipped = 0;
    for (let step = 0; step < steps; step++) {
      // onnxruntime-web's wasm runs resolve without giving the event loop a turn: let pending
      // messages in (a generation request, an abort) before each step.
      await yieldToEventLoop();
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('aborted');
      const picked: number[] = [];
      while (picked.length < batchSize) {
        if (cursor === order.length) {
          order.splice(
            0,
            order.length,
            ...shuffled(items.length, seededRandom((options.seed ?? 0) + step + 1)),
          );
          cursor = 0;
        }
        picked.push(order[cursor++]);
      }
      const adapter = adapterWith(start, params);
      const { slotsFor } = this.feeds(adapter, layout);
      let rows: TrainingRow[];
      const extra: Record<string, Float32Array | number> = {};
      if (method === 'dpo') {
        const pairs = picked.map((i) => items[i] as DpoPair);
        rows = [...pairs.map((p) => p.chosen), ...pairs.map((p) => p.rejected)];
        const refs = picked.map(refOf);
        extra.ref_logps = Float32Array.from([...refs.map((r) => r[0]), ...refs.map((r) => r[1])]);
        extra.beta = beta;
        extra.weights = new Float32Array(pairs.length).fill(1 / pairs.length);
      } else if (method === 'kto') {
        const kto = picked.map((i) => items[i] as KtoRow);
        rows = kto;
        extra.ref_logps = Float32Array.from(picked.map((i) => refOf(i)[0]));
        extra.beta = beta;
        extra.sign = Float32Array.from(kto, (r) => (r.desirable ? 1 : -1));
        extra.weights = Float32Array.from(
          kto,
          (r) =>
            (r.desirable ? (options.desirableWeight ?? 1) : (options.undesirableWeight ?? 1)) / kto.length,
        );
        extra.kl = await this.klEstimate(start, adapter, kto);
      } else {
        rows = picked.map((i) => items[i] as TrainingRow);
        const scored = rows.reduce((n, r) => n + r.tokens.length - r.completionStart, 0);
        extra.weights = new Float32Array(rows.length).fill(1 / scored);
      }
      const out = await session.run(makeBatch(rows, virtual, prefix), slotsFor(rows.length), extra);
      const grads = new Map(
        [...tensorGradients(adapter, layout, out.grads, this.config)].map(([k, g]) => [
          k,
          Float32Array.from(g),
        ]),
      );
      losses.push(out.loss);
      const finite = allFinite(grads, out.loss);
      const gradNorm = finite ? clipGradNorm(grads, maxGradNorm) : NaN;
      const rate = learningRate(step, schedule);
      if (finite) optimizer.step(grads, rate);
      else skipped++;
      onProgress?.({ step: step + 1, steps, loss: out.loss, lr: rate, gradNorm, skipped: !finite });
    }
    return { adapter: adapterWith(start, params), losses, skipped, examples: items.length };
  }

  /** KTO's z: mean(policy - reference) log-probs of mismatched pairs, clamped at 0 (TRL). */
  private async klEstimate(
    reference: PeftAdapter,
    policy: PeftAdapter,
    rows: readonly TrainingRow[],
  ): Promise<number> {
    if (rows.length < 2) return 0;
    const mismatched = rows.map((r, i) => {
      const other = rows[(i + 1) % rows.length];
      const prompt = r.tokens.slice(0, r.completionStart);
      return {
        tokens: [...prompt, ...other.tokens.slice(other.completionStart)],
        completionStart: prompt.length,
      };
    });
    const [p, q] = [await this.logProbs(policy, mismatched), await this.logProbs(reference, mismatched)];
    let sum = 0;
    for (let i = 0; i < p.length; i++) sum += p[i] - q[i];
    return Math.max(0, sum / p.length);
  }

  async release(): Promise<void> {
    for (const entry of this.cache.values()) for (const s of entry.sessions.values()) await s.release();
    this.cache.clear();
  }
}

function shuffled(n: number, random: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}
