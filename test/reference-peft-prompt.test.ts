/**
 * The PEFT oracle (src/reference/peft.ts) for the prompt-learning methods: prompt tuning, P-tuning
 * and prefix tuning, alone and with LoRA. The identities pin PEFT's positions: virtual tokens at
 * 0..P-1, real tokens from P on, prefix keys used as saved (no rotation).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { IncompatibleAdapterError, InvalidInputError } from '../src/errors.js';
import type { Checkpoint, Float32Tensor, LlamaConfig } from '../src/formats/checkpoint.js';
import { expectedShapes, headDim } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { type PeftAdapter, parsePeftAdapter } from '../src/formats/peft-adapter.js';
import { formatPeftJson } from '../src/formats/python-json.js';
import { type SafetensorsEntry, float32Entry, serializeSafetensors } from '../src/formats/safetensors.js';
import { ReferenceSession, argmax, referenceLogits } from '../src/reference/llama.js';
import {
  type ActiveAdapter,
  PeftReferenceSession,
  referenceLogitsWithAdapters,
} from '../src/reference/peft.js';
import { fixture } from './fixtures.js';
import {
  loadAdapter,
  makeLoraAdapter,
  makePTuningAdapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
} from './helpers/peft-fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';

function maxDiffAll(a: Float64Array[], b: Float64Array[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(...a.map((row, i) => maxAbsDiff(row, b[i])));
}

/** A 2-layer grouped-query Llama (2 query heads share 1 key/value head) with seeded weights in [-1, 1). */
function tinyModel(overrides: Partial<LlamaConfig> = {}): Checkpoint {
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
  let s = 99;
  const tensors = new Map<string, Float32Tensor>();
  for (const [name, shape] of expectedShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      data[i] = s / 2 ** 30 - 1;
    }
    tensors.set(name, { shape, data });
  }
  return { config, tensors };
}

/** An adapter folder read back by the project's reader. */
function adapter(
  config: Record<string, unknown>,
  tensors: Record<string, number[][]>,
  label = 'test',
): PeftAdapter {
  const entries = Object.entries(tensors).map(
    ([name, t]) =>
      [name, float32Entry(Float32Array.from(t.flat()), [t.length, t[0].length])] as [
        string,
        SafetensorsEntry,
      ],
  );
  return parsePeftAdapter(
    {
      config: new TextEncoder().encode(
        formatPeftJson({ task_type: 'CAUSAL_LM', inference_mode: true, ...config }),
      ),
      weights: serializeSafetensors(entries, { format: 'pt' }),
    },
    label,
  );
}

/** Prompt tuning (or P-tuning) whose virtual tokens are the embeddings of real tokens. */
function promptOf(ckpt: Checkpoint, tokens: number[], type = 'PROMPT_TUNING'): PeftAdapter {
  const c = ckpt.config;
  const e = ckpt.tensors.get('model.embed_tokens.weight') as Float32Tensor;
  const rows = tokens.map((t) => Array.from(e.data.subarray(t * c.hidden_size, (t + 1) * c.hidden_size)));
  const extra =
    type === 'P_TUNING' ? { encoder_hidden_size: c.hidden_size, encoder_reparameterization_type: 'MLP' } : {};
  return adapter(
    {
      peft_type: type,
      num_virtual_tokens: tokens.length,
      token_dim: c.hidden_size,
      num_attention_heads: c.num_attention_heads,
      num_layers: c.num_hidden_layers,
      num_transformer_submodules: 1,
      ...extra,
    },
    { prompt_embeddings: rows },
  );
}

/**
 * Prefix tuning whose keys and values are those a session cached: prompt_embeddings row p holds, for
 * j = 0 .. 2L-1 (layer j/2, key if j even), head h, feature d, the value at column (j·H + h)·hd + d:
 * the layout PEFT's get_prompt reads with view(P, 2L, H, hd).permute(2, 0, 3, 1, 4).
 */
function prefixOf(session: ReferenceSession, opts: { legacyHeads?: boolean } = {}): PeftAdapter {
  const c = session.config;
  const hd = headDim(c);
  const H = c.num_key_value_heads;
  const L = c.num_hidden_layers;
  const P = session.length;
  const rows = Array.from({ length: P }, (_, p) => {
    const row = new Array<number>(L * 2 * H * hd);
    for (let j = 0; j < 2 * L; j++) {
      const { keys, values } = session.cached(Math.floor(j / 2));
      const src = j % 2 === 0 ? keys[p] : values[p];
      for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) row[(j * H + h) * hd + d] = src[h * hd + d];
    }
    return row;
  });
  // PEFT >= #1901 saves the key/value width; older configs hold all heads and hidden_size, which
  // _prepare_prompt_learning_config rescales the same way when the adapter is loaded.
  const heads = opts.legacyHeads ? c.num_attention_heads : H;
  return adapter(
    {
      peft_type: 'PREFIX_TUNING',
      num_virtual_tokens: P,
      token_dim: heads * hd,
      num_attention_heads: heads,
      num_layers: L,
    },
    { prompt_embeddings: rows },
  );
}

describe('prompt learning on a tiny grouped-query model', () => {
  const base = tinyModel();
  const virtual = [4, 7, 1];
  const real = [2, 9, 9, 0, 5];
  const longer = referenceLogits(base, [...virtual, ...real]).slice(virtual.length);

  it('prompt tuning with the embeddings of real tokens equals running those tokens first', () => {
    const a = promptOf(base, virtual);
    const session = new PeftReferenceSession(base, [{ adapter: a }]);
    expect(session.numVirtualTokens).toBe(3);
    expect(session.length).toBe(3);
    expect(maxDiffAll(session.forward(real), longer)).toBeLessThan(1e-12);
    // The same real tokens without the prompt, or at positions 0..n-1 after it, give other logits.
    expect(maxDiffAll(referenceLogits(base, real), longer)).toBeGreaterThan(1e-2);
    const shifted = new PeftReferenceSession(base, [{ adapter: a }]);
    expect(maxDiffAll(shifted.forward(real, [0, 1, 2, 3, 4]), longer)).toBeGreaterThan(1e-3);
  });

  it('P-tuning reads its saved encoder output the same way', () => {
    const a = promptOf(base, virtual, 'P_TUNING');
    expect(maxDiffAll(referenceLogitsWithAdapters(base, [{ adapter: a }], real), longer)).toBeLessThan(1e-12);
  });

  it('prefix tuning with the keys and values of real tokens equals running those tokens first', () => {
    const run = new ReferenceSession(base);
    run.forward(virtual);
    const a = prefixOf(run);
    const session = new PeftReferenceSession(base, [{ adapter: a }]);
    expect(session.numVirtualTokens).toBe(3);
    // Keys and values are stored as float32: agreement to float32 rounding.
    expect(maxDiffAll(session.forward(real), longer)).toBeLessThan(1e-5);
    // Real tokens at positions 0.. (not P..) after the same prefix would differ.
    const layers = [0, 1].map((l) => run.cached(l));
    const wrong = new ReferenceSession(base);
    wrong.prefill(
      layers.map((c) => c.keys),
      layers.map((c) => c.values),
    );
    expect(maxDiffAll(wrong.forward(real, [0, 1, 2, 3, 4]), longer)).toBeGreaterThan(1e-3);
  });

  it('reads a prefix config that still names all heads and hidden_size (rescaled to the key/value heads)', () => {
    const run = new ReferenceSession(base);
    run.forward(virtual);
    const a = prefixOf(run, { legacyHeads: true });
    expect(a.config).toMatchObject({ token_dim: 8, num_attention_heads: 2 });
    expect(maxDiffAll(referenceLogitsWithAdapters(base, [{ adapter: a }], real), longer)).toBeLessThan(1e-5);
  });

  it('applies a prompt and a LoRA together: virtual tokens run through the adapted model', () => {
    const e = new Array(8).fill(0).map((_, i) => [Math.sin(i + 1) / 2, Math.cos(i) / 3]);
    const lora = adapter(
      {
        peft_type: 'LORA',
        r: 2,
        lora_alpha: 4,
        target_modules: ['layers.0.self_attn.v_proj', 'layers.1.mlp.down_proj'],
      },
      {
        'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight': [
          e.map((x) => x[0]),
          e.map((x) => x[1]),
        ],
        'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight': [
          [0.5, -1],
          [1, 0.25],
          [0, 1],
          [-0.5, 0.5],
        ],
        'base_model.model.model.layers.1.mlp.down_proj.lora_A.weight': [
          new Array(12).fill(0.1),
          new Array(12).fill(0).map((_, i) => (i % 3) - 1),
        ],
        'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight': e.map(([x, y]) => [y, x]),
      },
    );
    const withLora = referenceLogitsWithAdapters(base, [{ adapter: lora }], [...virtual, ...real]).slice(
      virtual.length,
    );
    expect(maxDiffAll(withLora, longer)).toBeGreaterThan(1e-2);
    const prompt = promptOf(base, virtual);
    const both = referenceLogitsWithAdapters(base, [{ adapter: prompt }, { adapter: lora }], real);
    expect(maxDiffAll(both, withLora)).toBeLessThan(1e-12);
    // Prefix keys and values are used as saved: taken from a LoRA run, they continue that run.
    const run = new PeftReferenceSession(base, [{ adapter: lora }]);
    run.forward(virtual);
    const prefix = prefixOf(run);
    expect(
      maxDiffAll(referenceLogitsWithAdapters(base, [{ adapter: lora }, { adapter: prefix }], real), withLora),
    ).toBeLessThan(1e-5);
  });

  it('steps after the prompt agree with one block', () => {
    const adapters: ActiveAdapter[] = [{ adapter: promptOf(base, virtual) }];
    const block = referenceLogitsWithAdapters(base, adapters, real);
    const session = new PeftReferenceSession(base, adapters);
    real.forEach((t, i) => expect(maxAbsDiff(session.step(t), block[i])).toBeLessThan(1e-12));
    expect(session.length).toBe(virtual.length + real.length);
  });

  it('checks what it is fed: embedding widths and cache entry widths, leaving the cache as it was', () => {
    const session = new ReferenceSession(base);
    expect(() => session.forwardEmbeddings([new Float64Array(8), new Float64Array(3)])).toThrow(
      /^embeddings: embeddings\[1\]: has 3 numbers, expected hidden_size 8/,
    );
    const row = new Float64Array(4); // one key/value head of 4 features
    expect(() => session.prefill([[row], [row]], [[row], [new Float64Array(5)]])).toThrow(InvalidInputError);
    expect(session.length).toBe(0);
    session.prefill([[row], [row]], [[row], [row]]);
    expect(session.length).toBe(1);
  });

  it('refuses two prompt-learning adapters, a weight on one, and a prefix of the wrong width', () => {
    const a = promptOf(base, virtual);
    const run = new ReferenceSession(base);
    run.forward(virtual);
    const p = prefixOf(run);
    expect(() => new PeftReferenceSession(base, [{ adapter: a }, { adapter: p }])).toThrow(
      IncompatibleAdapterError,
    );
    expect(() => new PeftReferenceSession(base, [{ adapter: a, weight: 0.5 }])).toThrow(
      /adapters\[0\]\.weight/,
    );
    const mha = tinyModel({ num_key_value_heads: 2 }); // the prefix holds 1 key/value head, this model 2
    expect(() => new PeftReferenceSession(mha, [{ adapter: p }])).toThrow(IncompatibleAdapterError);
  });
});

// ------------------------------------------------------------------------------------------------

const stories = parseLlama2cCheckpoint(
  new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))),
  'stories260K.bin',
);
const PROMPT = [1, 403, 407, 261, 378]; // "Once upon a time"

function greedy(session: ReferenceSession, prompt: number[], n: number): number[] {
  let logits = session.forward(prompt).at(-1) as Float64Array;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    out.push(argmax(logits));
    if (i < n - 1) logits = session.step(out[i]);
  }
  return out;
}

describe('stories260K (8 query heads, 4 key/value heads) with prompt learning', () => {
  const baseText = greedy(new ReferenceSession(stories), PROMPT, 16);

  it('prefix tuning from a run of the prompt continues that run (grouped-query layout)', () => {
    const run = new ReferenceSession(stories);
    run.forward(PROMPT);
    const session = new PeftReferenceSession(stories, [{ adapter: prefixOf(run) }]);
    const logits = session.forward([403]);
    const want = referenceLogits(stories, [...PROMPT, 403]).at(-1) as Float64Array;
    expect(maxAbsDiff(logits[0], want)).toBeLessThan(1e-4);
  });

  const cases: [string, () => ActiveAdapter[]][] = [
    // Four random virtual tokens before BOS often leave this model's greedy text unchanged (seed 0,
    // the fixture default, does): these seeds are checked to change it.
    ['prompt tuning', () => [{ adapter: loadAdapter(makePromptTuningAdapter({ seed: 3 })) }]],
    ['P-tuning', () => [{ adapter: loadAdapter(makePTuningAdapter({ seed: 2, scale: 3 })) }]],
    ['prefix tuning', () => [{ adapter: loadAdapter(makePrefixTuningAdapter()) }]],
    [
      'prompt tuning with a LoRA',
      () => [
        { adapter: loadAdapter(makePromptTuningAdapter()) },
        { adapter: loadAdapter(makeLoraAdapter()), weight: 0.5 },
      ],
    ],
  ];
  for (const [name, make] of cases) {
    it(`${name} changes the greedy continuation; steps agree with one block`, () => {
      const adapters = make();
      const session = new PeftReferenceSession(stories, adapters);
      expect(session.numVirtualTokens).toBe(4);
      const text = greedy(session, PROMPT, 16);
      expect(text).not.toEqual(baseText);
      const tokens = [...PROMPT, ...text.slice(0, -1)];
      const block = referenceLogitsWithAdapters(stories, adapters, tokens);
      const stepped = new PeftReferenceSession(stories, adapters);
      tokens.forEach((t, i) => expect(maxAbsDiff(stepped.step(t), block[i])).toBeLessThan(1e-9));
    });
  }
});
