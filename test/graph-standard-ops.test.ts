/**
 * toStandardOps: the contrib decoder rewritten into ai.onnx ops against two oracles run by
 * onnxruntime-web (wasm): the contrib graph itself (onnxruntime's kernels) and the 'standard' profile
 * graph of the same checkpoint, whose gradients (./autodiff) the rewrite's must equal too. Then each contrib op alone in a one-node graph on random inputs
 * against its kernel, GroupQueryAttention's seqlens_k masking against a float64 attention written
 * here, the structure of the result, and the refusals.
 */
import { readFileSync } from 'node:fs';
import { toBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import { expectedShapes, headDim, type Checkpoint, type LlamaConfig } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { ModelProtoSchema, type ModelProto } from '../src/formats/onnx/onnx_pb.js';
import { GraphBuilder, MS_DOMAIN, valueInfo, type AttrValue, type Dim } from '../src/graph/builder.js';
import { differentiate } from '../src/graph/autodiff/differentiate.js';
import { buildLlamaDecoder } from '../src/graph/llama.js';
import { toStandardOps } from '../src/graph/standard-ops.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

const TOL = 1e-5;

/** mulberry32: a seeded uniform stream in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A small random GQA checkpoint (4 query heads on 2 kv heads, head_dim 16), weights ~1/fan_in. */
function randomCheckpoint(seed: number): Checkpoint {
  const config: LlamaConfig = {
    model_type: 'llama',
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 64,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    hidden_act: 'silu',
  };
  const next = rng(seed);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const isNorm = name.endsWith('norm.weight');
    const amp = isNorm ? 0.5 : name.includes('embed') ? 1.5 : 2.5 * Math.sqrt(3 / shape[shape.length - 1]);
    for (let i = 0; i < data.length; i++) data[i] = (isNorm ? 1 : 0) + amp * (2 * next() - 1);
    tensors.set(name, { shape, data });
  }
  return { config, tensors };
}

const session = (model: ModelProto) => ort.InferenceSession.create(toBinary(ModelProtoSchema, model));
const int64 = (rows: number[][]) =>
  new ort.Tensor('int64', BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0].length]);

/** The ops of a graph as `domain:op`. */
const ops = (model: ModelProto) => new Set(model.graph!.node.map((n) => `${n.domain}:${n.opType}`));

function expectStandard(model: ModelProto): void {
  for (const op of ops(model)) {
    expect(op.startsWith(':')).toBe(true);
    expect(op).not.toBe(':SimplifiedLayerNormalization');
  }
  expect(model.opsetImport.map((o) => [o.domain, Number(o.version)])).toEqual([['', 17]]);
}

// ---------------------------------------------------------------------------------------------
// The decoder: toStandardOps(contrib) against the contrib and the standard graphs.

const MODELS: { name: string; load: () => Checkpoint }[] = [
  {
    name: 'stories260K',
    load: () => parseLlama2cCheckpoint(new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin')))),
  },
  { name: 'random GQA', load: () => randomCheckpoint(7) },
];

describe.each(MODELS)('$name decoder', ({ load }) => {
  const ckpt = load();
  const c = ckpt.config;
  const contrib = buildLlamaDecoder(ckpt, { profile: 'contrib' });
  const rewritten = toStandardOps(contrib);
  const graphs = Promise.all(
    [contrib, rewritten, buildLlamaDecoder(ckpt, { profile: 'standard' })].map(session),
  );
  const next = rng(11);
  const tokens = Array.from({ length: 40 }, () => Math.floor(next() * c.vocab_size));
  const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
  const names = Array.from({ length: c.num_hidden_layers }, (_, i) => [`${i}.key`, `${i}.value`]).flat();
  const emptyPast = (b: number) =>
    Object.fromEntries(
      names.map((n) => [
        `past_key_values.${n}`,
        new ort.Tensor('float32', new Float32Array(0), [b, c.num_key_value_heads, 0, headDim(c)]),
      ]),
    );
  type Outputs = ort.InferenceSession.ReturnType;
  const pastOf = (out: Outputs) =>
    Object.fromEntries(names.map((n) => [`past_key_values.${n}`, out[`present.${n}`]]));

  /** Runs the three graphs on the same feeds; returns their outputs (contrib, rewritten, standard). */
  async function runAll(feeds: Record<string, ort.Tensor>): Promise<Outputs[]> {
    const sessions = await graphs;
    return Promise.all(sessions.map((s) => s.run(feeds)));
  }

  /**
   * Checks logits and present.* of the rewrite against the contrib graph and the standard graph at
   * the elements where `real(row, position)` holds, within TOL per 10 of the output's magnitude
   * (1e-5 on logits of order 1-10; stories260K's reach 18). Returns the largest differences.
   *
   * A padded query row (left padding) has every key masked; what it computes is each graph's own
   * (onnxruntime's kernel gives zeros or uniform weights, 'standard' uniform weights over all keys,
   * the rewrite over the causal ones), and no real position reads it: those rows are left out.
   */
  function expectClose(
    [contribOut, got, standardOut]: Outputs[],
    real: (row: number, pos: number) => boolean = () => true,
  ): { contrib: number; standard: number } {
    const worst = { contrib: 0, standard: 0 };
    for (const o of ['logits', ...names.map((n) => `present.${n}`)]) {
      expect(got[o].dims).toEqual(contribOut[o].dims);
      const [a, c, s] = [got[o], contribOut[o], standardOut[o]].map((t) => t.data as Float32Array);
      // logits [b, s, vocab] and present [b, kv, t, hd]: the row and the position of element i.
      const [rows, d1, d2, d3] = got[o].dims;
      const at = (i: number) => ({
        row: Math.floor(i / (a.length / rows)),
        pos: o === 'logits' ? Math.floor(i / d2) % d1 : Math.floor(i / d3) % d2,
      });
      let [toContrib, toStandard, magnitude] = [0, 0, 0];
      for (let i = 0; i < a.length; i++) {
        const { row, pos } = at(i);
        if (!real(row, pos)) continue;
        toContrib = Math.max(toContrib, Math.abs(a[i] - c[i]));
        toStandard = Math.max(toStandard, Math.abs(a[i] - s[i]));
        magnitude = Math.max(magnitude, Math.abs(c[i]));
      }
      const tol = TOL * Math.max(1, magnitude / 10);
      expect(toContrib, `${o} against the contrib graph`).toBeLessThan(tol);
      expect(toStandard, `${o} against the standard graph`).toBeLessThan(tol);
      worst.contrib = Math.max(worst.contrib, toContrib);
      worst.standard = Math.max(worst.standard, toStandard);
    }
    return worst;
  }

  it('has only ai.onnx ops after the rewrite, and keeps every other node, weight, input and output', () => {
    expect(ops(contrib).has(`${MS_DOMAIN}:GroupQueryAttention`)).toBe(true);
    expectStandard(rewritten);
    const [before, after] = [contrib.graph!, rewritten.graph!];
    const replaced = new Set(['SimplifiedLayerNormalization', 'SkipSimplifiedLayerNormalization']);
    const kept = before.node.filter((n) => n.domain !== MS_DOMAIN && !replaced.has(n.opType));
    expect(kept.every((n) => after.node.includes(n))).toBe(true); // the same objects
    before.initializer.forEach((t, k) => expect(after.initializer[k]).toBe(t)); // weights not copied
    expect(after.input).toBe(before.input);
    expect(after.output).toBe(before.output);
    // Replacements are named after the node they replace, and write its outputs.
    const gqa = before.node.find((n) => n.opType === 'GroupQueryAttention')!;
    const parts = after.node.filter((n) => n.name.startsWith(`${gqa.name}/`));
    expect(parts.map((n) => n.opType)).toContain('Softmax');
    expect(parts.flatMap((n) => n.output)).toEqual(expect.arrayContaining(gqa.output));
    // Topological order: every input is defined before its node.
    const defined = new Set([...after.input, ...after.initializer].map((v) => v.name));
    for (const n of after.node) {
      for (const i of n.input) expect(i === '' || defined.has(i)).toBe(true);
      n.output.forEach((o) => defined.add(o));
    }
  });

  it('matches both graphs on a 24-token prefill (empty past)', async () => {
    const outs = await runAll({
      input_ids: int64([tokens.slice(0, 24)]),
      position_ids: int64([range(0, 24)]),
      attention_mask: int64([new Array<number>(24).fill(1)]),
      ...emptyPast(1),
    });
    const logits = outs[0].logits.data as Float32Array;
    expect(Math.max(...logits) - Math.min(...logits)).toBeGreaterThan(5); // not a vacuous comparison
    expectClose(outs);
  });

  it('matches both graphs on decode steps and a 5-token chunk after a non-empty past', async () => {
    const prefill = await runAll({
      input_ids: int64([tokens.slice(0, 20)]),
      position_ids: int64([range(0, 20)]),
      attention_mask: int64([new Array<number>(20).fill(1)]),
      ...emptyPast(1),
    });
    let past = pastOf(prefill[0]);
    for (const [from, to] of [
      [20, 21],
      [21, 22],
      [22, 27],
      [27, 28],
    ]) {
      // Every graph is fed the same past (the contrib graph's): each step compares one run.
      const outs = await runAll({
        input_ids: int64([tokens.slice(from, to)]),
        position_ids: int64([range(from, to)]),
        attention_mask: int64([new Array<number>(to).fill(1)]),
        ...past,
      });
      expect(outs[1]['present.0.key'].dims[2]).toBe(to);
      expectClose(outs);
      past = pastOf(outs[0]);
    }
  });

  it('differentiates (./autodiff) to the gradients of the standard graph', async () => {
    // d sum(logits) / d (layer 0's q, k, v projections and the embeddings), both graphs.
    const wrt = ['q', 'k', 'v'].map((m) => `/model/layers.0/self_attn/${m}_proj/MatMul_output_0`);
    wrt.push('/model/embed_tokens/Gather_output_0');
    const feeds = {
      input_ids: int64([tokens.slice(0, 12)]),
      position_ids: int64([range(0, 12)]),
      attention_mask: int64([new Array<number>(12).fill(1)]),
      ...emptyPast(1),
    };
    const [got, want] = await Promise.all(
      [rewritten, buildLlamaDecoder(ckpt, { profile: 'standard' })].map(async (m) =>
        (await session(differentiate(m, { loss: 'logits', wrt }))).run(feeds),
      ),
    );
    for (const w of wrt) {
      const [a, b] = [got, want].map((o) => o[`${w}_grad`].data as Float32Array);
      const magnitude = Math.max(...b.map(Math.abs));
      expect(magnitude).toBeGreaterThan(1);
      expect(maxAbsDiff(a, b)).toBeLessThan(1e-5 * magnitude);
    }
  });

  it('matches both graphs on a left-padded batch of 2 at its real positions: prefill, then decode', async () => {
    const pad = 7;
    const len = 18;
    const maskRow = [...new Array<number>(pad).fill(0), ...new Array<number>(len - pad).fill(1)];
    const mask = [new Array<number>(len).fill(1), maskRow];
    // transformers' convention: position_ids = cumsum(mask) - 1, pad positions set to 1.
    const positions = [range(0, len), maskRow.map((m, i) => (m === 0 ? 1 : i - pad))];
    const real = (row: number, pos: number) => row === 0 || pos >= pad;
    let outs = await runAll({
      input_ids: int64([tokens.slice(0, len), [...new Array<number>(pad).fill(0), ...tokens.slice(20, 31)]]),
      position_ids: int64(positions),
      attention_mask: int64(mask),
      ...emptyPast(2),
    });
    expectClose(outs, real);
    for (let k = 0; k < 3; k++) {
      mask.forEach((row) => row.push(1));
      outs = await runAll({
        input_ids: int64([[tokens[32 + k]], [tokens[36 + k]]]),
        position_ids: int64([[len + k], [len - pad + k]]),
        attention_mask: int64(mask),
        ...pastOf(outs[0]),
      });
      expectClose(outs, real);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// One op alone: its kernel against its rewrite.

interface Input {
  name: string;
  shape: number[];
  dtype?: 'float32' | 'int64' | 'int32';
  /** Fixed values (else uniform in [-1, 1)). */
  data?: number[];
  /** An initializer (weights, caches) instead of a graph input. */
  init?: boolean;
  /** Declared dims (default: the shape with a symbolic batch). */
  declared?: Dim[];
}

/** A graph of one node; `''` inputs and outputs are left out. Returns the model and its feeds. */
function oneNode(
  op: string,
  domain: string,
  inputs: (Input | '')[],
  attrs: Record<string, AttrValue>,
  outputs: string[],
  seed = 1,
): { model: ModelProto; feeds: Record<string, ort.Tensor> } {
  const g = new GraphBuilder();
  const next = rng(seed);
  const feeds: Record<string, ort.Tensor> = {};
  for (const i of inputs) {
    if (i === '') continue;
    const n = i.shape.reduce((a, b) => a * b, 1);
    const data = i.data ?? Array.from({ length: n }, () => 2 * next() - 1);
    const dtype = i.dtype ?? 'float32';
    if (i.init) {
      g.initializer(i.name, Float32Array.from(data), i.shape);
      continue;
    }
    g.input(i.name, dtype, i.declared ?? i.shape.map((d, k) => (k === 0 ? 'batch' : d)));
    const typed =
      dtype === 'float32'
        ? Float32Array.from(data)
        : dtype === 'int32'
          ? Int32Array.from(data)
          : BigInt64Array.from(data, (v) => BigInt(v));
    feeds[i.name] = new ort.Tensor(dtype, typed, i.shape);
  }
  const names = inputs.map((i) => (i === '' ? '' : i.name));
  g.node(op, names, { name: `/test/${op}`, domain, attrs, outputs });
  for (const o of outputs) if (o) g.output(o, 'float32');
  return { model: g.build(), feeds };
}

/** Runs the one-node graph and its rewrite; returns the largest difference over the outputs. */
async function kernelVsRewrite(made: {
  model: ModelProto;
  feeds: Record<string, ort.Tensor>;
}): Promise<number> {
  const rewritten = toStandardOps(made.model);
  expectStandard(rewritten);
  const [want, got] = await Promise.all(
    [made.model, rewritten].map(async (m) => (await session(m)).run(made.feeds)),
  );
  let err = 0;
  for (const [name, w] of Object.entries(want)) {
    expect(got[name].dims).toEqual(w.dims);
    const data = w.data as Float32Array;
    expect(Math.max(...data.map(Math.abs))).toBeGreaterThan(0.1); // not a vacuous comparison
    err = Math.max(err, maxAbsDiff(got[name].data as Float32Array, data));
  }
  return err;
}

const f32 = (name: string, shape: number[], init = false): Input => ({ name, shape, init });

describe('one node', () => {
  it.each([
    { axis: -1, outputs: ['y', 'inv_std_var'], scale: [16] },
    { axis: 1, outputs: ['y'], scale: [3, 16] },
  ])('SimplifiedLayerNormalization, axis $axis, outputs $outputs', async ({ axis, outputs, scale }) => {
    const attrs = { axis, epsilon: { float: 1e-3 }, stash_type: 1 };
    const made = oneNode(
      'SimplifiedLayerNormalization',
      '',
      [f32('x', [2, 3, 16]), f32('g', scale, true)],
      attrs,
      outputs,
    );
    expect(await kernelVsRewrite(made)).toBeLessThan(TOL);
  });

  it.each([
    { bias: true, outputs: ['y', '', 'inv_std_var', 'sum'] },
    { bias: true, outputs: ['y'] },
    { bias: false, outputs: ['y', '', '', 'sum'] },
  ])('SkipSimplifiedLayerNormalization, bias $bias, outputs $outputs', async ({ bias, outputs }) => {
    const inputs = [f32('x', [2, 3, 16]), f32('skip', [2, 3, 16]), f32('gamma', [16], true)];
    if (bias) inputs.push(f32('bias', [16], true));
    const made = oneNode(
      'SkipSimplifiedLayerNormalization',
      MS_DOMAIN,
      inputs,
      { epsilon: { float: 1e-5 } },
      outputs,
    );
    expect(await kernelVsRewrite(made)).toBeLessThan(TOL);
  });

  const positions = (shape: number[], data: number[]): Input => ({
    name: 'position_ids',
    shape,
    data,
    dtype: 'int64',
  });
  const caches = (half: number) => [f32('cos_cache', [16, half], true), f32('sin_cache', [16, half], true)];
  it.each([
    { case: '3-D, position_ids [b, s]', x: [2, 3, 32], pos: positions([2, 3], [5, 1, 7, 0, 2, 15]), half: 4 },
    { case: '3-D, a scalar offset', x: [2, 3, 32], pos: positions([], [9]), half: 4 },
    { case: '4-D [b, n, s, hd]', x: [2, 4, 3, 8], pos: positions([2, 3], [5, 1, 7, 0, 2, 15]), half: 4 },
    { case: '4-D, a 1-element offset', x: [2, 4, 3, 8], pos: positions([1], [3]), half: 4 },
    {
      case: '3-D, rotary_embedding_dim 4 of head_dim 8',
      x: [2, 3, 32],
      pos: positions([2, 3], [5, 1, 7, 0, 2, 15]),
      half: 2,
      attrs: { num_heads: 4, rotary_embedding_dim: 4 },
    },
  ])('RotaryEmbedding $case, interleaved 0 and 1', async ({ x, pos, half, attrs }) => {
    for (const interleaved of [0, 1]) {
      const inputs = [f32('x', x), pos, ...caches(half)];
      const made = oneNode('RotaryEmbedding', MS_DOMAIN, inputs, { interleaved, ...attrs }, ['y']);
      expect(await kernelVsRewrite(made)).toBeLessThan(TOL);
    }
  });

  /** GroupQueryAttention's inputs as the decoder feeds them (seqlens_k = total - 1). */
  function gqaInputs(
    b: number,
    s: number,
    past: number,
    heads: number,
    kv: number,
    hd: number,
    bias?: number[],
  ) {
    const t = past + s;
    const cache = (name: string): Input => ({
      name,
      shape: [b, kv, past, hd],
      declared: ['batch', kv, 'past', hd],
    });
    const inputs: (Input | '')[] = [
      f32('query', [b, s, heads * hd]),
      f32('key', [b, s, kv * hd]),
      f32('value', [b, s, kv * hd]),
      cache('past_key'),
      cache('past_value'),
      { name: 'seqlens_k', shape: [b], dtype: 'int32', data: new Array<number>(b).fill(t - 1) },
      { name: 'total_sequence_length', shape: [], dtype: 'int32', data: [t], declared: [] },
    ];
    if (bias) inputs.push('', '', '', { name: 'attention_bias', shape: bias, declared: bias.map(String) });
    return inputs;
  }
  const outputs = ['output', 'present_key', 'present_value'];

  it.each([
    { case: 'a batch-2 prefill with attention_bias [b, 1, s, t]', b: 2, s: 5, past: 0, bias: [2, 1, 5, 5] },
    {
      case: 'batch-2 decode on a past of 6, bias per head [b, n, 1, t]',
      b: 2,
      s: 1,
      past: 6,
      bias: [2, 4, 1, 7],
    },
    { case: 'a 3-token chunk on a past of 5 (batch 1)', b: 1, s: 3, past: 5, bias: [1, 1, 3, 8] },
    { case: 'batch-2 decode without attention_bias', b: 2, s: 1, past: 4 },
  ])('GroupQueryAttention (4 heads on 2 kv heads): $case', async ({ b, s, past, bias }) => {
    const made = oneNode(
      'GroupQueryAttention',
      MS_DOMAIN,
      gqaInputs(b, s, past, 4, 2, 8, bias),
      { num_heads: 4, kv_num_heads: 2 },
      outputs,
    );
    expect(await kernelVsRewrite(made)).toBeLessThan(TOL);
  });

  it('GroupQueryAttention with a scale attribute, 8 heads on 2 kv heads, head_dim 16', async () => {
    const attrs = { num_heads: 8, kv_num_heads: 2, scale: { float: 0.3 } };
    const made = oneNode('GroupQueryAttention', MS_DOMAIN, gqaInputs(1, 2, 3, 8, 2, 16), attrs, outputs);
    expect(await kernelVsRewrite(made)).toBeLessThan(TOL);
  });

  it('GroupQueryAttention masks the keys past seqlens_k[b] (a float64 attention as the oracle)', async () => {
    const [b, s, past, heads, kv, hd] = [2, 1, 5, 4, 2, 8];
    const t = past + s;
    const seqlens = [t - 1, 3]; // row 1: keys 4 and 5 are masked
    const inputs = gqaInputs(b, s, past, heads, kv, hd, [b, 1, s, t]);
    (inputs[5] as Input).data = seqlens;
    const made = oneNode(
      'GroupQueryAttention',
      MS_DOMAIN,
      inputs,
      { num_heads: heads, kv_num_heads: kv },
      outputs,
      5,
    );
    const rewritten = toStandardOps(made.model);
    const got = (await (await session(rewritten)).run(made.feeds)).output.data as Float32Array;
    const data = (name: string) => made.feeds[name].data as Float32Array;
    const [q, k, v, pk, pv, bias] = ['query', 'key', 'value', 'past_key', 'past_value', 'attention_bias'].map(
      data,
    );
    // present[r, g, j] = past[r, g, j] for j < past, else the new k / v at j - past.
    const at = (cache: Float32Array, fresh: Float32Array, r: number, g: number, j: number, e: number) =>
      j < past ? cache[((r * kv + g) * past + j) * hd + e] : fresh[(r * s + j - past) * kv * hd + g * hd + e];
    const want = new Float64Array(got.length);
    for (let r = 0; r < b; r++) {
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / (heads / kv));
        for (let i = 0; i < s; i++) {
          const keys = Array.from({ length: t }, (_, j) => j).filter((j) => j <= past + i && j <= seqlens[r]);
          const scores = keys.map((j) => {
            let dot = 0;
            for (let e = 0; e < hd; e++)
              dot += q[(r * s + i) * heads * hd + h * hd + e] * at(pk, k, r, g, j, e);
            return dot / Math.sqrt(hd) + bias[(r * s + i) * t + j];
          });
          const max = Math.max(...scores);
          const w = scores.map((x) => Math.exp(x - max));
          const sum = w.reduce((a, x) => a + x, 0);
          for (let e = 0; e < hd; e++) {
            const o = (r * s + i) * heads * hd + h * hd + e;
            want[o] = keys.reduce((acc, j, n) => acc + (w[n] / sum) * at(pv, v, r, g, j, e), 0);
          }
        }
      }
    }
    expect(maxAbsDiff(got, want)).toBeLessThan(TOL);
    // Row 0 (seqlens_k = total - 1) is also what the kernel computes.
    const kernel = (await (await session(made.model)).run(made.feeds)).output.data as Float32Array;
    const row = s * heads * hd;
    expect(maxAbsDiff(got.subarray(0, row), kernel.subarray(0, row))).toBeLessThan(TOL);
  });
});

// ---------------------------------------------------------------------------------------------
// What it refuses.

describe('refusals', () => {
  const gqa = (attrs: Record<string, AttrValue>, key = true) =>
    oneNode(
      'GroupQueryAttention',
      MS_DOMAIN,
      [
        f32('query', [1, 1, 32]),
        key ? f32('key', [1, 1, 16]) : '',
        key ? f32('value', [1, 1, 16]) : '',
        { name: 'past_key', shape: [1, 2, 0, 8] },
        { name: 'past_value', shape: [1, 2, 0, 8] },
        { name: 'seqlens_k', shape: [1], dtype: 'int32', data: [0] },
        { name: 'total_sequence_length', shape: [], dtype: 'int32', data: [1] },
      ],
      { num_heads: 4, kv_num_heads: 2, ...attrs },
      ['output', 'present_key', 'present_value'],
    ).model;

  it.each([
    { what: 'do_rotary=1', model: () => gqa({ do_rotary: 1 }), field: 'do_rotary' },
    { what: 'softcap', model: () => gqa({ softcap: { float: 30 } }), field: 'softcap' },
    { what: 'local_window_size', model: () => gqa({ local_window_size: 16 }), field: 'local_window_size' },
    { what: 'smooth_softmax', model: () => gqa({ smooth_softmax: 1 }), field: 'smooth_softmax' },
    { what: 'packed QKV', model: () => gqa({}, false), field: 'key' },
    { what: 'an unknown attribute', model: () => gqa({ future_option: 1 }), field: 'future_option' },
  ])('GroupQueryAttention with $what: a ModelFormatError naming the node', ({ model, field }) => {
    const err = (() => {
      try {
        toStandardOps(model());
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ModelFormatError);
    expect((err as ModelFormatError).field).toBe(
      `node /test/GroupQueryAttention (GroupQueryAttention) ${field}`,
    );
  });

  it('RotaryEmbedding with an input of unknown rank, or caches that do not fit rotary_embedding_dim', () => {
    const rotary = (x: Input, attrs: Record<string, AttrValue>) =>
      oneNode(
        'RotaryEmbedding',
        MS_DOMAIN,
        [
          x,
          { name: 'pos', shape: [1, 3], dtype: 'int64', data: [0, 1, 2] },
          f32('cos', [8, 4], true),
          f32('sin', [8, 4], true),
        ],
        attrs,
        ['y'],
      ).model;
    const unknownRank = rotary(f32('x', [1, 3, 16]), {});
    unknownRank.graph!.input[0] = valueInfo('x', 'float32'); // no shape
    expect(() => toStandardOps(unknownRank)).toThrow(
      /node \/test\/RotaryEmbedding \(RotaryEmbedding\) input: .*rank/,
    );
    expect(() =>
      toStandardOps(rotary(f32('x', [1, 3, 16]), { num_heads: 2, rotary_embedding_dim: 4 })),
    ).toThrow(ModelFormatError);
  });

  it("SkipSimplifiedLayerNormalization's mean output", () => {
    const made = oneNode(
      'SkipSimplifiedLayerNormalization',
      MS_DOMAIN,
      [f32('x', [1, 2, 8]), f32('skip', [1, 2, 8]), f32('gamma', [8], true)],
      {},
      ['y', 'mean'],
    );
    expect(() => toStandardOps(made.model)).toThrow(/SkipSimplifiedLayerNormalization\) output 1/);
  });

  it('leaves a model without contrib ops at opset 17 as it is', () => {
    const made = oneNode('Relu', '', [f32('x', [2, 3])], {}, ['y']);
    expect(toStandardOps(made.model)).toBe(made.model);
  });
});
