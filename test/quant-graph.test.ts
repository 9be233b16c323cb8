/**
 * Quantized base graphs in onnxruntime-web (wasm): logits of the int4 / nf4 / int8 decoder against
 * the float64 reference run on the dequantized weights, and a LoRA through the adapter slots of the
 * NF4 graph against reference(dequantized base + merged LoRA).
 */
import { readFileSync } from 'node:fs';
import { toBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { headDim, type Checkpoint } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { ModelProtoSchema, type ModelProto } from '../src/formats/onnx/onnx_pb.js';
import { addAdapterSlots } from '../src/graph/adapter-slots.js';
import { graphBaseModel } from '../src/graph/base-weights.js';
import { buildLlamaDecoder, linearNodes } from '../src/graph/llama.js';
import type { GraphQuantizeOptions } from '../src/graph/quantized-linear.js';
import { dequantizeWeight, quantizeWeight } from '../src/quant/index.js';
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

/** The checkpoint with every linear replaced by `weight(module, W)`. */
function withLinears(
  base: Checkpoint,
  weight: (module: string, w: Float32Array, shape: number[]) => Float32Array,
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
  // lm_head gets its own (quantized) weight; the embedding table stays float.
  return { config: { ...c, tie_word_embeddings: false }, tensors };
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
];

describe('quantized stories260K', () => {
  it.each(CASES)('$name: logits == reference(dequantized weights)', async ({ q, op }) => {
    const model = buildLlamaDecoder(ckpt, { quantize: q });
    const linears = linearNodes(model);
    expect(linears.length).toBe(7 * c.num_hidden_layers + 1);
    expect(linears.every((l) => l.node.opType === op)).toBe(true);
    // The graph's dequantized weights (base-weights) are the quantizer's own round trip.
    const base = graphBaseModel(model, c);
    const deq = withLinears(ckpt, (m, w, [n, k]) => {
      const d = dequantizeWeight(quantizeWeight(w, n, k, q));
      expect(base.weight(m)).toEqual(d);
      return d;
    });
    const want = referenceLogits(deq, tokens);
    const fp = referenceLogits(ckpt, tokens);
    const got = await run(model);
    expect(maxDiff(got, want)).toBeLessThan(TOL);
    // Not vacuous: quantization moved the logits by far more than the tolerance.
    expect(maxDiff(Float32Array.from(fp.flatMap((r) => Array.from(r))), want)).toBeGreaterThan(100 * TOL);
  });

  it('QLoRA: adapter slots on the NF4 base == reference(dequantized base + B·A)', async () => {
    const q: GraphQuantizeOptions = { format: 'nf4', doubleQuant: true };
    const { model, layout } = addAdapterSlots(buildLlamaDecoder(ckpt, { quantize: q }));
    const next = rng(3);
    const rank = 2;
    const lora = new Map<string, { a: Float32Array; b: Float32Array }>(); // a [in, r], b [r, out]
    const feeds: Record<string, ort.Tensor> = {};
    for (const g of layout.groups) {
      const r = g.kind === 'self_attn.q_proj' || g.kind === 'mlp.down_proj' ? rank : 0;
      const n = g.modules.length;
      const a = Float32Array.from({ length: n * g.in * r }, () => (next() - 0.5) * 0.5);
      const b = Float32Array.from({ length: n * r * g.out }, () => (next() - 0.5) * 0.5);
      feeds[g.a] = new ort.Tensor('float32', a, [n, g.in, r]);
      feeds[g.b] = new ort.Tensor('float32', b, [n, r, g.out]);
      if (g.scaleIn)
        feeds[g.scaleIn] = new ort.Tensor('float32', new Float32Array(n * g.in).fill(1), [n, g.in]);
      if (g.scaleOut)
        feeds[g.scaleOut] = new ort.Tensor('float32', new Float32Array(n * g.out).fill(1), [n, g.out]);
      g.modules.forEach((m, row) => {
        if (r > 0) {
          lora.set(m, {
            a: a.subarray(row * g.in * r, (row + 1) * g.in * r),
            b: b.subarray(row * r * g.out, (row + 1) * r * g.out),
          });
        }
      });
    }
    if (layout.prompt) {
      feeds[layout.prompt.input] = new ort.Tensor('float32', new Float32Array(layout.prompt.hidden), [
        1,
        layout.prompt.hidden,
      ]);
    }
    expect(lora.size).toBe(2 * c.num_hidden_layers);
    const merged = withLinears(ckpt, (m, w, [n, k]) => {
      const d = dequantizeWeight(quantizeWeight(w, n, k, q));
      const l = lora.get(m);
      if (!l) return d;
      const out = Float32Array.from(d);
      for (let o = 0; o < n; o++)
        for (let i = 0; i < k; i++) {
          let s = 0;
          for (let j = 0; j < rank; j++) s += l.a[i * rank + j] * l.b[j * n + o];
          out[o * k + i] += s;
        }
      return out;
    });
    const got = await run(model, feeds);
    expect(maxDiff(got, referenceLogits(merged, tokens))).toBeLessThan(TOL);
  });
});
