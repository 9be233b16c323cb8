/**
 * Pretraining from scratch (src/train/pretrain.ts): the gradient of every kind of weight — the
 * (tied) embedding, norms, attention and MLP linears — in the float64 rendering of the pretraining
 * graph against central differences of the float64 reference forward (src/reference/llama.ts); the
 * loss of a short run falls far below the uniform ln(vocab); the returned checkpoint is the trained
 * weights in Hugging Face layout (with lr 0, the init exactly).
 */
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { session } from './helpers/gradient-check.js';
import { exactDecoderConstants, toFloat64 } from './helpers/float64-model.js';
import type { Checkpoint, LlamaConfig } from '../src/formats/checkpoint.js';
import { synthConfig } from '../src/formats/synth.js';
import { buildLlamaDecoder, weightInputs } from '../src/graph/llama.js';
import { loadBackend } from '../src/engine/backend.js';
import { trainingFeeds } from '../src/engine/training-session.js';
import { referenceLogits } from '../src/reference/llama.js';
import { makeBatch, type TrainingRow } from '../src/train/batch.js';
import { initCheckpoint, pretrain } from '../src/train/pretrain.js';
import { buildTrainingGraph } from '../src/train/training-graph.js';

const config: LlamaConfig = {
  ...synthConfig('tiny'),
  num_hidden_layers: 2,
  vocab_size: 96,
  max_position_embeddings: 64,
};

/** The mean next-token NLL of `rows` under the float64 reference with `ckpt`. */
function referenceLoss(ckpt: Checkpoint, rows: TrainingRow[]): number {
  let nll = 0;
  let n = 0;
  for (const row of rows) {
    const logits = referenceLogits(ckpt, row.tokens);
    for (let j = row.completionStart; j < row.tokens.length; j++) {
      const l = logits[j - 1];
      const max = Math.max(...l);
      nll -= l[row.tokens[j]] - max - Math.log(l.reduce((a, v) => a + Math.exp(v - max), 0));
      n++;
    }
  }
  return nll / n;
}

describe('pretraining', () => {
  it('every weight kind: float64 graph gradients equal finite differences of the reference', async () => {
    const ckpt = initCheckpoint(config, 3);
    // Larger, dyadic weights (exact under the nudges), so the gradients are far from 0.
    for (const t of ckpt.tensors.values()) {
      for (let i = 0; i < t.data.length; i++)
        t.data[i] =
          Math.round(
            (t.data[i] * (t.shape.length === 2 ? 10 : 1) + (t.shape.length === 1 ? 0.1 * Math.sin(i) : 0)) *
              4096,
          ) / 4096;
    }
    const rows: TrainingRow[] = [
      { tokens: [1, 5, 17, 40, 8, 93, 2, 11], completionStart: 1 },
      { tokens: [1, 60, 3, 3, 70], completionStart: 1 },
    ];
    const n = rows.reduce((k, r) => k + r.tokens.length - 1, 0);
    const inputs = weightInputs(ckpt);
    const graph = buildTrainingGraph(buildLlamaDecoder(ckpt, { weights: 'inputs' }), {
      slots: false,
      objective: 'sft',
      train: { values: inputs.map((i) => i.name) },
    });
    const feeds = trainingFeeds(
      ort,
      config,
      makeBatch(rows),
      Object.fromEntries(inputs.map((i) => [i.name, new ort.Tensor('float32', i.data, i.dims)])),
      { weights: new Float32Array(rows.length) },
    );
    // Weight rows by their scored tokens so that the loss is the mean NLL over the batch.
    const w = Float64Array.from(rows, () => 1 / n);
    const wide = Object.fromEntries(
      Object.entries(feeds).map(([k, t]) => [
        k,
        t.type === 'float32'
          ? new ort.Tensor('float64', Float64Array.from(t.data as Float32Array), t.dims)
          : t,
      ]),
    );
    wide.weights = new ort.Tensor('float64', w, [rows.length]);
    const s = await session(toFloat64(graph.model, exactDecoderConstants(graph.model, config)));
    const out = await s.run(wide);
    await s.release();
    expect(Math.abs(Number(out.loss.data[0]) - referenceLoss(ckpt, rows))).toBeLessThan(1e-9);

    // Central differences (Richardson) of the reference, on a few elements of each kind of weight.
    const h = 2 ** -13;
    const checks: [string, string, (i: number) => number][] = [
      ['model.embed_tokens.weight', 'model.embed_tokens.weight', (i) => i],
      ['model.layers.0.input_layernorm.weight', 'model.layers.0.input_layernorm.weight', (i) => i],
      ['model.norm.weight', 'model.norm.weight', (i) => i],
      ['model.layers.1.self_attn.q_proj.weight', 'model.layers.1.self_attn.q_proj.weight.T', (i) => i],
      ['model.layers.0.self_attn.v_proj.weight', 'model.layers.0.self_attn.v_proj.weight.T', (i) => i],
      ['model.layers.1.mlp.down_proj.weight', 'model.layers.1.mlp.down_proj.weight.T', (i) => i],
    ];
    let worst = 0;
    let scale = 0;
    for (const [tensor, input] of checks) {
      const t = ckpt.tensors.get(tensor)!;
      const grad = out[`${input}_grad`].data as Float64Array;
      const [rowsOf, cols] = t.shape.length === 2 ? t.shape : [1, t.shape[0]];
      // The largest gradient entries of this tensor, mapped from the input's layout.
      const at = (flat: number) => {
        if (!input.endsWith('.T')) return flat;
        const o = Math.floor(flat / cols);
        const i = flat % cols;
        return i * rowsOf + o; // W [out, in] element (o, i) is Wᵀ [in, out] element (i, o)
      };
      const order = Array.from({ length: t.data.length }, (_, k) => k).sort(
        (a, b) => Math.abs(grad[at(b)]) - Math.abs(grad[at(a)]),
      );
      for (const flat of order.slice(0, 3)) {
        const v = t.data[flat];
        const slope = (d: number) => {
          t.data[flat] = v + d;
          const up = referenceLoss(ckpt, rows);
          t.data[flat] = v - d;
          const down = referenceLoss(ckpt, rows);
          t.data[flat] = v;
          return (up - down) / (2 * d);
        };
        const fd = (4 * slope(h) - slope(2 * h)) / 3;
        worst = Math.max(worst, Math.abs(grad[at(flat)] - fd) / (1e-3 + Math.abs(fd)));
        scale = Math.max(scale, Math.abs(fd));
      }
    }
    expect(scale).toBeGreaterThan(1e-2);
    expect(worst).toBeLessThan(1e-7);
  });

  it('learns a token stream: the loss falls far below uniform; lr 0 returns the init', async () => {
    const backend = await loadBackend({ backend: 'wasm' });
    // A stream with structure: short repeated phrases.
    const phrases = [
      [5, 6, 7, 8],
      [9, 10, 11],
      [20, 21, 22, 23, 24],
      [30, 31],
    ];
    const tokens: number[] = [];
    let seed = 7;
    while (tokens.length < 4000) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      tokens.push(1, ...phrases[seed % phrases.length], 2);
    }
    const run = await pretrain({
      config,
      tokens,
      seqLength: 32,
      batchSize: 8,
      steps: 60,
      lr: 1e-2,
      warmupSteps: 5,
      backend,
      seed: 1,
    });
    expect(run.log[0].loss).toBeGreaterThan(0.9 * Math.log(config.vocab_size));
    expect(run.log[run.log.length - 1].loss).toBeLessThan(0.4 * Math.log(config.vocab_size));
    expect(run.log.every((p) => !p.skipped)).toBe(true);

    const init = initCheckpoint(config, 4);
    const frozen = await pretrain({
      config,
      tokens,
      seqLength: 16,
      batchSize: 2,
      steps: 2,
      lr: 0,
      backend,
      init,
    });
    for (const [name, t] of init.tensors)
      expect(Array.from(frozen.checkpoint.tensors.get(name)!.data)).toEqual(Array.from(t.data));
  });
});
