/**
 * Training-graph gradients on the real stories260K model against central finite differences of the
 * float64 PEFT reference (src/reference/peft.ts: an independent forward pass, no ONNX), for every
 * trainable kind (LoRA A and B, IA3 vectors, prompt-tuning embeddings), every objective (SFT, DPO,
 * KTO) and a quantized (int4) base.
 *
 * The training graph is checked twice. Rendered in float64 (test/helpers/float64-model.ts, with the
 * decoder's rounded constants exact), its sequence log-probs equal the reference's to 1e-9 and its
 * gradients the reference's Richardson-extrapolated central differences to 1e-8 relative (measured:
 * ≤ 3e-10), which only a correct gradient of a correct forward can. The float32 graph the runtime
 * runs is then within float32 rounding of that float64 gradient (measured ≤ 1.4e-5 of each tensor's
 * largest gradient; asserted 1e-4).
 *
 * Adapter values are multiples of 2^-12 and the nudge is 2^-14, so every nudged value is exact in
 * the adapter's float32 tensors: the differences are taken in float64 throughout.
 */
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-web';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { session } from './helpers/gradient-check.js';
import { exactDecoderConstants, toFloat64 } from './helpers/float64-model.js';
import {
  loadAdapter,
  makeIa3Adapter,
  makeLoraAdapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
} from './helpers/peft-fixtures.js';
import type { Checkpoint } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import type { PeftAdapter } from '../src/formats/peft-adapter.js';
import { buildLlamaDecoder } from '../src/graph/llama.js';
import { graphBaseModel } from '../src/graph/base-weights.js';
import { linearModules } from '../src/methods/targets.js';
import { slotsFor } from '../src/methods/slots-for.js';
import { adapterFeeds } from '../src/methods/combine.js';
import { checkpointBase } from '../src/methods/feeds.js';
import { PeftReferenceSession } from '../src/reference/peft.js';
import { slotTensors } from '../src/engine/slot-feeds.js';
import { loadBackend } from '../src/engine/backend.js';
import { TrainingSession, trainingFeeds } from '../src/engine/training-session.js';
import { makeBatch, type TrainingRow } from '../src/train/batch.js';
import { adapterWith, paramsOf, tensorGradients } from '../src/train/adapter-params.js';
import { buildTrainingGraph } from '../src/train/training-graph.js';
import type { Objective } from '../src/train/losses.js';
import type { ModelProto } from '../src/formats/onnx/onnx_pb.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')));
const tokenizer = Llama2cTokenizer.parse(bytes(fixture('llama2c/tok512.bin')), 512);
const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8');

/** Four rows of real text with different lengths and prompt/completion splits. */
const rows: TrainingRow[] = [
  [0, 12, 4],
  [300, 9, 3],
  [900, 14, 6],
  [2000, 11, 2],
].map(([at, n, c]) => ({
  tokens: tokenizer.encode(text.slice(at, at + 200), { bos: true }).slice(0, n),
  completionStart: c,
}));

const EPS = 2 ** -13;
/** The adapter with every value rounded to a multiple of 2^-12 (exact under ±EPS, ±2 EPS in float32). */
function dyadic(adapter: PeftAdapter): PeftAdapter {
  const params = paramsOf(adapter);
  for (const p of params.values()) for (let i = 0; i < p.length; i++) p[i] = Math.round(p[i] * 4096) / 4096;
  return adapterWith(adapter, params);
}

interface ObjectiveInputs {
  weights: Float32Array;
  ref?: Float64Array;
  beta?: number;
  sign?: Float32Array;
  kl?: number;
}

/** The objectives in plain float64 (./src/train/losses.ts states the same formulas). */
function lossOf(objective: Objective, s: Float64Array, x: ObjectiveInputs): number {
  const softplus = (v: number) => Math.log1p(Math.exp(v));
  const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));
  if (objective === 'sft') return -s.reduce((a, v, b) => a + x.weights[b] * v, 0);
  const ratio = Array.from(s, (v, b) => v - x.ref![b]);
  if (objective === 'dpo') {
    const p = s.length / 2;
    let l = 0;
    for (let k = 0; k < p; k++) l += x.weights[k] * softplus(-x.beta! * (ratio[k] - ratio[p + k]));
    return l;
  }
  return ratio.reduce((a, r, b) => a + x.weights[b] * (1 - sigmoid(x.beta! * x.sign![b] * (r - x.kl!))), 0);
}

/** Σ log p of each row's completion tokens under the float64 reference with `adapter`. */
function referenceSeqLogps(base: Checkpoint, adapter: PeftAdapter | undefined): Float64Array {
  return Float64Array.from(rows, (row) => {
    const ref = new PeftReferenceSession(base, adapter ? [{ adapter }] : []);
    const logits = ref.forward(row.tokens);
    let sum = 0;
    for (let j = row.completionStart; j < row.tokens.length; j++) {
      const l = logits[j - 1];
      const max = Math.max(...l);
      const lse = max + Math.log(l.reduce((a, v) => a + Math.exp(v - max), 0));
      sum += l[row.tokens[j]] - lse;
    }
    return sum;
  });
}

function objectiveInputs(objective: Objective, ref: Float64Array): ObjectiveInputs {
  if (objective === 'sft') return { weights: Float32Array.from([0.25, 0.125, 0.5, 0.0625]) };
  if (objective === 'dpo') return { weights: Float32Array.from([0.5, 0.25]), ref, beta: 0.5 };
  return {
    weights: Float32Array.from([0.25, 0.5, 0.25, 0.125]),
    ref,
    beta: 0.75,
    sign: Float32Array.from([1, -1, -1, 1]),
    kl: 0.375,
  };
}

function extraFeeds(x: ObjectiveInputs): Record<string, Float32Array | number> {
  const out: Record<string, Float32Array | number> = { weights: x.weights };
  if (x.ref) out.ref_logps = Float32Array.from(x.ref);
  if (x.beta !== undefined) out.beta = x.beta;
  if (x.sign) out.sign = x.sign;
  if (x.kl !== undefined) out.kl = x.kl;
  return out;
}

const widen = (t: ort.Tensor) =>
  t.type === 'float32' ? new ort.Tensor('float64', Float64Array.from(t.data as Float32Array), t.dims) : t;

interface Case {
  base: ModelProto;
  ckpt: Checkpoint;
  adapter: PeftAdapter;
  objective: Objective;
  train: { lora?: boolean; scales?: boolean; prompt?: boolean; values?: string[] };
}

async function gradients(c: Case) {
  const config = c.adapter.config;
  const graph = buildTrainingGraph(c.base, {
    slots: slotsFor([config], c.ckpt.config),
    objective: c.objective,
    train: c.train,
  });
  const feeds = adapterFeeds([{ adapter: c.adapter, weight: 1 }], checkpointBase(c.ckpt));
  const virtual = Array.from({ length: feeds.prompt?.tokens ?? 0 }, (_, k) => c.ckpt.config.vocab_size + k);
  const batch = makeBatch(rows, virtual, feeds.prefix?.tokens ?? 0);
  const ref = referenceSeqLogps(c.ckpt, undefined);
  const x = objectiveInputs(c.objective, ref);
  const slots = slotTensors(ort, graph.layout, feeds);
  if (feeds.prefix) {
    // The prefix as every row's past keys and values.
    const { tokens, keys, values } = feeds.prefix;
    const shape = [
      rows.length,
      c.ckpt.config.num_key_value_heads,
      tokens,
      c.ckpt.config.hidden_size / c.ckpt.config.num_attention_heads,
    ];
    const tile = (one: Float32Array) =>
      new ort.Tensor(
        'float32',
        Float32Array.from({ length: rows.length * one.length }, (_, i) => one[i % one.length]),
        shape,
      );
    keys.forEach((k, i) => (slots[`past_key_values.${i}.key`] = tile(k)));
    values.forEach((v, i) => (slots[`past_key_values.${i}.value`] = tile(v)));
  }
  // float64: the graph rendered in float64, fed the same values.
  const s64 = await session(toFloat64(graph.model, exactDecoderConstants(graph.model, c.ckpt.config)));
  const f64 = Object.fromEntries(
    Object.entries(trainingFeeds(ort, c.ckpt.config, batch, slots, extraFeeds(x))).map(([k, t]) => [
      k,
      widen(t),
    ]),
  );
  if (x.ref) f64.ref_logps = new ort.Tensor('float64', x.ref, [x.ref.length]); // not rounded to float32
  const out64 = await s64.run(f64);
  await s64.release();
  const g64 = tensorGradients(
    c.adapter,
    graph.layout,
    new Map([...graph.gradients].map(([i, o]) => [i, out64[o].data as Float64Array])),
    c.ckpt.config,
  );
  // float32: the session the trainer uses.
  const backend = await loadBackend({ backend: 'wasm' });
  const s32 = await TrainingSession.create(backend, graph.model, c.ckpt.config, graph.gradients);
  const out32 = await s32.run(batch, slots, extraFeeds(x));
  await s32.release();
  const g32 = tensorGradients(c.adapter, graph.layout, out32.grads, c.ckpt.config);
  return {
    seqLogps64: out64.seq_logps.data as Float64Array,
    loss64: Number(out64.loss.data[0]),
    loss32: out32.loss,
    g64,
    g32,
    x,
  };
}

/** Central differences of the reference loss at a few elements of each tensor. */
function finiteDifferences(c: Case, x: ObjectiveInputs, picks: Map<string, number[]>) {
  const params = paramsOf(c.adapter);
  const lossAt = () => lossOf(c.objective, referenceSeqLogps(c.ckpt, adapterWith(c.adapter, params)), x);
  const out = new Map<string, Map<number, number>>();
  for (const [name, indices] of picks) {
    const p = params.get(name)!;
    const fd = new Map<number, number>();
    for (const i of indices) {
      const v = p[i];
      const slope = (h: number) => {
        p[i] = v + h;
        const up = lossAt();
        p[i] = v - h;
        const down = lossAt();
        p[i] = v;
        return (up - down) / (2 * h);
      };
      // Richardson extrapolation of two central differences: error O(h⁴) instead of O(h²).
      fd.set(i, (4 * slope(EPS) - slope(2 * EPS)) / 3);
    }
    out.set(name, fd);
  }
  return out;
}

/** A few elements per tensor: the largest gradients (where a wrong term shows) and some others. */
function pick(g: Map<string, Float64Array>, names: string[], count = 3): Map<string, number[]> {
  return new Map(
    names.map((name) => {
      const v = g.get(name)!;
      const order = Array.from(v.keys()).sort((i, j) => Math.abs(v[j]) - Math.abs(v[i]));
      return [name, [...order.slice(0, count), order[Math.floor(order.length / 2)]]];
    }),
  );
}

async function check(c: Case, names: (adapter: PeftAdapter) => string[]) {
  const r = await gradients(c);
  // The forward: the float64 graph's sequence log-probs are the reference's.
  const ref = referenceSeqLogps(c.ckpt, c.adapter);
  for (let b = 0; b < rows.length; b++) expect(Math.abs(r.seqLogps64[b] - ref[b])).toBeLessThan(1e-9);
  expect(Math.abs(r.loss64 - lossOf(c.objective, ref, r.x))).toBeLessThan(1e-9);
  // The gradient: float64 graph vs finite differences of the reference.
  const fd = finiteDifferences(c, r.x, pick(r.g64, names(c.adapter)));
  let worst = 0;
  let scale = 0;
  for (const [name, values] of fd) {
    for (const [i, numeric] of values) {
      worst = Math.max(worst, Math.abs(r.g64.get(name)![i] - numeric) / (1e-3 + Math.abs(numeric)));
      scale = Math.max(scale, Math.abs(numeric));
    }
  }
  expect(scale).toBeGreaterThan(1e-2);
  expect(worst).toBeLessThan(1e-8);
  // float32: relative to each tensor's largest gradient (float32 sums of a few thousand terms of
  // mixed sign lose ~1e-6 of their largest term; 1e-4 leaves room and still catches any wrong term).
  let worst32 = 0;
  for (const [name, g] of r.g64) {
    const g32 = r.g32.get(name)!;
    const max = Math.max(...g.map(Math.abs));
    for (let i = 0; i < g.length; i++) worst32 = Math.max(worst32, Math.abs(g32[i] - g[i]) / max);
  }
  expect(worst32).toBeLessThan(1e-4);
  expect(Math.abs(r.loss32 - r.loss64)).toBeLessThan(1e-5 * Math.max(1, Math.abs(r.loss64)));
}

const loraNames = (a: PeftAdapter) =>
  [
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
    'base_model.model.model.layers.4.self_attn.v_proj.lora_B.weight',
    'base_model.model.model.layers.2.mlp.down_proj.lora_A.weight',
    'base_model.model.model.layers.2.mlp.down_proj.lora_B.weight',
  ].filter((n) => a.tensors.has(n));

describe('training-graph gradients vs finite differences of the float64 PEFT reference', () => {
  let base: ModelProto;
  let lora: PeftAdapter;
  beforeAll(() => {
    base = buildLlamaDecoder(ckpt);
    lora = dyadic(
      loadAdapter(
        makeLoraAdapter({ targets: ['q_proj', 'v_proj', 'down_proj'], r: 2, alpha: 4, seed: 5, scale: 0.2 }),
      ),
    );
  });

  for (const objective of ['sft', 'dpo', 'kto'] as const) {
    it(`LoRA A and B, ${objective}`, async () => {
      await check({ base, ckpt, adapter: lora, objective, train: { lora: true } }, loraNames);
    });
  }

  it('IA3 vectors on inputs and outputs (sft)', async () => {
    const ia3 = dyadic(
      loadAdapter(
        makeIa3Adapter({ targets: ['k_proj', 'down_proj'], feedforward: ['down_proj'], scale: 0.3 }),
      ),
    );
    await check({ base, ckpt, adapter: ia3, objective: 'sft', train: { scales: true, lora: false } }, () => [
      'base_model.model.model.layers.1.self_attn.k_proj.ia3_l',
      'base_model.model.model.layers.3.mlp.down_proj.ia3_l',
    ]);
  });

  it('prompt-tuning embeddings (kto)', async () => {
    const prompt = dyadic(loadAdapter(makePromptTuningAdapter({ numVirtualTokens: 3, seed: 9, scale: 0.5 })));
    await check(
      { base, ckpt, adapter: prompt, objective: 'kto', train: { prompt: true, lora: false } },
      () => ['prompt_embeddings'],
    );
  });

  it("a 'contrib' profile base (fused norms, RotaryEmbedding, GroupQueryAttention) trains as the standard one (dpo)", async () => {
    const contrib = buildLlamaDecoder(ckpt, { profile: 'contrib' });
    const run = async (graph: ModelProto) => {
      const t = buildTrainingGraph(graph, { slots: slotsFor([lora.config], ckpt.config), objective: 'dpo' });
      const backend = await loadBackend({ backend: 'wasm' });
      const s = await TrainingSession.create(backend, t.model, ckpt.config, t.gradients);
      const feeds = adapterFeeds([{ adapter: lora, weight: 1 }], checkpointBase(ckpt));
      const x = objectiveInputs('dpo', referenceSeqLogps(ckpt, undefined));
      const out = await s.run(makeBatch(rows), slotTensors(ort, t.layout, feeds), extraFeeds(x));
      await s.release();
      return { loss: out.loss, grads: tensorGradients(lora, t.layout, out.grads, ckpt.config) };
    };
    const [a, b] = [await run(contrib), await run(base)];
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-5);
    for (const [name, g] of b.grads) {
      const max = Math.max(...g.map(Math.abs));
      const diff = Math.max(...g.map((v, i) => Math.abs(v - a.grads.get(name)![i])));
      expect(diff / max).toBeLessThan(1e-4);
    }
  });

  it('prefix-tuning keys and values (sft)', async () => {
    const prefix = dyadic(loadAdapter(makePrefixTuningAdapter({ numVirtualTokens: 3, seed: 4, scale: 0.5 })));
    const past = Array.from({ length: ckpt.config.num_hidden_layers }, (_, i) => [
      `past_key_values.${i}.key`,
      `past_key_values.${i}.value`,
    ]).flat();
    await check(
      { base, ckpt, adapter: prefix, objective: 'sft', train: { lora: false, values: past } },
      () => ['prompt_embeddings'],
    );
  });

  it('LoRA on an int4 base: gradients through the quantized linears to their inputs (sft)', async () => {
    const quantized = buildLlamaDecoder(ckpt, { quantize: { format: 'int4', blockSize: 32 } });
    // The reference runs the weights the quantized ops multiply by.
    const weights = graphBaseModel(quantized, ckpt.config);
    const tensors = new Map(ckpt.tensors);
    for (const { module, in: n, out } of linearModules(ckpt.config)) {
      if (module !== 'lm_head')
        tensors.set(`${module}.weight`, { shape: [out, n], data: weights.weight(module) });
    }
    tensors.set('lm_head.weight', {
      shape: [ckpt.config.vocab_size, ckpt.config.hidden_size],
      data: weights.weight('lm_head'),
    });
    const dequantized: Checkpoint = { config: { ...ckpt.config, tie_word_embeddings: false }, tensors };
    await check(
      { base: quantized, ckpt: dequantized, adapter: lora, objective: 'sft', train: { lora: true } },
      loraNames,
    );
  });
});
