import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import type { Checkpoint, LlamaConfig } from '../src/formats/checkpoint.js';
import { expectedShapes } from '../src/formats/checkpoint.js';
import { HfTokenizer } from '../src/formats/hf-tokenizer.js';
import { parseLlama2cCheckpoint, permuteForRotateHalf } from '../src/formats/llama2c-checkpoint.js';
import {
  Llama2cTokenizer,
  llama2cTokenizerToHfConfig,
  llama2cTokenizerToHfJson,
} from '../src/formats/llama2c-tokenizer.js';
import { ReferenceSession, argmax, referenceLogits, rmsNorm, rope } from '../src/reference/llama.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

const stories = parseLlama2cCheckpoint(
  new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))),
  'stories260K.bin',
);
const tok = Llama2cTokenizer.parse(
  new Uint8Array(readFileSync(fixture('llama2c/tok512.bin'))),
  512,
  'tok512.bin',
);

/** A small Llama model with every tensor filled by `fill(name, index)` (default: seeded noise). */
function tinyModel(
  overrides: Partial<LlamaConfig> = {},
  fill?: (name: string, i: number) => number,
): Checkpoint {
  const config: LlamaConfig = {
    model_type: 'llama',
    hidden_size: 8,
    intermediate_size: 12,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    vocab_size: 10,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    hidden_act: 'silu',
    ...overrides,
  };
  let seed = 12345;
  const noise = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 30 - 1;
  };
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = fill ? fill(name, i) : noise();
    tensors.set(name, { shape, data });
  }
  return { config, tensors };
}

describe('reference forward pass on stories260K', () => {
  it('greedy-decodes the golden llama2.c output byte for byte', () => {
    const golden = readFileSync(fixture('llama2c/stories260K.greedy-once-upon-a-time.txt'), 'utf8');
    const tokens = [1, 403, 407, 261, 378];
    const session = new ReferenceSession(stories);
    let logits: Float64Array = new Float64Array();
    for (const t of tokens) logits = session.step(t);
    for (let i = 0; i < 252; i++) {
      tokens.push(argmax(logits));
      if (i < 251) logits = session.step(tokens[tokens.length - 1]);
    }
    expect(tokens.length).toBe(257);
    expect(tok.decode(tokens) + '\n').toBe(golden);
    const hf = HfTokenizer.fromJson(llama2cTokenizerToHfJson(tok), llama2cTokenizerToHfConfig(tok));
    expect(hf.decode(tokens) + '\n').toBe(golden);
    // Streaming by diffing: every prefix decodes to a prefix of the golden text.
    for (let n = 0; n <= tokens.length; n++)
      expect(golden.startsWith(tok.decode(tokens.slice(0, n)))).toBe(true);
  });

  it('gives the same logits for a 16-token block as for 16 incremental steps', () => {
    const tokens = tok
      .encode('Once upon a time, there was a little girl named Lily.', { bos: true })
      .slice(0, 16);
    expect(tokens.length).toBe(16);
    const block = referenceLogits(stories, tokens);
    const session = new ReferenceSession(stories);
    tokens.forEach((t, i) => expect(maxAbsDiff(block[i], session.step(t))).toBeLessThan(1e-12));
    expect(session.length).toBe(16);

    const positions = tokens.map((_, i) => 3 * i + 2);
    const shifted = referenceLogits(stories, tokens, { positions });
    const s2 = new ReferenceSession(stories);
    tokens.forEach((t, i) => expect(maxAbsDiff(shifted[i], s2.step(t, positions[i]))).toBeLessThan(1e-12));
    expect(maxAbsDiff(shifted[15], block[15])).toBeGreaterThan(1e-3); // positions do matter
  });

  it('rejects token ids outside the vocabulary with InvalidInputError on "tokens"', () => {
    const session = new ReferenceSession(stories);
    session.step(1);
    expect(() => session.step(512)).toThrow(InvalidInputError);
    expect(() => referenceLogits(stories, [1, -1])).toThrow(/^tokens: tokens\[1\]: token id -1/);
    expect(session.length).toBe(1); // a rejected step leaves the cache as it was
  });
});

describe('reference building blocks, checked by hand', () => {
  it('RMSNorm divides by the root mean square and scales by the weight', () => {
    const r = Math.sqrt((9 + 16) / 2 + 1e-5);
    const y = rmsNorm(Float64Array.from([3, 4]), [1, 2], 1e-5);
    expect(y[0]).toBeCloseTo(3 / r, 15);
    expect(y[1]).toBeCloseTo(8 / r, 15);
  });

  it('RoPE rotates (j, j + hd/2) by position * theta^(-2j/hd)', () => {
    const x = Float64Array.from([1, 2, 3, 4]);
    rope(x, 1, 4, 0, 10000);
    expect(Array.from(x)).toEqual([1, 2, 3, 4]);
    const y = Float64Array.from([1, 1, 0, 0]);
    rope(y, 1, 4, 1, 10000); // j = 0: angle 1; j = 1: angle 10000^(-1/2) = 0.01
    const expected = [Math.cos(1), Math.cos(0.01), Math.sin(1), Math.sin(0.01)];
    expected.forEach((v, i) => expect(y[i]).toBeCloseTo(v, 15));
  });

  it("rotate-half RoPE on HF-permuted rows equals llama2.c's interleaved RoPE on the original rows", () => {
    const hd = 8;
    const pos = 5;
    const q = [0.3, -1.2, 0.7, 2.0, -0.4, 0.9, 1.5, -0.8];
    // llama2.c: pair (2i, 2i+1) rotated by pos * 10000^(-2i/hd).
    const interleaved = [...q];
    for (let i = 0; i < hd / 2; i++) {
      const a = pos * Math.pow(10000, (-2 * i) / hd);
      const [x0, x1] = [q[2 * i], q[2 * i + 1]];
      interleaved[2 * i] = x0 * Math.cos(a) - x1 * Math.sin(a);
      interleaved[2 * i + 1] = x0 * Math.sin(a) + x1 * Math.cos(a);
    }
    const permuted = Float64Array.from(permuteForRotateHalf(Float32Array.from(q), 1, hd, 1));
    rope(permuted, 1, hd, pos, 10000);
    const expected = permuteForRotateHalf(Float32Array.from(interleaved), 1, hd, 1);
    expect(maxAbsDiff(permuted, expected)).toBeLessThan(1e-6);
  });

  it('computes the logits of a one-token model by hand', () => {
    // dim 2, one head of size 2, vocab 2. Embedding rows [3, 4] and [1, 0]; norms are ones;
    // v_proj and o_proj are the identity; the MLP's down_proj is zero.
    const embed = [3, 4, 1, 0];
    const identity = [1, 0, 0, 1];
    const ckpt = tinyModel(
      {
        hidden_size: 2,
        intermediate_size: 1,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        vocab_size: 2,
      },
      (name, i) => {
        if (name === 'model.embed_tokens.weight') return embed[i];
        if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') return 1;
        if (name.endsWith('v_proj.weight') || name.endsWith('o_proj.weight')) return identity[i];
        if (name.endsWith('down_proj.weight')) return 0;
        return 0.5; // q, k, gate, up: irrelevant for one token (softmax over one key is 1)
      },
    );
    // One token: attention returns v = rmsnorm(x) = x / r, so h = x (1 + 1/r), then logits = E h / rms(h).
    const eps = 1e-5;
    const x = [3, 4];
    const r = Math.sqrt((9 + 16) / 2 + eps);
    const h = x.map((v) => v * (1 + 1 / r));
    const rh = Math.sqrt((h[0] ** 2 + h[1] ** 2) / 2 + eps);
    const expected = [(3 * h[0] + 4 * h[1]) / rh, (1 * h[0] + 0 * h[1]) / rh];
    const [logits] = referenceLogits(ckpt, [0]);
    expected.forEach((v, i) => expect(logits[i]).toBeCloseTo(v, 12));
  });

  it('depends only on relative positions (RoPE), so shifting all positions keeps the logits', () => {
    const ckpt = tinyModel();
    const tokens = [1, 7, 3, 3, 9, 0];
    const a = referenceLogits(ckpt, tokens);
    const b = referenceLogits(ckpt, tokens, { positions: tokens.map((_, i) => i + 11) });
    a.forEach((row, i) => expect(maxAbsDiff(row, b[i])).toBeLessThan(1e-9));
  });

  it('shares each KV head among its query heads (GQA = MHA with repeated k/v rows)', () => {
    const gqa = tinyModel({ num_attention_heads: 2, num_key_value_heads: 1 });
    const mha = tinyModel({ num_attention_heads: 2, num_key_value_heads: 2 });
    for (const [name, t] of gqa.tensors) {
      const target = mha.tensors.get(name);
      if (target === undefined) throw new Error(name);
      // k/v [4, 8] -> [8, 8]: kv head 0 repeated for query heads 0 and 1.
      target.data = /[kv]_proj/.test(name) ? Float32Array.from([...t.data, ...t.data]) : t.data;
    }
    const tokens = [2, 5, 5, 1, 8];
    const a = referenceLogits(gqa, tokens);
    const b = referenceLogits(mha, tokens);
    a.forEach((row, i) => expect(maxAbsDiff(row, b[i])).toBeLessThan(1e-12));
  });

  it('uses lm_head.weight when the embeddings are not tied', () => {
    const tied = tinyModel();
    const untied = tinyModel({ tie_word_embeddings: false });
    const embed = tied.tensors.get('model.embed_tokens.weight');
    if (embed === undefined) throw new Error('no embedding');
    for (const [name, t] of tied.tensors) {
      const target = untied.tensors.get(name);
      if (target !== undefined) target.data = t.data;
    }
    untied.tensors.set('lm_head.weight', { shape: embed.shape, data: embed.data.map((v) => 2 * v) });
    const [a] = referenceLogits(tied, [4]);
    const [b] = referenceLogits(untied, [4]);
    expect(
      maxAbsDiff(
        b,
        a.map((v) => 2 * v),
      ),
    ).toBeLessThan(1e-12);
  });
});
