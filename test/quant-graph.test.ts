/**
 * Quantized base graphs in onnxruntime-web (wasm): logits of the int4 / nf4 / int8 decoder, with and
 * without a quantized embedding (GatherBlockQuantized), and of the same graph dequantized at load,
 * against the float64 reference run on the dequantized weights; a LoRA through the adapter slots
 * against reference(dequantized base + merged LoRA); GatherBlockQuantized on hand-computed rows.
 */
import { readFileSync } from 'node:fs';
import { toBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { headDim, type Checkpoint } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { ModelProtoSchema, type ModelProto } from '../src/formats/onnx/onnx_pb.js';
import { slotTensors } from '../src/engine/slot-feeds.js';
import { addAdapterSlots } from '../src/graph/adapter-slots.js';
import { graphBaseModel } from '../src/graph/base-weights.js';
import { GraphBuilder, MS_DOMAIN } from '../src/graph/builder.js';
import { dequantizeWeights } from '../src/graph/dequantize-weights.js';
import { buildLlamaDecoder, linearNodes } from '../src/graph/llama.js';
import { quantizeLinears, type GraphQuantizeOptions } from '../src/graph/quantized-linear.js';
import { dequantizeEmbedding, quantizedEmbeddingNode } from '../src/graph/quantized-embedding.js';
import { withFields } from '../src/formats/onnx/walk.js';
import { ModelFormatError } from '../src/errors.js';
import type { AdapterFeeds } from '../src/methods/feeds.js';
import { QUANT_FORMATS, dequantizeWeight, quantizeWeight } from '../src/quant/index.js';
import { referenceLogits } from '../src/reference/llama.js';
import { fixture } from './fixtures.js';

const TOL = 1e-4;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ckpt: Checkpoint = parseLlama2cCheckpoint(
  new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))),
);
const c = ckpt.config;
const tokens = Array.from({ length: 12 }, (_, i) => (i * 37 + 5) % c.vocab_size);

/**
 * The checkpoint with every linear replaced by `weight(module, W)` and the embedding table by
 * `embedding(table)` (default: unchanged). lm_head gets its own weight, no longer tied.
 */
function withLinears(
  base: Checkpoint,
  weight: (module: string, w: Float32Array, shape: number[]) => Float32Array,
  embedding: (table: Float32Array) => Float32Array = (t) => t,
): Checkpoint {
  const tensors = new Map(base.tensors);
  const modules = linearNodes(buildLlamaDecoder(base)).map((l) => l.module);
  for (const m of modules) {
    const name = m === 'lm_head' && c.tie_word_embeddings ? 'model.embed_tokens.weight' : `${m}.weight`;
    const t = base.tensors.get(name);
    if (!t) throw new Error(`no ${name}`);
    const w = weight(m, t.data, t.shape);
    tensors.set(`${m}.weight`, { shape: t.shape, data: w });
  }
  const table = base.tensors.get('model.embed_tokens.weight');
  if (!table) throw new Error('no embedding');
  tensors.set('model.embed_tokens.weight', { shape: table.shape, data: embedding(table.data) });
  return { config: { ...c, tie_word_embeddings: false }, tensors };
}

/**
 * The embedding as the quantizers round-trip it: int8 per row; int4 blocks for int4 and (with the
 * NF4 block size, 64) for nf4 bases, symmetric.
 */
function embeddingRoundTrip(q: GraphQuantizeOptions): (table: Float32Array) => Float32Array {
  if (!q.embeddings) return (t) => t;
  const blockSize = q.format === 'int8' ? undefined : (q.blockSize ?? (q.format === 'nf4' ? 64 : 32));
  const format = q.format === 'int8' ? 'int8' : 'int4';
  return (t) => dequantizeWeight(quantizeWeight(t, c.vocab_size, c.hidden_size, { format, blockSize }));
}

async function run(model: ModelProto, extra: Record<string, ort.Tensor> = {}): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(toBinary(ModelProtoSchema, model));
  const s = tokens.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, s]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(tokens.map((_, i) => BigInt(i))), [1, s]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(s).fill(1n), [1, s]),
    ...extra,
  };
  for (let i = 0; i < c.num_hidden_layers; i++) {
    for (const kind of ['key', 'value']) {
      feeds[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
        1,
        c.num_key_value_heads,
        0,
        headDim(c),
      ]);
    }
  }
  const out = await session.run(feeds);
  await session.release();
  return out.logits.data as Float32Array;
}

function maxDiff(got: Float32Array, want: Float64Array[]): number {
  const v = c.vocab_size;
  let m = 0;
  want.forEach((row, p) => row.forEach((x, j) => (m = Math.max(m, Math.abs(got[p * v + j] - x)))));
  return m;
}

/** Dequantized at load: a float32 graph, every linear one MatMul over a float32 initializer. */
function dequantized(model: ModelProto): ModelProto {
  const d = dequantizeWeights(model, { formats: QUANT_FORMATS, embedding: true });
  if (!d) throw new Error('nothing was dequantized');
  const inits = new Map(d.graph?.initializer.map((t) => [t.name, t]));
  const ops = new Set(d.graph?.node.map((n) => n.opType));
  for (const op of ['MatMulNBits', 'MatMulBnb4', 'DequantizeLinear', 'GatherBlockQuantized'])
    expect(ops.has(op), op).toBe(false);
  const linears = linearNodes(d);
  expect(linears.length).toBe(7 * c.num_hidden_layers + 1);
  for (const { node } of linears) expect(inits.get(node.input[1])?.dataType).toBe(1); // FLOAT
  return d;
}

const CASES: { name: string; q: GraphQuantizeOptions; op: string }[] = [
  { name: 'int4 block 32', q: { format: 'int4', blockSize: 32 }, op: 'MatMulNBits' },
  {
    name: 'int4 block 32 asymmetric',
    q: { format: 'int4', blockSize: 32, symmetric: false },
    op: 'MatMulNBits',
  },
  { name: 'nf4', q: { format: 'nf4' }, op: 'MatMulBnb4' },
  { name: 'nf4 double quant', q: { format: 'nf4', doubleQuant: true }, op: 'MatMulBnb4' },
  { name: 'int8', q: { format: 'int8' }, op: 'MatMul' },
  {
    name: 'int4 block 16 + embedding',
    q: { format: 'int4', blockSize: 16, embeddings: true },
    op: 'MatMulNBits',
  },
  { name: 'nf4 + embedding', q: { format: 'nf4', embeddings: true }, op: 'MatMulBnb4' },
  { name: 'int8 + embedding', q: { format: 'int8', embeddings: true }, op: 'MatMul' },
];

describe('quantized stories260K', () => {
  it.each(CASES)(
    '$name: logits == reference(dequantized weights), run natively and dequantized at load',
    async ({ q, op }) => {
      const model = buildLlamaDecoder(ckpt, { quantize: q });
      const linears = linearNodes(model);
      expect(linears.length).toBe(7 * c.num_hidden_layers + 1);
      expect(linears.every((l) => l.node.opType === op)).toBe(true);
      const gather = model.graph?.node.find((n) => n.name.startsWith('/model/embed_tokens/'));
      expect(gather?.opType).toBe(q.embeddings ? 'GatherBlockQuantized' : 'Gather');
      // The graph's dequantized weights (base-weights) are the quantizers' own round trip.
      const base = graphBaseModel(model, c);
      const embedding = embeddingRoundTrip(q);
      const deq = withLinears(
        ckpt,
        (m, w, [n, k]) => {
          const d = dequantizeWeight(quantizeWeight(w, n, k, q));
          expect(base.weight(m)).toEqual(d);
          return d;
        },
        (t) => {
          const d = embedding(t);
          expect(base.weight('model.embed_tokens')).toEqual(d);
          return d;
        },
      );
      const want = referenceLogits(deq, tokens);
      const fp = referenceLogits(ckpt, tokens);
      expect(maxDiff(await run(model), want)).toBeLessThan(TOL);
      expect(maxDiff(await run(dequantized(model)), want)).toBeLessThan(TOL);
      // Not vacuous: quantization moved the logits by far more than the tolerance.
      expect(maxDiff(Float32Array.from(fp.flatMap((r) => Array.from(r))), want)).toBeGreaterThan(100 * TOL);
    },
  );

  it('lmHead: false keeps lm_head a float32 MatMul over the original weight', () => {
    const model = buildLlamaDecoder(ckpt, { quantize: { format: 'int4', lmHead: false } });
    const head = linearNodes(model).find((l) => l.module === 'lm_head');
    expect(head?.node.opType).toBe('MatMul');
    expect(graphBaseModel(model, c).weight('lm_head')).toEqual(
      ckpt.tensors.get('model.embed_tokens.weight')?.data,
    );
    expect(linearNodes(model).filter((l) => l.node.opType === 'MatMulNBits').length).toBe(
      7 * c.num_hidden_layers,
    );
  });

  it.each([
    ['native NF4', (m: ModelProto) => m],
    ['NF4 dequantized at load', dequantized],
  ])('QLoRA: adapter slots on the %s base == reference(dequantized base + B·A)', async (_, form) => {
    const q: GraphQuantizeOptions = { format: 'nf4', doubleQuant: true, embeddings: true };
    const { model, layout } = addAdapterSlots(form(buildLlamaDecoder(ckpt, { quantize: q })), {
      prompt: false,
    });
    const next = rng(3);
    const rank = 2;
    const feeds: AdapterFeeds = { modules: new Map() };
    for (const g of layout.groups) {
      if (g.kind !== 'self_attn.q_proj' && g.kind !== 'mlp.down_proj') continue;
      for (const m of g.modules) {
        const a = Float32Array.from({ length: g.in * rank }, () => (next() - 0.5) * 0.5); // [in, r]
        const b = Float32Array.from({ length: rank * g.out }, () => (next() - 0.5) * 0.5); // [r, out]
        feeds.modules.set(m, { rank, a, b });
      }
    }
    expect(feeds.modules.size).toBe(2 * c.num_hidden_layers);
    const merged = withLinears(
      ckpt,
      (m, w, [n, k]) => {
        const d = dequantizeWeight(quantizeWeight(w, n, k, q));
        const l = feeds.modules.get(m);
        if (!l) return d;
        const out = Float32Array.from(d);
        for (let o = 0; o < n; o++)
          for (let i = 0; i < k; i++) {
            let s = 0;
            for (let j = 0; j < rank; j++) s += l.a[i * rank + j] * l.b[j * n + o];
            out[o * k + i] += s;
          }
        return out;
      },
      embeddingRoundTrip(q),
    );
    const got = await run(model, slotTensors(ort, layout, feeds));
    expect(maxDiff(got, referenceLogits(merged, tokens))).toBeLessThan(TOL);
  });
});

describe('GatherBlockQuantized (onnxruntime-web wasm) reads the embedding layout', () => {
  /** The rows `ids` of a [vocab, hidden] table quantized by quantizeLinears({ embeddings }), gathered by the op. */
  async function gathered(
    table: Float32Array,
    vocab: number,
    hidden: number,
    q: GraphQuantizeOptions,
    ids: number[],
  ) {
    const g = new GraphBuilder();
    const input = g.input('input_ids', 'int64', [ids.length]);
    g.initializer('model.embed_tokens.weight', table, [vocab, hidden]);
    g.node('Gather', ['model.embed_tokens.weight', input], {
      name: '/model/embed_tokens/Gather',
      outputs: ['rows'],
    });
    g.output('rows', 'float32', [ids.length, hidden]);
    const { model } = quantizeLinears(g.build(), { ...q, embeddings: true });
    expect(model.opsetImport.some((o) => o.domain === MS_DOMAIN)).toBe(true);
    const session = await ort.InferenceSession.create(toBinary(ModelProtoSchema, model));
    const out = await session.run({
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [ids.length]),
    });
    await session.release();
    return Array.from(out.rows.data as Float32Array, (v) => v + 0); // -0 (0 times a negative scale) as 0
  }

  it('int4: 20 values in blocks of 16 (no padding between rows), low nibble first, zero point 8', async () => {
    const table = new Float32Array(3 * 20);
    // Row 0, block 0: extreme -8 -> scale 1; 3.5 -> roundf(11.5) = 12 -> 4; -0.5 -> 7.5 -> 8 -> 0.
    table.set([-8, -4, 0, 1, 2, 3.5, 7, -0.5], 0);
    // Row 0, block 1 (4 values): extreme 16 -> scale -2; -8 -> code 12 -> -8; 4 -> code 6 -> 4.
    table.set([16, -8, 4, 0], 16);
    // Row 1 stays zero (scale 0); row 2: -1 .. 1 in steps of 0.125, scale 0.125 in both blocks.
    for (let i = 0; i < 20; i++) table[40 + i] = i < 16 ? (i - 8) / 8 : (i - 20) / 8;
    const rowTwo = Array.from({ length: 20 }, (_, i) => (i < 16 ? (i - 8) / 8 : (i - 20) / 8));
    const rowZero = [-8, -4, 0, 1, 2, 4, 7, 0, ...Array(8).fill(0), 16, -8, 4, 0];
    const got = await gathered(table, 3, 20, { format: 'int4', blockSize: 16 }, [2, 0, 0, 1]);
    expect(got).toEqual([...rowTwo, ...rowZero, ...rowZero, ...Array(20).fill(0)]);
  });

  it('a table whose scales do not match its blocks is a ModelFormatError naming the scales tensor', () => {
    const g = new GraphBuilder();
    const input = g.input('input_ids', 'int64', [1]);
    g.initializer('model.embed_tokens.weight', new Float32Array(4 * 32).fill(1), [4, 32]);
    g.node('Gather', ['model.embed_tokens.weight', input], {
      name: '/model/embed_tokens/Gather',
      outputs: ['rows'],
    });
    g.output('rows', 'float32', [1, 32]);
    const { model } = quantizeLinears(g.build(), { format: 'int4', blockSize: 16, embeddings: true });
    const node = quantizedEmbeddingNode(model)!;
    expect(dequantizeEmbedding(model, node)).toEqual(new Float32Array(4 * 32).fill(1)); // as written
    const graph = model.graph!;
    const initializer = graph.initializer.map((t) =>
      t.name === node.input[2]
        ? withFields(t, { dims: [4n, 1n], floatData: [], rawData: t.rawData.subarray(0, 16) })
        : t,
    );
    const broken = withFields(model, { graph: withFields(graph, { initializer }) });
    expect(() => dequantizeEmbedding(broken, node)).toThrow(ModelFormatError);
    expect(() => dequantizeEmbedding(broken, node)).toThrow(
      /model\.embed_tokens\.scales: expected scales \[4, 2\] .* got \[4, 1\]/,
    );
  });

  it('int8: one block per row, codes + 128, zero point 128 (round half to even)', async () => {
    const table = Float32Array.from([...[127, -63.5, 0.5, 1.5, 2.5, -127], ...[0, 254, 1, 0.9, -3, 5]]);
    const got = await gathered(table, 2, 6, { format: 'int8' }, [1, 0]);
    expect(got).toEqual([0, 254, 0, 0, -4, 4, 127, -64, 0, 2, 2, -127]); // -1.5 -> -2, 2.5 -> 2
  });
});
