/**
 * The decoder graph in onnxruntime-web (wasm) against the float64 reference forward pass, in both
 * op profiles: one-shot, prefill + token-by-token through the KV cache, and a left-padded batch.
 */
import { readFileSync } from 'node:fs';
import { toBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { expectedShapes, headDim, type Checkpoint, type LlamaConfig } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { ModelProtoSchema, type ModelProto } from '../src/formats/onnx/onnx_pb.js';
import { buildLlamaDecoder, linearNodeName, linearNodes, type DecoderProfile } from '../src/graph/llama.js';
import { referenceLogits } from '../src/reference/llama.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

const TOL = 1e-4;

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

/**
 * A small random GQA checkpoint (4 query heads share 2 kv heads, untied lm_head). Weights are
 * uniform with variance ~1/fan_in, so activations stay O(1) and attention is far from uniform:
 * an error in masking, RoPE or head grouping moves the logits by much more than the tolerance.
 */
function randomCheckpoint(seed: number): Checkpoint {
  const config: LlamaConfig = {
    model_type: 'llama',
    hidden_size: 32,
    intermediate_size: 48,
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

function randomTokens(n: number, vocab: number, seed: number): number[] {
  const next = rng(seed);
  return Array.from({ length: n }, () => Math.floor(next() * vocab));
}

/** One decoder session and its KV cache, fed the way an engine feeds it. */
class Runner {
  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly c: LlamaConfig,
  ) {}

  static async create(model: ModelProto, c: LlamaConfig): Promise<Runner> {
    return new Runner(await ort.InferenceSession.create(toBinary(ModelProtoSchema, model)), c);
  }

  emptyCache(batch: number): Map<string, ort.Tensor> {
    const cache = new Map<string, ort.Tensor>();
    const shape = [batch, this.c.num_key_value_heads, 0, headDim(this.c)];
    for (let i = 0; i < this.c.num_hidden_layers; i++) {
      for (const kind of ['key', 'value'])
        cache.set(`past_key_values.${i}.${kind}`, new ort.Tensor('float32', new Float32Array(0), shape));
    }
    return cache;
  }

  /**
   * Runs rows of equal length; `mask` covers cache + new tokens. Returns logits [row][position][vocab]
   * and the next cache.
   */
  async run(
    tokens: number[][],
    positions: number[][],
    mask: number[][],
    cache: Map<string, ort.Tensor>,
  ): Promise<{ logits: Float32Array[][]; cache: Map<string, ort.Tensor> }> {
    const b = tokens.length;
    const s = tokens[0].length;
    const t = mask[0].length;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens.flat(), BigInt), [b, s]),
      position_ids: new ort.Tensor('int64', BigInt64Array.from(positions.flat(), BigInt), [b, s]),
      attention_mask: new ort.Tensor('int64', BigInt64Array.from(mask.flat(), BigInt), [b, t]),
    };
    for (const [name, tensor] of cache) feeds[name] = tensor;
    const out = await this.session.run(feeds);
    const v = this.c.vocab_size;
    const data = out.logits.data as Float32Array;
    expect(out.logits.dims).toEqual([b, s, v]);
    const logits = Array.from({ length: b }, (_, r) =>
      Array.from({ length: s }, (_, p) => data.subarray((r * s + p) * v, (r * s + p + 1) * v)),
    );
    const next = new Map<string, ort.Tensor>();
    for (const name of cache.keys()) {
      const present = out[name.replace('past_key_values', 'present')];
      expect(present.dims).toEqual([b, this.c.num_key_value_heads, t, headDim(this.c)]);
      next.set(name, present);
    }
    return { logits, cache: next };
  }
}

/** The largest logit minus the smallest over all positions: shows the comparison is not vacuous. */
function spread(rows: Float64Array[]): number {
  let lo = Infinity;
  let hi = -Infinity;
  for (const r of rows) for (const v of r) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  return hi - lo;
}

const MODELS: { name: string; load: () => Checkpoint }[] = [
  {
    name: 'stories260K',
    load: () => parseLlama2cCheckpoint(new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin')))),
  },
  { name: 'random GQA', load: () => randomCheckpoint(7) },
];
const PROFILES: DecoderProfile[] = ['standard', 'contrib'];

describe.each(MODELS)('$name', ({ load }) => {
  const ckpt = load();
  const c = ckpt.config;
  const tokens = randomTokens(64, c.vocab_size, 11);
  const ref = referenceLogits(ckpt, tokens);

  it('has a reference worth comparing against', () => {
    expect(c.num_key_value_heads).toBeLessThan(c.num_attention_heads);
    expect(spread(ref)).toBeGreaterThan(5);
  });

  describe.each(PROFILES)('profile %s', (profile) => {
    const runner = Runner.create(buildLlamaDecoder(ckpt, { profile }), c);
    const ones = (n: number) => [new Array<number>(n).fill(1)];
    const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

    it('matches the reference at every position of 64 tokens in one pass (empty past)', async () => {
      const r = await runner;
      const { logits } = await r.run([tokens], [range(0, 64)], ones(64), r.emptyCache(1));
      const err = Math.max(...ref.map((want, p) => maxAbsDiff(logits[0][p], want)));
      expect(err).toBeLessThan(TOL);
    });

    it('matches the reference after a 32-token prefill, then token by token through the KV cache', async () => {
      const r = await runner;
      let { logits, cache } = await r.run([tokens.slice(0, 32)], [range(0, 32)], ones(32), r.emptyCache(1));
      let err = Math.max(...logits[0].map((got, p) => maxAbsDiff(got, ref[p])));
      for (let p = 32; p < 64; p++) {
        ({ logits, cache } = await r.run([[tokens[p]]], [[p]], ones(p + 1), cache));
        err = Math.max(err, maxAbsDiff(logits[0][0], ref[p]));
      }
      expect(cache.get('past_key_values.0.key')?.dims[2]).toBe(64);
      expect(err).toBeLessThan(TOL);
    });

    it('continues a prompt in chunks: several new tokens on a non-empty past', async () => {
      const r = await runner;
      let { logits, cache } = await r.run([tokens.slice(0, 20)], [range(0, 20)], ones(20), r.emptyCache(1));
      let err = 0;
      for (const [from, to] of [
        [20, 33],
        [33, 34],
        [34, 64],
      ]) {
        ({ logits, cache } = await r.run([tokens.slice(from, to)], [range(from, to)], ones(to), cache));
        err = Math.max(err, ...logits[0].map((got, p) => maxAbsDiff(got, ref[from + p])));
      }
      expect(err).toBeLessThan(TOL);
    });

    it('runs a left-padded batch of 2: the padded row matches the reference on its unpadded tokens', async () => {
      const r = await runner;
      const pad = 9;
      const long = tokens.slice(0, 40);
      const short = tokens.slice(20, 20 + 40 - pad);
      const refLong = ref.slice(0, 40);
      const refShort = referenceLogits(ckpt, short);
      // transformers' convention: position_ids = cumsum(mask) - 1, pad positions set to 1.
      const maskRow = [...new Array<number>(pad).fill(0), ...new Array<number>(40 - pad).fill(1)];
      const shortPos = maskRow.map((m, i) => (m === 0 ? 1 : i - pad));
      const padded = [...new Array<number>(pad).fill(0), ...short];
      let { logits, cache } = await r.run(
        [long, padded],
        [range(0, 40), shortPos],
        [ones(40)[0], maskRow],
        r.emptyCache(2),
      );
      let err = Math.max(...refLong.map((want, p) => maxAbsDiff(logits[0][p], want)));
      err = Math.max(err, ...refShort.map((want, p) => maxAbsDiff(logits[1][p + pad], want)));

      // Decode 6 more tokens per row through the cache; the mask keeps the pad columns at 0.
      const moreLong = randomTokens(6, c.vocab_size, 5);
      const moreShort = randomTokens(6, c.vocab_size, 6);
      const refLong2 = referenceLogits(ckpt, [...long, ...moreLong]).slice(40);
      const refShort2 = referenceLogits(ckpt, [...short, ...moreShort]).slice(40 - pad);
      const mask = [ones(40)[0], maskRow];
      for (let k = 0; k < 6; k++) {
        mask.forEach((row) => row.push(1));
        ({ logits, cache } = await r.run(
          [[moreLong[k]], [moreShort[k]]],
          [[40 + k], [40 - pad + k]],
          mask,
          cache,
        ));
        err = Math.max(err, maxAbsDiff(logits[0][0], refLong2[k]), maxAbsDiff(logits[1][0], refShort2[k]));
      }
      expect(err).toBeLessThan(TOL);
    });
  });
});

describe('graph structure', () => {
  const ckpt = randomCheckpoint(3);
  const c = ckpt.config;

  it.each(PROFILES)(
    '%s: every linear is one MatMul of the activation by W^T, named after its module',
    (profile) => {
      const model = buildLlamaDecoder(ckpt, { profile });
      const graph = model.graph!;
      const inits = new Map(graph.initializer.map((t) => [t.name, t]));
      const linears = linearNodes(model);
      const modules = linears.map((l) => l.module);
      const expected = ['lm_head'];
      for (let i = 0; i < c.num_hidden_layers; i++) {
        for (const m of [
          'self_attn.q_proj',
          'self_attn.k_proj',
          'self_attn.v_proj',
          'self_attn.o_proj',
          'mlp.gate_proj',
          'mlp.up_proj',
          'mlp.down_proj',
        ]) {
          expected.push(`model.layers.${i}.${m}`);
        }
      }
      expect(modules.sort()).toEqual(expected.sort());
      expect(graph.node.filter((n) => n.opType === 'MatMul' && !inits.has(n.input[1]))).toHaveLength(
        profile === 'contrib' ? 0 : 2 * c.num_hidden_layers, // attention's q@k^T and p@v
      );
      for (const { module, node } of linears) {
        expect(inits.has(node.input[0])).toBe(false);
        const w = ckpt.tensors.get(module === 'lm_head' ? 'lm_head.weight' : `${module}.weight`)!;
        const t = inits.get(node.input[1])!;
        const [out, inn] = w.shape;
        expect(t.dims.map(Number)).toEqual([inn, out]);
        const wt = new Float32Array(t.rawData.slice().buffer);
        for (const [o, i] of [
          [0, 0],
          [out - 1, 0],
          [1, inn - 1],
          [out - 1, inn - 1],
        ])
          expect(wt[i * out + o]).toBe(w.data[o * inn + i]);
        expect(node.output).toEqual([module === 'lm_head' ? 'logits' : `${node.name}_output_0`]);
        expect(node.name).toBe(linearNodeName(module));
      }
      expect(linears.find((l) => l.module === 'model.layers.1.self_attn.q_proj')?.node.name).toBe(
        '/model/layers.1/self_attn/q_proj/MatMul',
      );
    },
  );

  it('declares the Hugging Face / optimum inputs and outputs', () => {
    const graph = buildLlamaDecoder(ckpt, { profile: 'standard' }).graph!;
    const dims = (v: (typeof graph.input)[number]) =>
      v.type?.value.case === 'tensorType'
        ? v.type.value.value.shape?.dim.map((d) => d.value.value)
        : undefined;
    const io = (vs: typeof graph.input) => Object.fromEntries(vs.map((v) => [v.name, dims(v)]));
    const kv = (len: string) => ['batch_size', 2n, len, 8n];
    expect(io(graph.input)).toEqual({
      input_ids: ['batch_size', 'sequence_length'],
      attention_mask: ['batch_size', 'total_sequence_length'],
      position_ids: ['batch_size', 'sequence_length'],
      'past_key_values.0.key': kv('past_sequence_length'),
      'past_key_values.0.value': kv('past_sequence_length'),
      'past_key_values.1.key': kv('past_sequence_length'),
      'past_key_values.1.value': kv('past_sequence_length'),
    });
    expect(io(graph.output)).toEqual({
      logits: ['batch_size', 'sequence_length', 64n],
      'present.0.key': kv('total_sequence_length'),
      'present.0.value': kv('total_sequence_length'),
      'present.1.key': kv('total_sequence_length'),
      'present.1.value': kv('total_sequence_length'),
    });
  });

  it('uses only ai.onnx ops in the standard profile, and contrib ops in the contrib profile', () => {
    const ops = (p: DecoderProfile) =>
      new Set(buildLlamaDecoder(ckpt, { profile: p }).graph!.node.map((n) => `${n.domain}:${n.opType}`));
    const standard = ops('standard');
    expect([...standard].every((o) => o.startsWith(':'))).toBe(true);
    const contrib = ops('contrib');
    for (const op of [
      'com.microsoft:GroupQueryAttention',
      'com.microsoft:RotaryEmbedding',
      'com.microsoft:SkipSimplifiedLayerNormalization',
      ':SimplifiedLayerNormalization',
    ]) {
      expect(contrib.has(op)).toBe(true);
    }
    expect(contrib.has(':Softmax')).toBe(false);
  });
});
