/**
 * src/methods/: the slot feeds of PEFT adapters, applied through the slot formula of
 * src/graph/adapter-slots.ts in a float64 forward pass written here, give the logits of the PEFT
 * oracle (src/reference/peft.ts) at every position, for every method and for blends.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { IncompatibleAdapterError, InvalidInputError } from '../src/errors.js';
import { type Checkpoint, headDim } from '../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { type PeftAdapter, loraModules } from '../src/formats/peft-adapter.js';
import { float32Entry } from '../src/formats/safetensors.js';
import { adapterFeeds } from '../src/methods/combine.js';
import { doraScale, doraWeightNorm } from '../src/methods/dora.js';
import { type AdapterFeeds, checkpointBase } from '../src/methods/feeds.js';
import { METHODS } from '../src/methods/registry.js';
import { linearModules } from '../src/methods/targets.js';
import { ReferenceSession, referenceLogits } from '../src/reference/llama.js';
import { type ActiveAdapter, referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { fixture } from './fixtures.js';
import {
  STORIES_CONFIG,
  loadAdapter,
  makeAdaloraAdapter,
  makeIa3Adapter,
  makeLoraAdapter,
  makePTuningAdapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
} from './helpers/peft-fixtures.js';

const stories = parseLlama2cCheckpoint(
  new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))),
  'stories260K.bin',
);
const base = checkpointBase(stories);
/** "Once upon a time" and 19 more tokens: 24 positions. */
const TOKENS = [1, 403, 407, 261, 378, ...Array.from({ length: 19 }, (_, i) => (i * 97 + 31) % 512)];

/**
 * The slot formula of src/graph/adapter-slots.ts in float64, on the reference forward pass:
 * y = ((x ⊙ scale_in) · Wᵀ) ⊙ scale_out + (x · a) · b; virtual token ids vocab_size + k embed as
 * row k of the prompt slot; a prefix is the start of the KV cache.
 */
class SlotSession extends ReferenceSession {
  constructor(
    ckpt: Checkpoint,
    private readonly feeds: AdapterFeeds,
  ) {
    super(ckpt);
    const prefix = feeds.prefix;
    if (prefix !== undefined) {
      const c = this.config;
      const hd = headDim(c);
      const heads = c.num_key_value_heads;
      // [kv_heads, P, head_dim] per layer -> one cache row of kv_heads * head_dim per token.
      const rows = (slab: Float32Array) =>
        Array.from({ length: prefix.tokens }, (_, t) => {
          const row = new Float64Array(heads * hd);
          for (let h = 0; h < heads; h++)
            for (let j = 0; j < hd; j++) row[h * hd + j] = slab[(h * prefix.tokens + t) * hd + j];
          return row;
        });
      this.prefill(prefix.keys.map(rows), prefix.values.map(rows));
    }
  }

  /** The logits of the real tokens; the prompt slot's virtual tokens go first. */
  run(tokens: readonly number[]): Float64Array[] {
    const c = this.config;
    const virtual = this.feeds.prompt?.tokens ?? 0;
    const ids = [...Array.from({ length: virtual }, (_, k) => c.vocab_size + k), ...tokens];
    return this.forwardEmbeddings(ids.map((id) => this.slotEmbed(id))).slice(virtual);
  }

  private slotEmbed(id: number): Float64Array {
    const d = this.config.hidden_size;
    const k = id - this.config.vocab_size;
    if (k < 0) return this.embed(id);
    const prompt = this.feeds.prompt;
    if (prompt === undefined) throw new Error('virtual token without a prompt');
    return Float64Array.from(prompt.embeddings.subarray(k * d, (k + 1) * d));
  }

  protected override linear(x: Float64Array, module: string): Float64Array {
    const f = this.feeds.modules.get(module);
    if (f === undefined) return super.linear(x, module);
    const { scaleIn, scaleOut, rank: r, a, b } = f;
    const y = super.linear(scaleIn === undefined ? x : x.map((v, i) => v * scaleIn[i]), module);
    const out = y.length;
    const xa = new Float64Array(r);
    for (let k = 0; k < r; k++) for (let i = 0; i < x.length; i++) xa[k] += x[i] * a[i * r + k];
    return y.map((v, o) => {
      let s = 0;
      for (let k = 0; k < r; k++) s += xa[k] * b[k * out + o];
      return (scaleOut === undefined ? v : v * scaleOut[o]) + s;
    });
  }
}

function maxDiff(a: Float64Array[], b: Float64Array[]): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  a.forEach((row, t) => {
    expect(row.length).toBe(b[t].length);
    for (let i = 0; i < row.length; i++) m = Math.max(m, Math.abs(row[i] - b[t][i]));
  });
  return m;
}

/** Every feed has the slot shapes of its module. */
function checkShapes(feeds: AdapterFeeds): void {
  const dims = new Map(linearModules(STORIES_CONFIG).map((m) => [m.module, m]));
  for (const [module, f] of feeds.modules) {
    const m = dims.get(module);
    expect(m, module).toBeDefined();
    if (m === undefined) continue;
    expect(f.a.length, module).toBe(m.in * f.rank);
    expect(f.b.length, module).toBe(f.rank * m.out);
    if (f.scaleIn !== undefined) expect(f.scaleIn.length).toBe(m.in);
    if (f.scaleOut !== undefined) expect(f.scaleOut.length).toBe(m.out);
  }
  const c = STORIES_CONFIG;
  if (feeds.prompt !== undefined)
    expect(feeds.prompt.embeddings.length).toBe(feeds.prompt.tokens * c.hidden_size);
  if (feeds.prefix !== undefined) {
    const size = c.num_key_value_heads * feeds.prefix.tokens * headDim(c);
    expect(feeds.prefix.keys).toHaveLength(c.num_hidden_layers);
    expect(feeds.prefix.values).toHaveLength(c.num_hidden_layers);
    for (const kv of [...feeds.prefix.keys, ...feeds.prefix.values]) expect(kv.length).toBe(size);
  }
}

const baseLogits = referenceLogits(stories, TOKENS);
const load = loadAdapter;

/** Feeds through the slot formula vs the oracle, and the adapters must change the logits. */
function expectOracle(adapters: ActiveAdapter[], tolerance: number): AdapterFeeds {
  const feeds = adapterFeeds(adapters, base);
  checkShapes(feeds);
  const want = referenceLogitsWithAdapters(stories, adapters, TOKENS);
  const got = new SlotSession(stories, feeds).run(TOKENS);
  const diff = maxDiff(got, want);
  expect(diff).toBeLessThan(tolerance);
  expect(maxDiff(want, baseLogits)).toBeGreaterThan(1e-2);
  return feeds;
}

// Feeds copied from the file (prompt, prefix, IA3 at weight 1) are exact: float64 vs float64.
// Folding a scaling or weight into float32 feeds rounds once: 1e-5.
const EXACT = 1e-9;
const FLOAT32 = 1e-5;

describe('each method alone on stories260K: slot feeds give the PEFT oracle logits at every position', () => {
  const cases: [string, () => ActiveAdapter[], number][] = [
    ['LoRA', () => [{ adapter: load(makeLoraAdapter()) }], FLOAT32],
    [
      'LoRA with a blend weight',
      () => [{ adapter: load(makeLoraAdapter({ seed: 4 })), weight: 0.37 }],
      FLOAT32,
    ],
    ['rsLoRA', () => [{ adapter: load(makeLoraAdapter({ rslora: true, alpha: 6, r: 3 })) }], FLOAT32],
    [
      'LoRA with rank_pattern and alpha_pattern',
      () => [
        {
          adapter: load(
            makeLoraAdapter({
              rankPattern: { q_proj: 2, 'layers.1.mlp.down_proj': 6 },
              alphaPattern: { v_proj: 3, 'layers.3.self_attn.o_proj': 20 },
            }),
          ),
        },
      ],
      FLOAT32,
    ],
    ['DoRA', () => [{ adapter: load(makeLoraAdapter({ dora: true })) }], FLOAT32],
    [
      'DoRA with rsLoRA and a weight',
      () => [{ adapter: load(makeLoraAdapter({ dora: true, rslora: true, seed: 5 })), weight: 0.6 }],
      FLOAT32,
    ],
    ['AdaLoRA (pruned ranks)', () => [{ adapter: load(makeAdaloraAdapter()) }], FLOAT32],
    [
      'AdaLoRA with a weight',
      () => [{ adapter: load(makeAdaloraAdapter({ seed: 2 })), weight: 1.5 }],
      FLOAT32,
    ],
    ['IA3', () => [{ adapter: load(makeIa3Adapter()) }], EXACT],
    ['prompt tuning', () => [{ adapter: load(makePromptTuningAdapter({ seed: 3 })) }], EXACT],
    ['P-tuning', () => [{ adapter: load(makePTuningAdapter({ seed: 2, scale: 3 })) }], EXACT],
    ['prefix tuning', () => [{ adapter: load(makePrefixTuningAdapter()) }], EXACT],
  ];
  for (const [name, make, tolerance] of cases) {
    it(name, () => {
      expectOracle(make(), tolerance);
    });
  }

  it('feeds only the modules an adapter targets, each at its rank (rank_pattern honoured)', () => {
    const a = load(
      makeLoraAdapter({ targets: ['q_proj', 'v_proj'], rankPattern: { 'layers.2.self_attn.q_proj': 7 } }),
    );
    const feeds = adapterFeeds([{ adapter: a }], base);
    const expected = [0, 1, 2, 3, 4].flatMap((l) => [
      `model.layers.${l}.self_attn.q_proj`,
      `model.layers.${l}.self_attn.v_proj`,
    ]);
    expect([...feeds.modules.keys()]).toEqual(expected);
    for (const [module, f] of feeds.modules) {
      expect(f.rank).toBe(module === 'model.layers.2.self_attn.q_proj' ? 7 : 4);
      expect(f.scaleIn).toBeUndefined();
      expect(f.scaleOut).toBeUndefined();
    }
    expect(feeds.prompt).toBeUndefined();
    expect(feeds.prefix).toBeUndefined();
    expect(adapterFeeds([], base).modules.size).toBe(0);
  });

  it('IA3 feeds scale_in on feedforward modules and scale_out on the others, no branch', () => {
    const feeds = adapterFeeds([{ adapter: load(makeIa3Adapter()) }], base);
    for (const [module, f] of feeds.modules) {
      expect(f.rank).toBe(0);
      const ff = module.endsWith('down_proj');
      expect(f.scaleIn !== undefined).toBe(ff);
      expect(f.scaleOut !== undefined).toBe(!ff);
    }
  });

  it('registers one method per PEFT type', () => {
    expect([...METHODS.keys()].sort()).toEqual(
      ['ADALORA', 'IA3', 'LORA', 'PREFIX_TUNING', 'PROMPT_TUNING', 'P_TUNING'].sort(),
    );
    for (const [type, m] of METHODS) expect(m.peftType).toBe(type);
  });
});

describe('blends on stories260K', () => {
  it('three LoRA adapters with weights concatenate along the rank', () => {
    const adapters = [
      { adapter: load(makeLoraAdapter({ seed: 1 }), 'one'), weight: 0.5 },
      {
        adapter: load(makeLoraAdapter({ seed: 2, targets: ['q_proj', 'v_proj'], r: 2 }), 'two'),
        weight: 0.8,
      },
      { adapter: load(makeLoraAdapter({ seed: 3, rslora: true, r: 3 }), 'three'), weight: -0.3 },
    ];
    const feeds = expectOracle(adapters, FLOAT32);
    // A = [A₁ A₂ A₃] exactly; B = [w₁ s₁ B₁; w₂ s₂ B₂; w₃ s₃ B₃]: the single feeds stacked.
    const single = adapters.map((a) => adapterFeeds([a], base));
    const q = 'model.layers.1.self_attn.q_proj';
    const o = 'model.layers.1.self_attn.o_proj';
    const fq = feeds.modules.get(q);
    expect(fq?.rank).toBe(4 + 2 + 3);
    expect(feeds.modules.get(o)?.rank).toBe(4 + 3);
    const parts = single.map((s) => s.modules.get(q));
    const n = 64;
    let offset = 0;
    for (const p of parts) {
      if (p === undefined || fq === undefined) throw new Error('missing feed');
      for (let i = 0; i < n; i++)
        for (let k = 0; k < p.rank; k++) expect(fq.a[i * fq.rank + offset + k]).toBe(p.a[i * p.rank + k]);
      expect(Array.from(fq.b.subarray(offset * 64, (offset + p.rank) * 64))).toEqual(Array.from(p.b));
      offset += p.rank;
    }
  });

  it('LoRA with AdaLoRA', () => {
    expectOracle(
      [
        { adapter: load(makeLoraAdapter({ seed: 6 })), weight: 0.7 },
        { adapter: load(makeAdaloraAdapter({ seed: 1 })), weight: 0.9 },
      ],
      FLOAT32,
    );
  });

  it('DoRA then LoRA, and LoRA then DoRA then DoRA (PEFT sequential forward; order matters)', () => {
    const dora1 = load(makeLoraAdapter({ dora: true, seed: 7 }), 'dora1');
    const dora2 = load(
      makeLoraAdapter({ dora: true, seed: 8, targets: ['v_proj', 'down_proj'], r: 2 }),
      'dora2',
    );
    const plain = load(makeLoraAdapter({ seed: 9, targets: ['q_proj', 'v_proj', 'down_proj'] }), 'plain');
    expectOracle(
      [
        { adapter: dora1, weight: 0.7 },
        { adapter: plain, weight: 0.5 },
      ],
      FLOAT32,
    );
    const forward = [
      { adapter: plain, weight: 0.5 },
      { adapter: dora1, weight: 0.8 },
      { adapter: dora2, weight: 1.2 },
    ];
    const feeds = expectOracle(forward, FLOAT32);
    const reversed = expectOracle([...forward].reverse(), FLOAT32);
    const m = 'model.layers.0.self_attn.v_proj';
    expect(feeds.modules.get(m)?.rank).toBe(4 + 4 + 2);
    const a = new SlotSession(stories, feeds).run(TOKENS);
    const b = new SlotSession(stories, reversed).run(TOKENS);
    expect(maxDiff(a, b)).toBeGreaterThan(1e-4);
  });

  it('a DoRA adapter at weight 0 still applies magnitude / ||W||', () => {
    const feeds = expectOracle(
      [{ adapter: load(makeLoraAdapter({ dora: true, seed: 10 })), weight: 0 }],
      FLOAT32,
    );
    const f = feeds.modules.get('model.layers.0.mlp.up_proj');
    expect(f?.b.every((v) => v === 0)).toBe(true);
    expect(f?.scaleOut?.some((g) => Math.abs(g - 1) > 1e-3)).toBe(true);
  });

  it('two IA3 adapters blend as l = Σ wᵢ lᵢ', () => {
    expectOracle(
      [
        { adapter: load(makeIa3Adapter({ seed: 1 })), weight: 0.6 },
        {
          adapter: load(makeIa3Adapter({ seed: 2, targets: ['q_proj', 'v_proj', 'down_proj'] })),
          weight: 0.4,
        },
      ],
      FLOAT32,
    );
  });

  it('prompt tuning with a blend of two LoRA adapters (virtual tokens through the adapted linears)', () => {
    const feeds = expectOracle(
      [
        { adapter: load(makeLoraAdapter({ seed: 1 })), weight: 0.5 },
        { adapter: load(makePromptTuningAdapter({ seed: 3 })) },
        { adapter: load(makeLoraAdapter({ seed: 2, targets: ['v_proj'] })), weight: 0.25 },
      ],
      FLOAT32,
    );
    expect(feeds.prompt?.tokens).toBe(4);
  });

  it('P-tuning with a DoRA adapter, and prefix tuning with LoRA + DoRA', () => {
    expectOracle(
      [
        { adapter: load(makeLoraAdapter({ dora: true, seed: 11 })), weight: 0.9 },
        { adapter: load(makePTuningAdapter({ seed: 2 })), weight: 1 },
      ],
      FLOAT32,
    );
    const feeds = expectOracle(
      [
        { adapter: load(makePrefixTuningAdapter({ seed: 5 })) },
        { adapter: load(makeLoraAdapter({ seed: 12 })), weight: 0.5 },
        {
          adapter: load(makeLoraAdapter({ dora: true, seed: 13, targets: ['k_proj', 'o_proj'] })),
          weight: 0.5,
        },
      ],
      FLOAT32,
    );
    expect(feeds.prefix?.tokens).toBe(4);
  });
});

describe('what the runtime refuses', () => {
  const lora = () => load(makeLoraAdapter(), 'lora');
  const expectError = (
    f: () => unknown,
    type: typeof IncompatibleAdapterError | typeof InvalidInputError,
    field: string | undefined,
    message: RegExp,
  ) => {
    let error: unknown;
    try {
      f();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(type);
    expect((error as InstanceType<typeof type>).field).toBe(field);
    expect((error as Error).message).toMatch(message);
  };

  it('an adapter for another base, naming the first module the base lacks', () => {
    const six = load(makeLoraAdapter({ base: { ...STORIES_CONFIG, num_hidden_layers: 6 } }), 'six');
    // The first tensor, in file order, of a module stories260K (5 layers) does not have.
    const first = [...six.tensors.keys()].find((n) => n.includes('.layers.5.')) as string;
    const module = /^base_model\.model\.(.+)\.lora_[AB]\.weight$/.exec(first)?.[1] as string;
    expect(module).toMatch(/^model\.layers\.5\./);
    expectError(
      () => adapterFeeds([{ adapter: lora() }, { adapter: six }], base),
      IncompatibleAdapterError,
      first,
      new RegExp(
        `^six/adapter_model\\.safetensors: .*module ${module.replaceAll('.', '\\.')} does not exist`,
      ),
    );
  });

  it('LoRA on embed_tokens (lora_embedding_A / _B): not supported yet', () => {
    const a = load(makeLoraAdapter({ targets: ['embed_tokens', 'q_proj'] }), 'emb');
    expect([...loraModules(a).values()].some((t) => t.kind === 'embedding')).toBe(true);
    expectError(
      () => adapterFeeds([{ adapter: a }], base),
      IncompatibleAdapterError,
      'base_model.model.model.embed_tokens.lora_embedding_A',
      /emb\/adapter_model\.safetensors: .*LoRA on model\.embed_tokens .*not supported yet/,
    );
  });

  it('saved base weights: accepted when equal to the base, refused (not supported yet) when they differ', () => {
    const name = 'base_model.model.lm_head.weight';
    const withSaved = (data: Float32Array): PeftAdapter => {
      const a = lora();
      return { ...a, tensors: new Map([...a.tensors, [name, float32Entry(data, [512, 64])]]) };
    };
    const own = Float32Array.from(base.weight('lm_head'));
    const same = adapterFeeds([{ adapter: withSaved(own) }], base);
    const plain = adapterFeeds([{ adapter: lora() }], base);
    expect([...same.modules.keys()]).toEqual([...plain.modules.keys()]);
    const changed = Float32Array.from(own);
    changed[100] += 0.5;
    expectError(
      () => adapterFeeds([{ adapter: withSaved(changed) }], base),
      IncompatibleAdapterError,
      name,
      /differs from the base model's lm_head weight.*not supported yet/,
    );
  });

  it('two prompt-learning adapters, IA3 with LoRA, weights on prompt adapters, non-finite weights', () => {
    const prompt = load(makePromptTuningAdapter(), 'prompt');
    const prefix = load(makePrefixTuningAdapter(), 'prefix');
    expectError(
      () => adapterFeeds([{ adapter: prompt }, { adapter: lora() }, { adapter: prefix }], base),
      IncompatibleAdapterError,
      undefined,
      /2 prompt-learning adapters \(prompt, prefix\)/,
    );
    expectError(
      () => adapterFeeds([{ adapter: load(makeIa3Adapter()) }, { adapter: lora() }], base),
      IncompatibleAdapterError,
      undefined,
      /IA3 cannot be combined with LoRA/,
    );
    expectError(
      () =>
        adapterFeeds([{ adapter: load(makeAdaloraAdapter()) }, { adapter: load(makeIa3Adapter()) }], base),
      IncompatibleAdapterError,
      undefined,
      /IA3 cannot be combined/,
    );
    expectError(
      () => adapterFeeds([{ adapter: lora() }, { adapter: prompt, weight: 0.5 }], base),
      InvalidInputError,
      'adapters[1].weight',
      /no blend weight/,
    );
    for (const w of [NaN, Infinity, -Infinity]) {
      expectError(
        () => adapterFeeds([{ adapter: lora(), weight: w }], base),
        InvalidInputError,
        'adapters[0].weight',
        /finite/,
      );
    }
    // A method called directly refuses a weight on a prompt adapter too.
    expect(() => METHODS.get('PREFIX_TUNING')?.feeds(prefix, 2, base)).toThrow(InvalidInputError);
  });

  it('IA3 adapters that scale the input and the output of one module cannot blend', () => {
    const a = load(makeIa3Adapter({ seed: 1 }), 'ia3-a');
    const b = load(makeIa3Adapter({ seed: 2, feedforward: ['v_proj', 'down_proj'] }), 'ia3-b');
    expectError(
      () => adapterFeeds([{ adapter: a }, { adapter: b }], base),
      IncompatibleAdapterError,
      'feedforward_modules',
      /^ia3-b\/adapter_config\.json: .*model\.layers\.0\.self_attn\.v_proj/,
    );
  });
});

describe('DoRA norm', () => {
  /** Seeded values in [-1, 1). */
  const random = (n: number, seed: number) => {
    let s = seed;
    return Float32Array.from({ length: n }, () => {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      return s / 2 ** 30 - 1;
    });
  };

  it('||W + s B A|| per row from W Aᵀ and A Aᵀ equals the dense computation', () => {
    for (const [out, n, r, s] of [
      [5, 7, 3, 1.7],
      [9, 4, 6, -0.4],
      [3, 11, 1, 2.5],
    ]) {
      const w = random(out * n, out);
      const a = random(r * n, n + 100);
      const b = random(out * r, r + 200);
      const dims = { rank: r, in: n, out };
      const dense = Array.from({ length: out }, (_, o) => {
        let ss = 0;
        for (let i = 0; i < n; i++) {
          let ba = 0;
          for (let k = 0; k < r; k++) ba += b[o * r + k] * a[k * n + i];
          ss += (w[o * n + i] + s * ba) ** 2;
        }
        return Math.sqrt(ss);
      });
      const got = doraWeightNorm(w, a, b, s, dims);
      got.forEach((v, o) => expect(Math.abs(v - dense[o])).toBeLessThan(1e-12 * dense[o]));
      const m = random(out, 7);
      const g = doraScale(w, a, b, s, m, dims, { file: 'f', tensor: 't' });
      g.forEach((v, o) =>
        expect(Math.abs(v - m[o] / dense[o])).toBeLessThan(1e-12 * Math.abs(m[o] / dense[o]) + 1e-300),
      );
    }
  });

  it('a row whose W + s B A is zero is refused (PEFT would divide by zero)', () => {
    const w = Float32Array.from([1, 2, 0, 0]); // [2, 2]: the second row is zero
    const a = Float32Array.from([1, 1]);
    const b = Float32Array.from([1, 0]);
    expect(Array.from(doraWeightNorm(w, a, b, 0, { rank: 1, in: 2, out: 2 }))).toEqual([Math.sqrt(5), 0]);
    expect(() =>
      doraScale(
        w,
        a,
        b,
        0,
        [1, 1],
        { rank: 1, in: 2, out: 2 },
        { file: 'x/adapter_model.safetensors', tensor: 'm' },
      ),
    ).toThrow(IncompatibleAdapterError);
  });
});
