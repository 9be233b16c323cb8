import { describe, expect, it } from 'vitest';
import { expectedShapes } from '../src/formats/checkpoint.js';
import { SYNTH_SHAPES, SYNTH_STD, fillNormal, synthCheckpoint, synthConfig } from '../src/formats/synth.js';

function moments(data: Float32Array): { mean: number; std: number; kurtosis: number } {
  let sum = 0;
  for (const v of data) sum += v;
  const mean = sum / data.length;
  let m2 = 0;
  let m4 = 0;
  for (const v of data) {
    const d = (v - mean) ** 2;
    m2 += d;
    m4 += d * d;
  }
  m2 /= data.length;
  m4 /= data.length;
  return { mean, std: Math.sqrt(m2), kurtosis: m4 / (m2 * m2) };
}

describe('synthCheckpoint', () => {
  const a = synthCheckpoint('tiny', 1);

  it('has the shapes of expectedShapes(config), stories260K dimensions', () => {
    expect(a.config).toMatchObject({
      hidden_size: 64,
      num_hidden_layers: 5,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      intermediate_size: 172,
      vocab_size: 512,
      tie_word_embeddings: true,
    });
    const shapes = expectedShapes(a.config);
    expect([...a.tensors.keys()]).toEqual([...shapes.keys()]);
    for (const [name, shape] of shapes) {
      const t = a.tensors.get(name)!;
      expect(t.shape).toEqual(shape);
      expect(t.data.length).toBe(shape.reduce((x, y) => x * y, 1));
    }
    expect(a.tensors.get('model.layers.0.self_attn.k_proj.weight')!.shape).toEqual([32, 64]);
  });

  it('is deterministic per seed and differs between seeds and tensors', () => {
    const again = synthCheckpoint('tiny', 1);
    const other = synthCheckpoint('tiny', 2);
    for (const [name, t] of a.tensors) {
      expect(Buffer.from(again.tensors.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer))).toBe(true);
      const o = other.tensors.get(name)!.data;
      expect(o.filter((v, i) => v !== t.data[i]).length).toBeGreaterThan(t.data.length * 0.99);
    }
    const q = a.tensors.get('model.layers.0.self_attn.q_proj.weight')!.data;
    const q1 = a.tensors.get('model.layers.1.self_attn.q_proj.weight')!.data;
    expect(q.filter((v, i) => v !== q1[i]).length).toBeGreaterThan(q.length * 0.99);
  });

  it('draws linears ~ N(0, 0.02) and norms ~ 1 + N(0, 0.02)', () => {
    // embedding: 32768 samples; sd of the mean = 0.02/181 = 1.1e-4, of the std ~ 0.02 * 0.4%
    const e = moments(a.tensors.get('model.embed_tokens.weight')!.data);
    expect(Math.abs(e.mean)).toBeLessThan(5e-4);
    expect(Math.abs(e.std / SYNTH_STD - 1)).toBeLessThan(0.02);
    // Irwin-Hall(4) kurtosis is 3 - 1.2/4 = 2.7 (normal: 3); uniform would be 1.8
    expect(Math.abs(e.kurtosis - 2.7)).toBeLessThan(0.05);
    const allNorms = new Float32Array(
      [...a.tensors].filter(([n]) => n.endsWith('norm.weight')).flatMap(([, t]) => [...t.data]),
    );
    expect(allNorms.length).toBe(11 * 64);
    const n = moments(allNorms);
    expect(Math.abs(n.mean - 1)).toBeLessThan(0.003);
    expect(Math.abs(n.std / SYNTH_STD - 1)).toBeLessThan(0.1);
  });

  it('fillNormal: a large sample matches N(mean, std) in its quantiles', () => {
    const x = new Float32Array(200_000);
    fillNormal(x, 12345, 3, 2);
    const m = moments(x);
    expect(Math.abs(m.mean - 3)).toBeLessThan(0.02);
    expect(Math.abs(m.std - 2)).toBeLessThan(0.02);
    // P(|z| < 1): 0.6827 for a normal. For Irwin-Hall(4) (sum S of 4 uniforms, z = (S-2)*sqrt(3)),
    // with F(s) = (s^4 - 4(s-1)^4)/24 on [1,2]: 1 - 2 F(2 - 1/sqrt(3)) = 0.6693.
    const within = x.filter((v) => Math.abs(v - 3) < 2).length / x.length;
    expect(Math.abs(within - 0.6693)).toBeLessThan(0.004); // sd of the estimate: 0.001
  });

  it('gives finite, non-degenerate next-token distributions (embedding row through the tied head)', () => {
    const emb = a.tensors.get('model.embed_tokens.weight')!.data;
    const norm = a.tensors.get('model.norm.weight')!.data;
    const d = 64;
    for (const token of [0, 100, 511]) {
      const h = emb.subarray(token * d, token * d + d);
      const rms = Math.sqrt(h.reduce((s, v) => s + v * v, 0) / d + 1e-5);
      const logits = Array.from({ length: 512 }, (_, v) => {
        let s = 0;
        for (let i = 0; i < d; i++) s += (h[i] / rms) * norm[i] * emb[v * d + i];
        return s;
      });
      expect(logits.every(Number.isFinite)).toBe(true);
      const max = Math.max(...logits);
      const z = logits.reduce((s, l) => s + Math.exp(l - max), 0);
      expect(1 / z).toBeLessThan(0.5); // the top token does not take all the mass
      expect(1 / z).toBeGreaterThan(1 / 512);
    }
  });

  it('names the real model shapes', () => {
    expect(synthConfig('smollm2-135m')).toMatchObject({
      hidden_size: 576,
      num_hidden_layers: 30,
      num_attention_heads: 9,
      num_key_value_heads: 3,
      intermediate_size: 1536,
      vocab_size: 49152,
      tie_word_embeddings: true,
      rope_theta: 100000,
      rms_norm_eps: 1e-5,
      max_position_embeddings: 2048,
    });
    // parameter counts: 134.5M, 361.8M and 1.236B
    const count = (name: string) =>
      [...expectedShapes(synthConfig(name)).values()].reduce((s, sh) => s + sh.reduce((x, y) => x * y, 1), 0);
    expect(count('smollm2-135m')).toBe(134_515_008);
    expect(count('smollm2-360m')).toBe(361_821_120);
    expect(count('llama-1b')).toBe(1_235_814_400);
    expect(Object.keys(SYNTH_SHAPES).sort()).toEqual([
      'llama-1b',
      'smollm2-135m',
      'smollm2-360m',
      'tiny',
      'tiny-deep',
    ]);
    expect(() => synthConfig('gpt2')).toThrow(/unknown synthetic shape "gpt2"/);
  });
});
