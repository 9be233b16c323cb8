/**
 * Paired measurement: decode latency of two sessions stepped alternately in one process, so both
 * see the same machine state. Prints the median per-step ratio (patched / base).
 *   npx tsx bench/adapter-overhead-probe.ts [full|lora] [rank]
 */
import * as ort from 'onnxruntime-web';
import { synthCheckpoint } from '../src/formats/synth.js';
import { buildLlamaDecoder } from '../src/graph/llama.js';
import { addAdapterSlots, type SlotLayout } from '../src/graph/adapter-slots.js';
import { encodeModel } from '../src/formats/onnx/index.js';

ort.env.wasm.numThreads = Number(process.env.T ?? 1);
const ckpt = synthCheckpoint(process.env.SHAPE ?? 'smollm2-135m', 0);
const c = ckpt.config;
const base = buildLlamaDecoder(ckpt);
const variant = process.argv[2] ?? 'full';
const rank = Number(process.argv[3] ?? 0);
const patched = addAdapterSlots(base, variant === 'lora' ? { outputScales: false, inputScales: 'none' } : {});

function slotFeeds(layout: SlotLayout): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const g of layout.groups) {
    const n = g.modules.length;
    const r = g.kind === 'lm_head' ? 0 : rank;
    feeds[g.a] = new ort.Tensor('float32', new Float32Array(n * g.in * r).fill(0.01), [n, g.in, r]);
    feeds[g.b] = new ort.Tensor('float32', new Float32Array(n * r * g.out).fill(0.01), [n, r, g.out]);
    if (g.scaleIn) feeds[g.scaleIn] = new ort.Tensor('float32', new Float32Array(n * g.in).fill(1), [n, g.in]);
    if (g.scaleOut) feeds[g.scaleOut] = new ort.Tensor('float32', new Float32Array(n * g.out).fill(1), [n, g.out]);
  }
  if (layout.prompt) feeds.prompt_embeddings = new ort.Tensor('float32', new Float32Array(c.hidden_size), [1, c.hidden_size]);
  return feeds;
}

const P = 128;
const hd = c.hidden_size / c.num_attention_heads;
const past: Record<string, ort.Tensor> = {};
for (let i = 0; i < c.num_hidden_layers; i++)
  for (const k of ['key', 'value'])
    past[`past_key_values.${i}.${k}`] = new ort.Tensor('float32', new Float32Array(c.num_key_value_heads * P * hd).fill(0.1), [1, c.num_key_value_heads, P, hd]);
const step = () => ({
  ...past,
  input_ids: new ort.Tensor('int64', BigInt64Array.from([5n]), [1, 1]),
  attention_mask: new ort.Tensor('int64', new BigInt64Array(P + 1).fill(1n), [1, P + 1]),
  position_ids: new ort.Tensor('int64', BigInt64Array.from([BigInt(P)]), [1, 1]),
});

const sBase = await ort.InferenceSession.create(encodeModel(base), { graphOptimizationLevel: 'all' });
const sPatched = await ort.InferenceSession.create(encodeModel(patched.model), { graphOptimizationLevel: 'all' });
const feeds = slotFeeds(patched.layout);
const ratios: number[] = [];
const tb: number[] = [];
const tp: number[] = [];
for (let i = 0; i < 60; i++) {
  let t0 = performance.now();
  await sBase.run(step());
  const b = performance.now() - t0;
  t0 = performance.now();
  await sPatched.run({ ...step(), ...feeds });
  const p = performance.now() - t0;
  if (i >= 5) { ratios.push(p / b); tb.push(b); tp.push(p); }
}
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`${variant} rank ${rank}: base ${med(tb).toFixed(1)} ms, patched ${med(tp).toFixed(1)} ms, median ratio ${med(ratios).toFixed(3)}`);
