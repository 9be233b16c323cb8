/**
 * The PEFT oracle (src/reference/peft.ts) for the weight methods — LoRA, DoRA, AdaLoRA, IA3 and
 * their blends — checked against hand-computed tiny cases and against independent identities: each
 * adapter merged into the weights by this file's own code and run through the plain reference.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { IncompatibleAdapterError } from '../src/errors.js';
import type { Checkpoint, Float32Tensor, LlamaConfig } from '../src/formats/checkpoint.js';
import { expectedShapes } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { type PeftAdapter, parsePeftAdapter } from '../src/formats/peft-adapter.js';
import { formatPeftJson } from '../src/formats/python-json.js';
import { type SafetensorsEntry, float32Entry, serializeSafetensors } from '../src/formats/safetensors.js';
import { argmax, referenceLogits } from '../src/reference/llama.js';
import {
  type ActiveAdapter,
  PeftReferenceSession,
  referenceLogitsWithAdapters,
} from '../src/reference/peft.js';
import { fixture } from './fixtures.js';
import { loadAdapter, makeAdaloraAdapter, makeIa3Adapter, makeLoraAdapter } from './helpers/peft-fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

// ------------------------------------------------------------------------------------------------
// Helpers: tiny models, adapters from (config, tensors), merging by hand.

type Matrix = number[][];

function maxDiffAll(a: Float64Array[], b: Float64Array[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(...a.map((row, i) => maxAbsDiff(row, b[i])));
}

/** A Llama model with every tensor from `fill(name, index)`, default seeded noise in [-1, 1). */
function tinyModel(
  overrides: Partial<LlamaConfig> = {},
  fill?: (name: string, i: number) => number,
  seed = 7,
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
    tie_word_embeddings: false,
    hidden_act: 'silu',
    ...overrides,
  };
  let s = seed;
  const noise = (): number => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 30 - 1;
  };
  const tensors = new Map<string, Float32Tensor>();
  for (const [name, shape] of expectedShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = fill ? fill(name, i) : noise();
    tensors.set(name, { shape, data });
  }
  return { config, tensors };
}

/** Seeded values in [-scale, scale). */
function seeded(rows: number, cols: number, seed: number, scale = 0.5): Matrix {
  let s = seed * 7919 + 17;
  return Array.from({ length: rows }, () =>
    Array.from({ length: cols }, () => {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      return (s / 2 ** 30 - 1) * scale;
    }),
  );
}

/** The two files of a PEFT adapter, read back by the project's reader (as a user's files would be). */
function adapter(
  config: Record<string, unknown>,
  tensors: Record<string, Matrix | number[]>,
  label = 'test',
): PeftAdapter {
  const entries = Object.entries(tensors).map(([name, t]) => {
    const shape = Array.isArray(t[0]) ? [t.length, (t[0] as number[]).length] : [t.length];
    return [name, float32Entry(Float32Array.from((t as (number | number[])[]).flat()), shape)] as [
      string,
      SafetensorsEntry,
    ];
  });
  return parsePeftAdapter(
    {
      config: new TextEncoder().encode(formatPeftJson({ task_type: 'CAUSAL_LM', ...config })),
      weights: serializeSafetensors(entries, { format: 'pt' }),
    },
    label,
  );
}

const lora = (targets: string[], r: number, alpha: number, extra: Record<string, unknown> = {}) => ({
  peft_type: 'LORA',
  r,
  lora_alpha: alpha,
  target_modules: targets,
  ...extra,
});

const P = (module: string) => `base_model.model.${module}`;

/** [out, in] weight of a module as rows. */
function getW(ckpt: Checkpoint, module: string): Matrix {
  const name =
    module === 'lm_head' && ckpt.config.tie_word_embeddings
      ? 'model.embed_tokens.weight'
      : `${module}.weight`;
  const t = ckpt.tensors.get(name);
  if (t === undefined) throw new Error(name);
  const [out, n] = t.shape;
  return Array.from({ length: out }, (_, o) => Array.from(t.data.subarray(o * n, (o + 1) * n)));
}

/** A copy of the checkpoint with some modules' weights replaced (float64 values rounded to float32). */
function withWeights(ckpt: Checkpoint, weights: Record<string, Matrix>): Checkpoint {
  const tensors = new Map(ckpt.tensors);
  for (const [module, w] of Object.entries(weights)) {
    tensors.set(`${module}.weight`, { shape: [w.length, w[0].length], data: Float32Array.from(w.flat()) });
  }
  return { config: ckpt.config, tensors };
}

const matmul = (a: Matrix, b: Matrix): Matrix =>
  a.map((row) => b[0].map((_, j) => row.reduce((s, v, k) => s + v * b[k][j], 0)));
const add = (a: Matrix, b: Matrix, s = 1): Matrix => a.map((row, i) => row.map((v, j) => v + s * b[i][j]));
const rowNorm = (row: number[]) => Math.sqrt(row.reduce((s, v) => s + v * v, 0));

/** DoRA merged (lora/variants.py DoraLinearVariant.merge_safe): (m / ||W + ΔW||_row) ⊙ (W + ΔW). */
const doraMerge = (w: Matrix, delta: Matrix, m: number[], wNorm: Matrix = w): Matrix => {
  const direction = add(w, delta);
  const norms = add(wNorm, delta).map(rowNorm);
  return direction.map((row, o) => row.map((v) => (v * m[o]) / norms[o]));
};

/** Float32 rounding of a merged model limits agreement to about float32 epsilon times the logits. */
const MERGED_TOL = 2e-5;

// ------------------------------------------------------------------------------------------------
// Hand-computed cases on a 1-layer, dim-4 model with one token (attention then returns v itself).

describe('hand-computed single-token cases (dim 4, v_proj adapted)', () => {
  // Embedding rows E; norms are ones; o_proj = identity; down_proj = 0; tied lm_head. For one token
  // t: n = x / rms(x), v = V' n (the adapted v_proj), h = x + v, logits = E h / rms(h).
  const E = [
    [1, 2, 3, 4],
    [0, 1, 0, -1],
    [2, 0, -1, 1],
  ];
  const eps = 1e-5;
  const I4 = [0, 1, 2, 3].map((i) => [0, 1, 2, 3].map((j) => (i === j ? 1 : 0)));
  const SHIFT = [0, 1, 2, 3].map((i) => [0, 1, 2, 3].map((j) => (j === (i + 1) % 4 ? 1 : 0))); // (S n)_i = n_{i+1}
  const model = (v: Matrix) =>
    tinyModel(
      {
        hidden_size: 4,
        intermediate_size: 2,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        vocab_size: 3,
        tie_word_embeddings: true,
      },
      (name, i) => {
        if (name === 'model.embed_tokens.weight') return E[Math.floor(i / 4)][i % 4];
        if (name.endsWith('norm.weight')) return 1;
        if (name.endsWith('v_proj.weight')) return v[Math.floor(i / 4)][i % 4];
        if (name.endsWith('o_proj.weight')) return I4[Math.floor(i / 4)][i % 4];
        if (name.endsWith('down_proj.weight')) return 0;
        return 0.3;
      },
    );
  const rms = (x: number[]) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length + eps);
  const x = E[0];
  const n = x.map((v) => v / rms(x));
  /** Expected logits of token 0 given the attention value v. */
  const logitsFor = (v: number[]) => {
    const h = x.map((xi, i) => xi + v[i]);
    return E.map((e) => e.reduce((s, ei, i) => s + ei * h[i], 0) / rms(h));
  };
  const check = (ckpt: Checkpoint, adapters: ActiveAdapter[], v: number[]) => {
    const [got] = referenceLogitsWithAdapters(ckpt, adapters, [0]);
    logitsFor(v).forEach((want, j) => expect(got[j]).toBeCloseTo(want, 12));
  };
  const A1 = [[1, 0, 0, 0]];
  const B1 = [[0], [1], [0], [0]];
  const v = 'model.layers.0.self_attn.v_proj';

  it('LoRA: v = n + (alpha / r) B A n', () => {
    const a = adapter(lora(['v_proj'], 1, 2), {
      [`${P(v)}.lora_A.weight`]: A1,
      [`${P(v)}.lora_B.weight`]: B1,
    });
    check(model(I4), [{ adapter: a }], [n[0], n[1] + 2 * n[0], n[2], n[3]]);
    // use_rslora: alpha / sqrt(r) with r = 4 (A has 4 rows, three of them zero).
    const A4 = [A1[0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]];
    const B4 = B1.map((row) => [row[0], 0, 0, 0]);
    const rs = adapter(lora(['v_proj'], 4, 2, { use_rslora: true }), {
      [`${P(v)}.lora_A.weight`]: A4,
      [`${P(v)}.lora_B.weight`]: B4,
    });
    check(model(I4), [{ adapter: rs }], [n[0], n[1] + (2 / Math.sqrt(4)) * n[0], n[2], n[3]]);
    // A blend weight multiplies the scaling.
    check(model(I4), [{ adapter: a, weight: -0.25 }], [n[0], n[1] - 0.5 * n[0], n[2], n[3]]);
  });

  it('IA3: a feedforward module scales its input, any other its output', () => {
    const l = [2, 1, 0.5, -1];
    const ia3 = (ff: string[], shape: 'in' | 'out') =>
      adapter(
        { peft_type: 'IA3', target_modules: ['v_proj'], feedforward_modules: ff },
        { [`${P(v)}.ia3_l`]: shape === 'in' ? [l] : l.map((x) => [x]) },
      );
    // v_proj = S (a cyclic shift), so input and output scaling differ.
    check(
      model(SHIFT),
      [{ adapter: ia3([], 'out') }],
      [0, 1, 2, 3].map((i) => n[(i + 1) % 4] * l[i]),
    );
    check(
      model(SHIFT),
      [{ adapter: ia3(['v_proj'], 'in') }],
      [0, 1, 2, 3].map((i) => n[(i + 1) % 4] * l[(i + 1) % 4]),
    );
  });

  it('DoRA: v = (m / ||W + s B A||_row) ⊙ (W + s B A) n', () => {
    const m = [1, 3, 0.5, 2];
    const a = adapter(lora(['v_proj'], 1, 2, { use_dora: true }), {
      [`${P(v)}.lora_A.weight`]: A1,
      [`${P(v)}.lora_B.weight`]: B1,
      [`${P(v)}.lora_magnitude_vector`]: m,
    });
    // W + 2 B A = identity with row 1 = [2, 1, 0, 0] (norm sqrt 5); the other rows have norm 1.
    check(model(I4), [{ adapter: a }], [n[0], (3 / Math.sqrt(5)) * (2 * n[0] + n[1]), 0.5 * n[2], 2 * n[3]]);
    // Magnitudes equal to the row norms: DoRA is plain LoRA.
    const same = adapter(lora(['v_proj'], 1, 2, { use_dora: true }), {
      [`${P(v)}.lora_A.weight`]: A1,
      [`${P(v)}.lora_B.weight`]: B1,
      [`${P(v)}.lora_magnitude_vector`]: [1, Math.sqrt(5), 1, 1],
    });
    const f32 = Math.fround(Math.sqrt(5)) / Math.sqrt(5); // the magnitude is stored as float32
    check(model(I4), [{ adapter: same }], [n[0], f32 * (n[1] + 2 * n[0]), n[2], n[3]]);
  });

  it('AdaLoRA: v = n + B (A ⊙ E) n · lora_alpha / (init_r + 1e-5), init_r even after pruning', () => {
    const ada = (rankPattern: Record<string, boolean[]> | null, t: Record<string, Matrix>) =>
      adapter(
        {
          peft_type: 'ADALORA',
          init_r: 2,
          lora_alpha: 4,
          total_step: 10,
          target_modules: ['v_proj'],
          rank_pattern: rankPattern,
        },
        t,
      );
    const s = 4 / (2 + 1e-5);
    const full = ada(null, {
      [`${P(v)}.lora_A`]: [
        [1, 0, 0, 0],
        [0, 0, 1, 0],
      ],
      [`${P(v)}.lora_E`]: [[3], [0.5]],
      [`${P(v)}.lora_B`]: [
        [0, 0],
        [1, 0],
        [0, 0],
        [0, 1],
      ],
    });
    check(model(I4), [{ adapter: full }], [n[0], n[1] + s * 3 * n[0], n[2], n[3] + s * 0.5 * n[2]]);
    // Pruned to the first triplet: the saved tensors keep one row, ranknum stays init_r = 2.
    const pruned = ada(
      { [`${v}.lora_E`]: [true, false] },
      {
        [`${P(v)}.lora_A`]: [[1, 0, 0, 0]],
        [`${P(v)}.lora_E`]: [[3]],
        [`${P(v)}.lora_B`]: [[0], [1], [0], [0]],
      },
    );
    check(model(I4), [{ adapter: pruned }], [n[0], n[1] + s * 3 * n[0], n[2], n[3]]);
  });
});

// ------------------------------------------------------------------------------------------------
// Identities on a random 2-layer model: the adapter merged into the weights by hand.

const MLP = ['gate_proj', 'up_proj', 'down_proj'];
const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', ...MLP];

function modulesOf(ckpt: Checkpoint, names: string[]): string[] {
  const out: string[] = [];
  for (let l = 0; l < ckpt.config.num_hidden_layers; l++) {
    for (const n of names) out.push(`model.layers.${l}.${MLP.includes(n) ? 'mlp' : 'self_attn'}.${n}`);
  }
  return out;
}

/** Random LoRA tensors for `modules` of `ckpt` with ranks from `rank`. */
function loraTensors(ckpt: Checkpoint, modules: string[], rank: (m: string) => number, seed: number) {
  const tensors: Record<string, Matrix | number[]> = {};
  const ab: Record<string, { a: Matrix; b: Matrix }> = {};
  modules.forEach((m, i) => {
    const w = getW(ckpt, m);
    const r = rank(m);
    const a = seeded(r, w[0].length, seed * 100 + i);
    const b = seeded(w.length, r, seed * 100 + i + 50);
    tensors[`${P(m)}.lora_A.weight`] = a;
    tensors[`${P(m)}.lora_B.weight`] = b;
    ab[m] = { a, b };
  });
  return { tensors, ab };
}

describe('identities on a random 2-layer GQA model', () => {
  const base = tinyModel();
  const tokens = [3, 1, 4, 1, 5, 9, 2, 6];
  const baseLogits = referenceLogits(base, tokens);

  it('LoRA on every linear (with rank_pattern, alpha_pattern, lm_head) equals W + s B A merged', () => {
    const modules = [...modulesOf(base, ALL), 'lm_head'];
    // r 2, alpha 3; rank_pattern gives every down_proj rank 3; alpha_pattern gives layer 1's q_proj alpha 5.
    const rank = (m: string) => (m.endsWith('down_proj') ? 3 : 2);
    const alpha = (m: string) => (m === 'model.layers.1.self_attn.q_proj' ? 5 : 3);
    const { tensors, ab } = loraTensors(base, modules, rank, 1);
    const a = adapter(
      lora([...ALL, 'lm_head'], 2, 3, {
        rank_pattern: { down_proj: 3 },
        alpha_pattern: { 'layers.1.self_attn.q_proj': 5 },
      }),
      tensors,
    );
    const merged = withWeights(
      base,
      Object.fromEntries(
        modules.map((m) => [m, add(getW(base, m), matmul(ab[m].b, ab[m].a), alpha(m) / rank(m))]),
      ),
    );
    const got = referenceLogitsWithAdapters(base, [{ adapter: a }], tokens);
    expect(maxDiffAll(got, referenceLogits(merged, tokens))).toBeLessThan(MERGED_TOL);
    expect(maxDiffAll(got, baseLogits)).toBeGreaterThan(0.1); // the adapter does change the logits

    // rsLoRA: alpha / sqrt(r).
    const { tensors: tV, ab: abV } = loraTensors(base, modulesOf(base, ['v_proj']), () => 2, 2);
    const rs = adapter(lora(['v_proj'], 2, 3, { use_rslora: true }), tV);
    const mergedRs = withWeights(
      base,
      Object.fromEntries(
        modulesOf(base, ['v_proj']).map((m) => [
          m,
          add(getW(base, m), matmul(abV[m].b, abV[m].a), 3 / Math.sqrt(2)),
        ]),
      ),
    );
    expect(
      maxDiffAll(
        referenceLogitsWithAdapters(base, [{ adapter: rs }], tokens),
        referenceLogits(mergedRs, tokens),
      ),
    ).toBeLessThan(MERGED_TOL);
  });

  it('LoRA on embed_tokens changes the input embeddings only, not a tied lm_head', () => {
    const tied = tinyModel({ tie_word_embeddings: true });
    const { vocab_size: vocab, hidden_size: d } = tied.config;
    const a = seeded(2, vocab, 3); // lora_embedding_A [r, vocab]
    const b = seeded(d, 2, 4); // lora_embedding_B [hidden, r]
    const ad = adapter(lora(['embed_tokens'], 2, 4), {
      [`${P('model.embed_tokens')}.lora_embedding_A`]: a,
      [`${P('model.embed_tokens')}.lora_embedding_B`]: b,
    });
    // E'[t] = E[t] + s (B A)[:, t]; the untied lm_head keeps E.
    const e = getW(tied, 'model.embed_tokens');
    const ba = matmul(b, a);
    const embedded = e.map((row, t) => row.map((v, h) => v + 2 * ba[h][t]));
    const untied: Checkpoint = {
      config: { ...tied.config, tie_word_embeddings: false },
      tensors: new Map([
        ...withWeights(tied, { 'model.embed_tokens': embedded }).tensors,
        ['lm_head.weight', { shape: [vocab, d], data: Float32Array.from(e.flat()) }],
      ]),
    };
    expect(
      maxDiffAll(
        referenceLogitsWithAdapters(tied, [{ adapter: ad }], tokens),
        referenceLogits(untied, tokens),
      ),
    ).toBeLessThan(MERGED_TOL);
  });

  it('DoRA equals the merged (m / ||W + s B A||) ⊙ (W + s B A), row by row', () => {
    const modules = modulesOf(base, ALL);
    const { tensors, ab } = loraTensors(base, modules, () => 2, 5);
    const mags: Record<string, number[]> = {};
    modules.forEach((m, i) => {
      mags[m] = seeded(1, getW(base, m).length, 60 + i, 0.5)[0].map((v) => 1.5 + v);
      tensors[`${P(m)}.lora_magnitude_vector`] = mags[m];
    });
    const a = adapter(lora(ALL, 2, 4, { use_dora: true }), tensors);
    // s = 4 / 2 = 2: ΔW = 2 B A.
    const delta = (m: string) => matmul(ab[m].b, ab[m].a).map((row) => row.map((v) => 2 * v));
    const merged = withWeights(
      base,
      Object.fromEntries(modules.map((m) => [m, doraMerge(getW(base, m), delta(m), mags[m])])),
    );
    const got = referenceLogitsWithAdapters(base, [{ adapter: a }], tokens);
    expect(maxDiffAll(got, referenceLogits(merged, tokens))).toBeLessThan(MERGED_TOL);
    expect(maxDiffAll(got, baseLogits)).toBeGreaterThan(0.1);
  });

  it('AdaLoRA with singular values E equals the LoRA with A ⊙ E and alpha / r = lora_alpha / (init_r + 1e-5)', () => {
    const modules = modulesOf(base, ['q_proj', 'v_proj', 'down_proj']);
    const tensors: Record<string, Matrix | number[]> = {};
    const loraT: Record<string, Matrix | number[]> = {};
    const masks: Record<string, boolean[]> = {};
    modules.forEach((m, i) => {
      const w = getW(base, m);
      const keep = i % 2 === 0 ? [true, false, true] : [true, true, true]; // init_r 3, some pruned to 2
      const r = keep.filter(Boolean).length;
      if (i % 2 === 0) masks[`${m}.lora_E`] = keep;
      const a = seeded(r, w[0].length, 70 + i);
      const e = [[2], [-0.5], [0.25]].slice(0, r); // powers of two: A ⊙ E is exact in float32
      const b = seeded(w.length, r, 90 + i);
      tensors[`${P(m)}.lora_A`] = a;
      tensors[`${P(m)}.lora_E`] = e;
      tensors[`${P(m)}.lora_B`] = b;
      loraT[`${P(m)}.lora_A.weight`] = a.map((row, k) => row.map((v) => v * e[k][0]));
      loraT[`${P(m)}.lora_B.weight`] = b;
    });
    const ada = adapter(
      {
        peft_type: 'ADALORA',
        init_r: 3,
        lora_alpha: 6,
        total_step: 10,
        target_modules: ['q_proj', 'v_proj', 'down_proj'],
        rank_pattern: masks,
      },
      tensors,
    );
    // LoRA scaling alpha / r with r = 3: alpha = 3 * 6 / (3 + 1e-5); pruned modules keep the same scaling.
    const rankPattern = Object.fromEntries(Object.keys(masks).map((k) => [k.replace('.lora_E', ''), 2]));
    const alphaPattern = Object.fromEntries(
      Object.keys(masks).map((k) => [k.replace('.lora_E', ''), (2 * 6) / (3 + 1e-5)]),
    );
    const equivalent = adapter(
      lora(['q_proj', 'v_proj', 'down_proj'], 3, (3 * 6) / (3 + 1e-5), {
        rank_pattern: rankPattern,
        alpha_pattern: alphaPattern,
      }),
      loraT,
    );
    const got = referenceLogitsWithAdapters(base, [{ adapter: ada }], tokens);
    expect(
      maxDiffAll(got, referenceLogitsWithAdapters(base, [{ adapter: equivalent }], tokens)),
    ).toBeLessThan(1e-12);
    expect(maxDiffAll(got, baseLogits)).toBeGreaterThan(0.05);
  });

  it('IA3 with all-ones vectors is the base exactly; other vectors equal W diag(l) or diag(l) W merged', () => {
    const modules = modulesOf(base, ['k_proj', 'v_proj', 'down_proj', 'up_proj']);
    const ff = (m: string) => m.endsWith('down_proj') || m.endsWith('up_proj');
    const vec = (m: string, i: number, ones: boolean) => {
      const w = getW(base, m);
      const len = ff(m) ? w[0].length : w.length;
      return ones ? Array(len).fill(1) : seeded(1, len, 100 + i, 0.8)[0].map((v) => 1 + v);
    };
    const make = (ones: boolean) => {
      const t: Record<string, Matrix> = {};
      const ls: Record<string, number[]> = {};
      modules.forEach((m, i) => {
        ls[m] = vec(m, i, ones);
        t[`${P(m)}.ia3_l`] = ff(m) ? [ls[m]] : ls[m].map((x) => [x]);
      });
      const cfg = {
        peft_type: 'IA3',
        target_modules: ['k_proj', 'v_proj', 'down_proj', 'up_proj'],
        feedforward_modules: ['down_proj', 'up_proj'],
      };
      return { a: adapter(cfg, t), ls };
    };
    const ones = make(true).a;
    expect(referenceLogitsWithAdapters(base, [{ adapter: ones }], tokens)).toEqual(baseLogits);

    const { a, ls } = make(false);
    const merged = withWeights(
      base,
      Object.fromEntries(
        modules.map((m) => [
          m,
          getW(base, m).map((row, o) => row.map((v, i) => v * (ff(m) ? ls[m][i] : ls[m][o]))),
        ]),
      ),
    );
    const got = referenceLogitsWithAdapters(base, [{ adapter: a }], tokens);
    expect(maxDiffAll(got, referenceLogits(merged, tokens))).toBeLessThan(MERGED_TOL);
    expect(maxDiffAll(got, baseLogits)).toBeGreaterThan(0.1);
  });

  it('blends LoRA adapters linearly: Σ w_i s_i B_i A_i (add_weighted_adapter "cat")', () => {
    const m1 = modulesOf(base, ['q_proj', 'v_proj', 'gate_proj']);
    const m2 = modulesOf(base, ['v_proj', 'o_proj', 'down_proj']);
    const t1 = loraTensors(base, m1, () => 2, 11);
    const t2 = loraTensors(base, m2, () => 3, 12);
    const a1 = adapter(lora(['q_proj', 'v_proj', 'gate_proj'], 2, 4), t1.tensors, 'a1'); // s = 2
    const a2 = adapter(lora(['v_proj', 'o_proj', 'down_proj'], 3, 1, { use_rslora: true }), t2.tensors, 'a2'); // s = 1/sqrt(3)
    const [w1, w2] = [0.7, -0.4];
    const weights: Record<string, Matrix> = {};
    for (const m of new Set([...m1, ...m2])) {
      let w = getW(base, m);
      if (m1.includes(m)) w = add(w, matmul(t1.ab[m].b, t1.ab[m].a), w1 * 2);
      if (m2.includes(m)) w = add(w, matmul(t2.ab[m].b, t2.ab[m].a), w2 / Math.sqrt(3));
      weights[m] = w;
    }
    const blend = referenceLogitsWithAdapters(
      base,
      [
        { adapter: a1, weight: w1 },
        { adapter: a2, weight: w2 },
      ],
      tokens,
    );
    expect(maxDiffAll(blend, referenceLogits(withWeights(base, weights), tokens))).toBeLessThan(MERGED_TOL);
    // Order does not matter for LoRA; weight 0 is the base; weight 2 is the same adapter at twice alpha.
    const swapped = referenceLogitsWithAdapters(
      base,
      [
        { adapter: a2, weight: w2 },
        { adapter: a1, weight: w1 },
      ],
      tokens,
    );
    expect(maxDiffAll(blend, swapped)).toBeLessThan(1e-12);
    expect(
      maxDiffAll(referenceLogitsWithAdapters(base, [{ adapter: a1, weight: 0 }], tokens), baseLogits),
    ).toBe(0);
    const doubled = adapter(lora(['q_proj', 'v_proj', 'gate_proj'], 2, 8), t1.tensors);
    expect(
      maxDiffAll(
        referenceLogitsWithAdapters(base, [{ adapter: a1, weight: 2 }], tokens),
        referenceLogitsWithAdapters(base, [{ adapter: doubled }], tokens),
      ),
    ).toBeLessThan(1e-12);
  });

  it('blends IA3 adapters as add_weighted_adapter does: l = Σ w_i l_i', () => {
    const cfg = {
      peft_type: 'IA3',
      target_modules: ['v_proj', 'down_proj'],
      feedforward_modules: ['down_proj'],
    };
    const modules = modulesOf(base, ['v_proj', 'down_proj']);
    const vecs = (seed: number) =>
      Object.fromEntries(
        modules.map((m, i) => {
          const w = getW(base, m);
          return [
            m,
            seeded(1, m.endsWith('down_proj') ? w[0].length : w.length, seed + i, 0.5)[0].map((v) => 1 + v),
          ];
        }),
      );
    const files = (ls: Record<string, number[]>) =>
      Object.fromEntries(
        modules.map((m) => [`${P(m)}.ia3_l`, m.endsWith('down_proj') ? [ls[m]] : ls[m].map((x) => [x])]),
      );
    const [l1, l2] = [vecs(200), vecs(300)];
    const sum = Object.fromEntries(modules.map((m) => [m, l1[m].map((v, i) => 0.3 * v + 0.9 * l2[m][i])]));
    expect(
      maxDiffAll(
        referenceLogitsWithAdapters(
          base,
          [
            { adapter: adapter(cfg, files(l1)), weight: 0.3 },
            { adapter: adapter(cfg, files(l2)), weight: 0.9 },
          ],
          tokens,
        ),
        referenceLogitsWithAdapters(base, [{ adapter: adapter(cfg, files(sum)) }], tokens),
      ),
    ).toBeLessThan(1e-6); // the summed vectors are rounded to float32 in the file
  });

  it('runs several DoRA adapters as PEFT forward does: each rescales the running output', () => {
    const m = 'model.layers.1.self_attn.v_proj';
    const make = (seed: number, label: string) => {
      const { tensors, ab } = loraTensors(base, [m], () => 2, seed);
      const mag = seeded(1, getW(base, m).length, seed + 5)[0].map((v) => 1 + v);
      tensors[`${P(m)}.lora_magnitude_vector`] = mag;
      return {
        a: adapter(lora(['layers.1.self_attn.v_proj'], 2, 2, { use_dora: true }), tensors, label),
        delta: matmul(ab[m].b, ab[m].a),
        mag,
      };
    };
    const d1 = make(21, 'd1');
    const d2 = make(22, 'd2');
    const w = getW(base, m);
    // y = g2 ⊙ (g1 ⊙ (W + Δ1) x + 0.5 Δ2 x), both norms against the unmerged W (PEFT PR #3609).
    const half = d2.delta.map((row) => row.map((v) => 0.5 * v));
    const first = doraMerge(w, d1.delta, d1.mag);
    const second = doraMerge(first, half, d2.mag, w);
    const got = referenceLogitsWithAdapters(
      base,
      [{ adapter: d1.a }, { adapter: d2.a, weight: 0.5 }],
      tokens,
    );
    expect(maxDiffAll(got, referenceLogits(withWeights(base, { [m]: second }), tokens))).toBeLessThan(
      MERGED_TOL,
    );
    const swapped = referenceLogitsWithAdapters(
      base,
      [{ adapter: d2.a, weight: 0.5 }, { adapter: d1.a }],
      tokens,
    );
    expect(maxDiffAll(got, swapped)).toBeGreaterThan(1e-4); // order matters for DoRA
  });

  it('refuses combinations PEFT cannot run, naming the field', () => {
    const l = adapter(
      lora(['v_proj'], 2, 2),
      loraTensors(base, modulesOf(base, ['v_proj']), () => 2, 1).tensors,
    );
    const i = adapter(
      { peft_type: 'IA3', target_modules: ['v_proj'], feedforward_modules: [] },
      Object.fromEntries(
        modulesOf(base, ['v_proj']).map((m) => [`${P(m)}.ia3_l`, Array.from({ length: 4 }, () => [1])]),
      ),
    );
    expect(() => new PeftReferenceSession(base, [{ adapter: l }, { adapter: i }])).toThrow(
      IncompatibleAdapterError,
    );
    expect(() => new PeftReferenceSession(base, [{ adapter: l, weight: Number.NaN }])).toThrow(
      /adapters\[0\]\.weight/,
    );
    // An adapter for another model: the module does not exist.
    const big = tinyModel({ num_hidden_layers: 3 });
    const foreign = adapter(
      lora(['v_proj'], 2, 2),
      loraTensors(big, modulesOf(big, ['v_proj']), () => 2, 1).tensors,
    );
    expect(() => new PeftReferenceSession(base, [{ adapter: foreign }])).toThrow(IncompatibleAdapterError);
  });

  it('uses the base weights PEFT saved with an adapter (embed_tokens.base_layer.weight)', () => {
    const tied = tinyModel({ tie_word_embeddings: true });
    const e = getW(tied, 'model.embed_tokens');
    const doubled = e.map((row) => row.map((v) => 2 * v));
    const { tensors, ab } = loraTensors(tied, modulesOf(tied, ['q_proj']), () => 2, 31);
    tensors[`${P('model.embed_tokens')}.base_layer.weight`] = doubled;
    const a = adapter(lora(['q_proj'], 2, 2), tensors);
    const merged = withWeights(tied, {
      'model.embed_tokens': doubled,
      ...Object.fromEntries(
        modulesOf(tied, ['q_proj']).map((m) => [m, add(getW(tied, m), matmul(ab[m].b, ab[m].a))]),
      ),
    });
    expect(
      maxDiffAll(
        referenceLogitsWithAdapters(tied, [{ adapter: a }], tokens),
        referenceLogits(merged, tokens),
      ),
    ).toBeLessThan(MERGED_TOL);
  });
});

// ------------------------------------------------------------------------------------------------
// stories260K with the shared fixture adapters: every method changes what the model writes.

const stories = parseLlama2cCheckpoint(
  new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))),
  'stories260K.bin',
);
const PROMPT = [1, 403, 407, 261, 378]; // "Once upon a time"

function greedy(session: PeftReferenceSession, prompt: number[], n: number): number[] {
  let logits = session.forward(prompt).at(-1) as Float64Array;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    out.push(argmax(logits));
    if (i < n - 1) logits = session.step(out[i]);
  }
  return out;
}

describe('stories260K with the fixture adapters', () => {
  const baseText = greedy(new PeftReferenceSession(stories, []), PROMPT, 16);

  it('without adapters, is the plain reference', () => {
    expect(referenceLogitsWithAdapters(stories, [], PROMPT)).toEqual(referenceLogits(stories, PROMPT));
  });

  const cases: [string, () => ActiveAdapter[]][] = [
    ['LoRA', () => [{ adapter: loadAdapter(makeLoraAdapter()) }]],
    ['DoRA', () => [{ adapter: loadAdapter(makeLoraAdapter({ dora: true })) }]],
    ['AdaLoRA', () => [{ adapter: loadAdapter(makeAdaloraAdapter()) }]],
    ['IA3', () => [{ adapter: loadAdapter(makeIa3Adapter()) }]],
    [
      'a blend of two LoRA adapters',
      () => [
        { adapter: loadAdapter(makeLoraAdapter({ seed: 1 })), weight: 0.5 },
        { adapter: loadAdapter(makeLoraAdapter({ seed: 2, targets: ['q_proj', 'v_proj'] })), weight: 0.8 },
      ],
    ],
  ];
  for (const [name, make] of cases) {
    it(`${name} changes the greedy continuation, and steps agree with one block`, () => {
      const adapters = make();
      const session = new PeftReferenceSession(stories, adapters);
      const text = greedy(session, PROMPT, 16);
      expect(text).not.toEqual(baseText);
      const block = referenceLogitsWithAdapters(stories, adapters, [...PROMPT, ...text.slice(0, -1)]);
      const stepped = new PeftReferenceSession(stories, adapters);
      [...PROMPT, ...text.slice(0, -1)].forEach((t, i) =>
        expect(maxAbsDiff(stepped.step(t), block[i])).toBeLessThan(1e-9),
      );
    });
  }
});
