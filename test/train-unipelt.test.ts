/**
 * Training UniPELT on the device (src/train/train-unipelt.ts) on stories260K: the training graph's
 * gradient for every kind of UniPELT tensor (LoRA A on q_proj and its gate, the prefix keys and
 * their gate, the bottleneck's down-projection and its gate) against central differences of the
 * float64 oracle's loss (src/reference/unipelt.ts); then training lowers the loss, and the trained
 * adapter, saved in AdapterHub's format and read back, runs as the oracle runs it.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { oracleLayers } from './helpers/adapterhub-fixtures.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import {
  ADAPTERHUB_CONFIG,
  ADAPTERHUB_WEIGHTS,
  parseAdapterHubUniPelt,
  serializeAdapterHubUniPelt,
  type UniPeltAdapter,
} from '../src/formats/adapterhub-unipelt.js';
import { fillNormal } from '../src/formats/synth.js';
import { buildLlamaDecoder } from '../src/graph/llama.js';
import { loadBackend } from '../src/engine/backend.js';
import { UniPeltReferenceSession } from '../src/reference/unipelt.js';
import { Runtime } from '../src/runtime.js';
import { initUniPelt, UniPeltTrainer } from '../src/train/train-unipelt.js';
import type { TrainingRow } from '../src/train/batch.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const tokenizer = Llama2cTokenizer.parse(bytes(fixture('llama2c/tok512.bin')), 512);
const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8');
const c = ckpt.config;
const d = c.hidden_size;
const H = c.num_attention_heads;
const hd = d / H;
const N = c.num_hidden_layers;
const rows: TrainingRow[] = [0, 700, 2100].map((at, i) => ({
  tokens: [1, ...tokenizer.encode(text.slice(at, at + 200)).slice(0, 12 + i)],
  completionStart: 4,
}));
const all = { lora: true, prefix: true, bottleneck: true };

/** A UniPELT adapter with every tensor non-zero (lora_B too, so lora_A has a gradient). */
function randomAdapter(): UniPeltAdapter {
  const a = initUniPelt(c, { rank: 4, prefixLength: 3, bottleneck: 4, seed: 2 });
  let seed = 100;
  const noise = (x: Float32Array, std: number) => {
    const n = new Float32Array(x.length);
    fillNormal(n, seed++, 0, std);
    x.set(n);
  };
  for (const layer of a.layers) {
    for (const lora of Object.values(layer.lora)) if (lora) noise(lora.b, 0.1);
    if (layer.bottleneck) noise(layer.bottleneck.up, 0.2);
  }
  if (a.prefix) noise(a.prefix.states, 0.5);
  return a;
}

/** The training graph's loss in float64: -Σ log p(completion) / scored, one oracle call per row. */
function oracleLoss(adapter: UniPeltAdapter): number {
  const files = serializeAdapterHubUniPelt(adapter, c);
  const layers = oracleLayers({ weights: files.get(ADAPTERHUB_WEIGHTS)! }, all);
  let sum = 0;
  let scored = 0;
  for (const row of rows) {
    const logits = new UniPeltReferenceSession(ckpt, layers).forward(row.tokens);
    for (let j = row.completionStart; j < row.tokens.length; j++) {
      const l = logits[j - 1];
      const max = Math.max(...l);
      sum += l[row.tokens[j]] - max - Math.log(l.reduce((acc, v) => acc + Math.exp(v - max), 0));
      scored++;
    }
  }
  return -sum / scored;
}

describe('training UniPELT', () => {
  let trainer: UniPeltTrainer;
  beforeAll(async () => {
    trainer = new UniPeltTrainer(await loadBackend({ backend: 'wasm' }), buildLlamaDecoder(ckpt), c);
  });
  afterAll(() => trainer.release());

  it('gradients of every part equal central differences of the float64 oracle', async () => {
    const adapter = randomAdapter();
    const { loss, grads } = await trainer.lossAndGradients(adapter, rows);
    expect(Math.abs(loss - oracleLoss(adapter))).toBeLessThan(1e-4);
    const P = adapter.prefix!.length;
    const width = N * 2 * d;
    const m = 4;
    const r = 4;
    // [where in the adapter, where in the graph's gradient]
    const checks: [string, (a: UniPeltAdapter) => Float32Array, number, string, number][] = [
      [
        'lora_A of layer 1 q_proj',
        (a) => a.layers[1].lora.q_proj!.a,
        2 * d + 5,
        'lora_A.self_attn.q_proj',
        (1 * d + 5) * r + 2,
      ],
      [
        'gate of layer 1 q_proj',
        (a) => a.layers[1].lora.q_proj!.gateW,
        7,
        'unipelt.model.layers.1.self_attn.q_proj.gate',
        7,
      ],
      [
        'gate of layer 3 v_proj',
        (a) => a.layers[3].lora.v_proj!.gateW,
        11,
        'unipelt.model.layers.3.self_attn.v_proj.gate',
        11,
      ],
      [
        'prefix key of layer 2',
        (a) => a.prefix!.states,
        1 * width + (2 * 2 * H + 3) * hd + 4,
        'unipelt.2.prefix_keys',
        (3 * P + 1) * hd + 4,
      ],
      [
        'prefix value of layer 0',
        (a) => a.prefix!.states,
        2 * width + (1 * H + 5) * hd + 1,
        'unipelt.0.prefix_values',
        (5 * P + 2) * hd + 1,
      ],
      ['prefix gate of layer 4', (a) => a.layers[4].prefixGate!.w, 9, 'unipelt.4.prefix_gate', 9],
      [
        'bottleneck down of layer 2',
        (a) => a.layers[2].bottleneck!.down,
        3 * d + 10,
        'unipelt.2.down',
        10 * m + 3,
      ],
      ['bottleneck up of layer 0', (a) => a.layers[0].bottleneck!.up, 20 * m + 1, 'unipelt.0.up', 1 * d + 20],
      [
        'bottleneck gate of layer 3',
        (a) => a.layers[3].bottleneck!.gate.w,
        30,
        'unipelt.3.bottleneck_gate',
        30,
      ],
    ];
    let largest = 0;
    for (const g of grads.values()) for (const v of g) largest = Math.max(largest, Math.abs(v));
    const h = 1e-3;
    for (const [label, tensor, at, input, index] of checks) {
      const nudged = (delta: number) => {
        const a = structuredClone(adapter);
        tensor(a)[at] += delta;
        return a;
      };
      const fd = (oracleLoss(nudged(h)) - oracleLoss(nudged(-h))) / (2 * h);
      const got = grads.get(input)![index];
      expect(Math.abs(got), label).toBeGreaterThan(1e-6);
      // measured: within 4e-7 (the float32 graph) of gradients of 1e-4 to 2e-2, the largest 0.46
      expect(Math.abs(got - fd), label).toBeLessThan(1e-5 * largest);
    }
  });

  it('training lowers the loss; the trained adapter, saved and read back, runs as the oracle runs it', async () => {
    const start = initUniPelt(c, { rank: 4, prefixLength: 3, bottleneck: 4, seed: 5 });
    const result = await trainer.train(start, rows, { steps: 10, lr: 2e-2, batchSize: 3, seed: 1 });
    expect(result.skipped).toBe(0);
    expect(result.losses.at(-1)!).toBeLessThan(result.losses[0] - 0.05);
    const files = serializeAdapterHubUniPelt(result.adapter, c);
    const read = parseAdapterHubUniPelt(
      { config: files.get(ADAPTERHUB_CONFIG)!, weights: files.get(ADAPTERHUB_WEIGHTS)! },
      c,
      'trained',
    );
    const rt = await Runtime.create({
      model: memorySource(
        checkpointToModelFolder(ckpt, {
          tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
        }),
        'stories260K',
      ),
      slots: { unipelt: true },
    });
    try {
      await rt.adapters.activateUniPelt(read);
      const got = await rt.logits(rows[0].tokens);
      const want = new UniPeltReferenceSession(
        ckpt,
        oracleLayers({ weights: files.get(ADAPTERHUB_WEIGHTS)! }, all),
      ).forward(rows[0].tokens);
      got.forEach((row, i) => expect(maxAbsDiff(row, want[i])).toBeLessThan(1e-4));
    } finally {
      await rt.release();
    }
  });
});
