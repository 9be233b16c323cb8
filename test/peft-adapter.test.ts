import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdapterFormatError, IncompatibleAdapterError } from '../src/errors.js';
import {
  type PeftAdapter,
  adapterTensor,
  checkAdapterAgainstBase,
  createPeftAdapter,
  ia3Modules,
  loraModules,
  parsePeftAdapter,
  promptLearningDims,
  savedBaseWeights,
  serializePeftAdapter,
} from '../src/formats/peft-adapter.js';
import { type PromptLearningConfig } from '../src/formats/peft-config.js';
import { formatPeftJson } from '../src/formats/python-json.js';
import { type SafetensorsEntry, float32Entry, serializeSafetensors } from '../src/formats/safetensors.js';
import { synthConfig } from '../src/formats/synth.js';
import { fixture } from './fixtures.js';
import {
  type AdapterFiles,
  STORIES_CONFIG,
  loadAdapter,
  makeAdaloraAdapter,
  makeIa3Adapter,
  makeLoraAdapter,
  makePTuningAdapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
} from './helpers/peft-fixtures.js';

const base = STORIES_CONFIG;

function realFiles(name: string) {
  return {
    config: new Uint8Array(readFileSync(fixture(`peft/${name}/adapter_config.json`))),
    weights: new Uint8Array(readFileSync(fixture(`peft/${name}/adapter_model.safetensors`))),
  };
}

function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

function expectError(f: () => unknown, type: typeof AdapterFormatError, message: string | RegExp): void {
  const e = thrown(f);
  expect(e).toBeInstanceOf(type);
  if (typeof message === 'string') expect(e.message).toBe(message);
  else expect(e.message).toMatch(message);
}

/** Files from a config object and [name, shape, fill] tensors (F32), without any validation. */
function build(config: Record<string, unknown>, tensors: [string, number[], number?][]) {
  const entries: [string, SafetensorsEntry][] = tensors.map(([name, shape, fill]) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map(
      (_, i) => fill ?? 0.01 * ((i % 7) - 3),
    );
    return [name, float32Entry(data, shape)];
  });
  return {
    config: new TextEncoder().encode(formatPeftJson(config)),
    weights: serializeSafetensors(entries, { format: 'pt' }),
  };
}

const LORA_CONFIG = {
  peft_type: 'LORA',
  task_type: 'CAUSAL_LM',
  r: 2,
  lora_alpha: 4,
  target_modules: ['q_proj'],
};
const q = (i: number) => `base_model.model.model.layers.${i}.self_attn.q_proj`;
/** A valid LoRA file body for LORA_CONFIG on the stories base: q_proj of the 5 layers. */
const qTensors = (): [string, number[]][] =>
  [0, 1, 2, 3, 4].flatMap((i): [string, number[]][] => [
    [`${q(i)}.lora_A.weight`, [2, 64]],
    [`${q(i)}.lora_B.weight`, [64, 2]],
  ]);

describe('real GPT-2 PEFT adapters', () => {
  it('parse with their tensors in file order', () => {
    const chess = parsePeftAdapter(realFiles('chessgpt-gpt2-lora'), 'chessgpt');
    expect(chess.tensors.size).toBe(24);
    expect(chess.metadata).toEqual({ format: 'pt' });
    expect([...chess.tensors.keys()].slice(0, 3)).toEqual([
      'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight',
      'base_model.model.transformer.h.0.attn.c_attn.lora_B.weight',
      'base_model.model.transformer.h.1.attn.c_attn.lora_A.weight',
    ]);
    const modules = loraModules(chess);
    expect([...modules.keys()].slice(0, 4)).toEqual(
      ['0', '1', '10', '11'].map((i) => `transformer.h.${i}.attn.c_attn`),
    );
    expect(modules.get('transformer.h.5.attn.c_attn')).toEqual({
      module: 'transformer.h.5.attn.c_attn',
      kind: 'linear',
      a: 'base_model.model.transformer.h.5.attn.c_attn.lora_A.weight',
      b: 'base_model.model.transformer.h.5.attn.c_attn.lora_B.weight',
      rank: 8,
      in: 768,
      out: 2304,
    });

    const tigrinya = parsePeftAdapter(realFiles('gpt2-tigrinya-lora'));
    expect(tigrinya.tensors.size).toBe(72);
    const t = loraModules(tigrinya);
    expect(t.size).toBe(36);
    expect(t.get('transformer.h.0.attn.c_proj')).toMatchObject({ rank: 8, in: 768, out: 768 });
    expect(t.get('transformer.h.11.mlp.c_proj')).toMatchObject({ rank: 8, in: 3072, out: 768 });
    expect(tigrinya.tensors.get('base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight')?.shape).toEqual([
      8, 3072,
    ]);
  });

  it('read the stored float32 values', () => {
    const files = realFiles('chessgpt-gpt2-lora');
    const a = adapterTensor(
      parsePeftAdapter(files),
      'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight',
    );
    expect(a.length).toBe(8 * 768);
    // the first tensor's data starts right after the 8-byte length and the 3024-byte header
    const view = new DataView(files.weights.buffer, files.weights.byteOffset);
    for (const i of [0, 1, 2, 767, 6143]) expect(a[i]).toBe(view.getFloat32(8 + 3024 + 4 * i, true));
    expect([a[0], a[1], a[2]]).toEqual([
      Math.fround(-0.0380745455622673),
      Math.fround(-0.03582805395126343),
      Math.fround(0.029171913862228394),
    ]);
  });

  it('export back byte for byte', () => {
    for (const name of ['chessgpt-gpt2-lora', 'gpt2-tigrinya-lora']) {
      const files = realFiles(name);
      const out = serializePeftAdapter(parsePeftAdapter(files, name));
      expect([...out.keys()]).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      expect(
        Buffer.compare(
          Buffer.from(out.get('adapter_model.safetensors') as Uint8Array),
          Buffer.from(files.weights),
        ),
      ).toBe(0);
      expect(
        Buffer.compare(Buffer.from(out.get('adapter_config.json') as Uint8Array), Buffer.from(files.config)),
      ).toBe(0);
    }
  });

  it('are refused on a Llama base, naming the first GPT-2 module', () => {
    const adapter = parsePeftAdapter(realFiles('chessgpt-gpt2-lora'), 'chessgpt');
    const e = thrown(() => checkAdapterAgainstBase(adapter, base));
    expect(e).toBeInstanceOf(IncompatibleAdapterError);
    expect(e.message).toMatch(
      /^chessgpt\/adapter_model\.safetensors: base_model\.model\.transformer\.h\.0\.attn\.c_attn\.lora_A\.weight: module transformer\.h\.0\.attn\.c_attn does not exist in the base model \(llama, 5 layers, hidden 64/,
    );
  });
});

describe('adapters written in PEFT format round-trip', () => {
  const cases: [string, () => AdapterFiles][] = [
    ['LoRA', () => makeLoraAdapter()],
    [
      'LoRA rslora + rank/alpha patterns',
      () =>
        makeLoraAdapter({
          rslora: true,
          rankPattern: { q_proj: 2, 'layers.0.mlp.up_proj': 6 },
          alphaPattern: { v_proj: 3 },
        }),
    ],
    [
      'LoRA layers_to_transform',
      () => makeLoraAdapter({ targets: ['q_proj', 'v_proj'], layersToTransform: [0, 2] }),
    ],
    ['LoRA regex target', () => makeLoraAdapter({ targets: '.*\\.(q|o)_proj' })],
    ['LoRA all-linear', () => makeLoraAdapter({ targets: 'all-linear' })],
    ['LoRA lm_head + embed_tokens', () => makeLoraAdapter({ targets: ['lm_head', 'embed_tokens'] })],
    ['LoRA F16', () => makeLoraAdapter({ dtype: 'F16' })],
    ['LoRA BF16', () => makeLoraAdapter({ dtype: 'BF16', targets: ['k_proj'] })],
    ['DoRA', () => makeLoraAdapter({ dora: true })],
    ['AdaLoRA', () => makeAdaloraAdapter()],
    ['AdaLoRA unpruned', () => makeAdaloraAdapter({ prune: false })],
    ['IA3', () => makeIa3Adapter()],
    [
      'IA3 regex',
      () => makeIa3Adapter({ targets: '.*\\.(k_proj|up_proj|down_proj)', feedforward: '.*(up|down)_proj' }),
    ],
    ['prompt tuning', () => makePromptTuningAdapter()],
    ['P-tuning', () => makePTuningAdapter({ numVirtualTokens: 6 })],
    ['prefix tuning', () => makePrefixTuningAdapter()],
  ];

  it.each(cases)('%s: parse, fit the base, export byte for byte', (_, make) => {
    const files = make();
    const adapter = loadAdapter(files);
    expect(() => checkAdapterAgainstBase(adapter, base)).not.toThrow();
    const out = serializePeftAdapter(adapter);
    for (const name of ['adapter_config.json', 'adapter_model.safetensors']) {
      expect(
        Buffer.compare(Buffer.from(out.get(name) as Uint8Array), Buffer.from(files.get(name) as Uint8Array)),
      ).toBe(0);
    }
    for (const [name] of adapter.tensors) {
      const v = adapterTensor(adapter, name);
      expect(v.some((x) => x !== 0)).toBe(true);
    }
  });

  it('LoRA: ranks follow rank_pattern, names are PEFT’s', () => {
    const adapter = loadAdapter(
      makeLoraAdapter({ r: 4, rankPattern: { q_proj: 2, 'layers.0.mlp.up_proj': 6 } }),
    );
    const m = loraModules(adapter);
    expect(m.size).toBe(35);
    expect(m.get('model.layers.3.self_attn.q_proj')).toEqual({
      module: 'model.layers.3.self_attn.q_proj',
      kind: 'linear',
      a: 'base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight',
      b: 'base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight',
      rank: 2,
      in: 64,
      out: 64,
    });
    expect(m.get('model.layers.0.mlp.up_proj')).toMatchObject({ rank: 6, in: 64, out: 172 });
    expect(m.get('model.layers.1.mlp.up_proj')).toMatchObject({ rank: 4 });
    const dora = loraModules(loadAdapter(makeLoraAdapter({ dora: true, targets: ['v_proj'] })));
    expect(dora.get('model.layers.0.self_attn.v_proj')?.magnitude).toBe(
      'base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector',
    );
    const emb = loraModules(loadAdapter(makeLoraAdapter({ targets: ['embed_tokens'] })));
    expect(emb.get('model.embed_tokens')).toMatchObject({
      kind: 'embedding',
      in: 512,
      out: 64,
      a: 'base_model.model.model.embed_tokens.lora_embedding_A',
    });
  });

  it('AdaLoRA: tensors keep the true rows of each mask', () => {
    const adapter = loadAdapter(makeAdaloraAdapter({ initR: 6 }));
    const config = adapter.config;
    if (config.peft_type !== 'ADALORA' || config.rank_pattern === null) throw new Error('expected masks');
    for (const [key, mask] of Object.entries(config.rank_pattern)) {
      const module = key.slice(0, -'.lora_E'.length);
      const m = loraModules(adapter).get(module);
      expect(m?.rank).toBe(mask.filter(Boolean).length);
      expect(adapter.tensors.get(`base_model.model.${module}.lora_E`)?.shape).toEqual([m?.rank, 1]);
    }
  });

  it('IA3: [1, in] on feedforward modules, [out, 1] elsewhere', () => {
    const m = ia3Modules(loadAdapter(makeIa3Adapter()));
    expect(m.size).toBe(15);
    expect(m.get('model.layers.2.mlp.down_proj')).toEqual({
      module: 'model.layers.2.mlp.down_proj',
      tensor: 'base_model.model.model.layers.2.mlp.down_proj.ia3_l',
      feedforward: true,
      features: 172,
    });
    expect(m.get('model.layers.2.self_attn.k_proj')).toMatchObject({ feedforward: false, features: 32 });
  });

  it('prefix tuning: sizes as PEFT prepares them for grouped-query attention', () => {
    const adapter = loadAdapter(makePrefixTuningAdapter({ numVirtualTokens: 3 }));
    expect(adapter.tensors.get('prompt_embeddings')?.shape).toEqual([3, 320]);
    expect(promptLearningDims(adapter.config as PromptLearningConfig, base)).toEqual({
      numVirtualTokens: 3,
      rows: 3,
      tokenDim: 32,
      numAttentionHeads: 4,
      numLayers: 5,
      cols: 320,
    });
    // a config written before PEFT rescaled it (token_dim 64, 8 heads) gives the same sizes
    const c = { ...(adapter.config as PromptLearningConfig), token_dim: 64, num_attention_heads: 8 };
    expect(promptLearningDims(c, base).tokenDim).toBe(32);
  });

  it('createPeftAdapter validates and exports an adapter made in code', () => {
    const loaded = loadAdapter(makeLoraAdapter({ targets: ['q_proj'] }));
    const made = createPeftAdapter(loaded.config, loaded.tensors);
    const again = parsePeftAdapter({
      config: serializePeftAdapter(made).get('adapter_config.json'),
      weights: serializePeftAdapter(made).get('adapter_model.safetensors') as Uint8Array,
    });
    expect(again.config).toEqual(loaded.config);
    expect([...again.tensors.keys()]).toEqual([...loaded.tensors.keys()]);
    expect(() => createPeftAdapter(loaded.config, [['x', float32Entry(new Float32Array(1), [1])]])).toThrow(
      AdapterFormatError,
    );
  });
});

describe('tensor validation', () => {
  const parse = (config: Record<string, unknown>, tensors: [string, number[], number?][]) =>
    parsePeftAdapter(build(config, tensors), 'a');
  const W = 'a/adapter_model.safetensors';

  it('accepts only the names PEFT writes for the type', () => {
    expectError(
      () => parse(LORA_CONFIG, [['model.layers.0.self_attn.q_proj.lora_A.weight', [2, 64]]]),
      AdapterFormatError,
      `${W}: model.layers.0.self_attn.q_proj.lora_A.weight: not a PEFT tensor name: expected base_model.model.<module>.lora_A.weight`,
    );
    expectError(
      () => parse(LORA_CONFIG, [...qTensors(), [`${q(0)}.lora_C.weight`, [2, 64]]]),
      AdapterFormatError,
      /lora_C\.weight: not a tensor PEFT writes for LORA \(expected base_model\.model\.<module>\{\.lora_A\.weight, \.lora_B\.weight/,
    );
    expectError(
      () => parse(LORA_CONFIG, [...qTensors(), [`${q(0)}.ia3_l`, [64, 1]]]),
      AdapterFormatError,
      /ia3_l: not a tensor PEFT writes for LORA/,
    );
    expectError(
      () => parse({ ...LORA_CONFIG, peft_type: 'ADALORA', init_r: 2, total_step: 5 }, qTensors()),
      AdapterFormatError,
      /lora_A\.weight: not a tensor PEFT writes for ADALORA/,
    );
    expectError(
      () =>
        parse(LORA_CONFIG, [
          ...qTensors(),
          ['base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias', [64]],
        ]),
      AdapterFormatError,
      /base_layer\.bias: a trained base bias \(bias: "none"\) is not supported/,
    );
    expectError(
      () => parse(LORA_CONFIG, [...qTensors(), [`${q(0)}.lora_B.bias`, [64]]]),
      AdapterFormatError,
      /lora_B\.bias: a bias on lora_B/,
    );
    expectError(
      () =>
        parse({ peft_type: 'PROMPT_TUNING', num_virtual_tokens: 2 }, [
          ['prompt_embeddings', [2, 64]],
          ['extra', [1]],
        ]),
      AdapterFormatError,
      `${W}: extra: not a tensor PEFT writes for PROMPT_TUNING (only prompt_embeddings)`,
    );
    expectError(() => parse(LORA_CONFIG, []), AdapterFormatError, `${W}: tensors: the file holds no tensors`);
  });

  it('accepts the base weights PEFT saves with an embedding or lm_head target', () => {
    const config = { ...LORA_CONFIG, target_modules: ['lm_head'] };
    const a = parse(config, [
      ['base_model.model.lm_head.base_layer.weight', [512, 64]],
      ['base_model.model.lm_head.lora_A.weight', [2, 64]],
      ['base_model.model.lm_head.lora_B.weight', [512, 2]],
    ]);
    expect(savedBaseWeights(a)).toEqual([
      { module: 'lm_head', tensor: 'base_model.model.lm_head.base_layer.weight' },
    ]);
    checkAdapterAgainstBase(a, base);
    const wrong = parse(config, [
      ['base_model.model.lm_head.base_layer.weight', [500, 64]],
      ['base_model.model.lm_head.lora_A.weight', [2, 64]],
      ['base_model.model.lm_head.lora_B.weight', [512, 2]],
    ]);
    expectError(
      () => checkAdapterAgainstBase(wrong, base),
      IncompatibleAdapterError,
      /lm_head\.base_layer\.weight: expected shape \[512, 64\], got \[500, 64\]/,
    );
  });

  it('checks the shapes an adapter implies by itself', () => {
    const without = (name: string) => qTensors().filter(([n]) => n !== name);
    expectError(
      () => parse(LORA_CONFIG, without(`${q(2)}.lora_B.weight`)),
      AdapterFormatError,
      /q_proj\.lora_A\.weight: module model\.layers\.2\.self_attn\.q_proj needs exactly one pair of lora_A \/ lora_B/,
    );
    const swap = (name: string, shape: number[]) =>
      qTensors().map(([n, s]): [string, number[]] => [n, n === name ? shape : s]);
    expectError(
      () => parse(LORA_CONFIG, swap(`${q(1)}.lora_B.weight`, [64, 3])),
      AdapterFormatError,
      `${W}: ${q(1)}.lora_B.weight: rank 3 does not match ${q(1)}.lora_A.weight's rank 2`,
    );
    expectError(
      () => parse({ ...LORA_CONFIG, r: 4 }, qTensors()),
      AdapterFormatError,
      `${W}: ${q(0)}.lora_A.weight: has rank 2 but r / rank_pattern give 4`,
    );
    expect(() => parse({ ...LORA_CONFIG, r: 4, rank_pattern: { q_proj: 2 } }, qTensors())).not.toThrow();
    expectError(
      () => parse(LORA_CONFIG, swap(`${q(1)}.lora_A.weight`, [2, 64, 1])),
      AdapterFormatError,
      /expected 2 dimensions \[r, in\], got \[2, 64, 1\]/,
    );
    const dora = { ...LORA_CONFIG, use_dora: true };
    expectError(
      () => parse(dora, qTensors()),
      AdapterFormatError,
      /use_dora is true but module model\.layers\.0\.self_attn\.q_proj has no lora_magnitude_vector/,
    );
    expectError(
      () => parse(LORA_CONFIG, [...qTensors(), [`${q(0)}.lora_magnitude_vector`, [64]]]),
      AdapterFormatError,
      /a DoRA magnitude, but use_dora is false/,
    );
    const mags = [0, 1, 2, 3, 4].map((i): [string, number[]] => [
      `${q(i)}.lora_magnitude_vector`,
      [i === 3 ? 63 : 64],
    ]);
    expectError(
      () => parse(dora, [...qTensors(), ...mags]),
      AdapterFormatError,
      /q_proj\.lora_magnitude_vector: expected shape \[64\], got \[63\]/,
    );
  });

  it('checks AdaLoRA triplets against rank_pattern', () => {
    const key = 'model.layers.0.self_attn.q_proj.lora_E';
    const config = {
      ...LORA_CONFIG,
      peft_type: 'ADALORA',
      init_r: 3,
      total_step: 5,
      rank_pattern: { [key]: [true, false, true] },
    };
    const triplet = (i: number, r: number, eShape = [r, 1]): [string, number[]][] => [
      [`${q(i)}.lora_A`, [r, 64]],
      [`${q(i)}.lora_E`, eShape],
      [`${q(i)}.lora_B`, [64, r]],
    ];
    const ok = [0, 1, 2, 3, 4].flatMap((i) => triplet(i, i === 0 ? 2 : 3));
    expect(loraModules(parse(config, ok)).get('model.layers.0.self_attn.q_proj')?.rank).toBe(2);
    const full = [0, 1, 2, 3, 4].flatMap((i) => triplet(i, 3));
    expectError(
      () => parse(config, full),
      AdapterFormatError,
      `${W}: ${q(0)}.lora_A: has rank 3 but init_r / rank_pattern give 2`,
    );
    const badE = [0, 1, 2, 3, 4].flatMap((i) => triplet(i, i === 0 ? 2 : 3, i === 4 ? [1, 3] : undefined));
    expectError(
      () => parse(config, badE),
      AdapterFormatError,
      `${W}: ${q(4)}.lora_E: expected shape [3, 1], got [1, 3]`,
    );
    const other = { ...config, rank_pattern: { 'model.layers.0.mlp.up_proj.lora_E': [true, true, false] } };
    expectError(
      () => parse(other, full),
      AdapterFormatError,
      'a/adapter_config.json: rank_pattern: has a mask for model.layers.0.mlp.up_proj, which has no tensors in adapter_model.safetensors',
    );
  });

  it('checks IA3 orientation and prompt sizes', () => {
    const ia3 = {
      peft_type: 'IA3',
      target_modules: ['k_proj', 'down_proj'],
      feedforward_modules: ['down_proj'],
    };
    expectError(
      () => parse(ia3, [['base_model.model.model.layers.0.mlp.down_proj.ia3_l', [64, 1]]]),
      AdapterFormatError,
      /down_proj\.ia3_l: expected \[1, in\] \(a feedforward module\), got \[64, 1\]/,
    );
    expectError(
      () => parse(ia3, [['base_model.model.model.layers.0.self_attn.k_proj.ia3_l', [1, 64]]]),
      AdapterFormatError,
      /k_proj\.ia3_l: expected \[out, 1\], got \[1, 64\]/,
    );
    const prompt = { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 4, token_dim: 64 };
    expectError(
      () => parse(prompt, [['prompt_embeddings', [3, 64]]]),
      AdapterFormatError,
      `${W}: prompt_embeddings: has 3 rows but num_virtual_tokens is 4`,
    );
    expectError(
      () => parse(prompt, [['prompt_embeddings', [4, 32]]]),
      AdapterFormatError,
      /has 32 columns but token_dim is 64/,
    );
    expectError(
      () => parse({ ...prompt, peft_type: 'PREFIX_TUNING', num_layers: 5 }, [['prompt_embeddings', [4, 64]]]),
      AdapterFormatError,
      /has 64 columns, not a multiple of 2 \* num_layers = 10/,
    );
  });

  it('refuses dtypes other than F32, F16 and BF16', () => {
    const entries: [string, SafetensorsEntry][] = [
      ['prompt_embeddings', { dtype: 'F64', shape: [1, 64], bytes: new Uint8Array(512) }],
    ];
    const files = {
      config: { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 1 },
      weights: serializeSafetensors(entries),
    };
    expectError(
      () => parsePeftAdapter(files),
      AdapterFormatError,
      'adapter/adapter_model.safetensors: prompt_embeddings: dtype F64 is not supported: expected F32, F16 or BF16',
    );
  });

  it('refuses NaN and Inf, naming the tensor and the first bad index', () => {
    const files = build(LORA_CONFIG, qTensors());
    const adapter = parsePeftAdapter(files);
    const name = `${q(3)}.lora_B.weight`;
    const t = adapter.tensors.get(name) as SafetensorsEntry;
    const view = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
    view.setFloat32(4 * 17, Infinity, true);
    view.setFloat32(4 * 90, NaN, true);
    expectError(
      () => parsePeftAdapter(files),
      AdapterFormatError,
      `adapter/adapter_model.safetensors: ${name}: value at flat index 17 is Infinity; adapter weights must be finite`,
    );
    const f16 = makeLoraAdapter({ dtype: 'F16', targets: ['k_proj'] });
    const adapter16 = loadAdapter(f16);
    const t16 = [...adapter16.tensors.values()][4];
    t16.bytes[2 * 5] = 0x00;
    t16.bytes[2 * 5 + 1] = 0xfe; // 0xfe00: a float16 NaN
    expectError(() => loadAdapter(f16), AdapterFormatError, /value at flat index 5 is NaN/);
  });

  it('reads the config as bytes or as JSON, and names bad JSON', () => {
    const files = build(LORA_CONFIG, qTensors());
    expect(parsePeftAdapter({ config: LORA_CONFIG, weights: files.weights }).config.peft_type).toBe('LORA');
    expectError(
      () =>
        parsePeftAdapter(
          { config: new TextEncoder().encode('{"peft_type": NaN}'), weights: files.weights },
          'x',
        ),
      AdapterFormatError,
      /^x\/adapter_config\.json: not valid UTF-8 JSON/,
    );
    expectError(
      () => parsePeftAdapter({ config: new Uint8Array([0x7b, 0xff, 0x7d]), weights: files.weights }),
      AdapterFormatError,
      /^adapter\/adapter_config\.json: not valid UTF-8 JSON/,
    );
  });
});

describe('checkAdapterAgainstBase', () => {
  const other = { ...synthConfig('tiny'), hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2 };
  const check =
    (a: PeftAdapter, c = base) =>
    () =>
      checkAdapterAgainstBase(a, c);

  it('refuses sizes that do not fit', () => {
    const a = loadAdapter(makeLoraAdapter({ targets: ['v_proj'] }), 'lora');
    expectError(
      check(a, other),
      IncompatibleAdapterError,
      'lora/adapter_model.safetensors: base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight: in_features is 64 but model.layers.0.self_attn.v_proj of the base has 32',
    );
    const ia3 = loadAdapter(makeIa3Adapter(), 'ia3');
    expectError(
      check(ia3, { ...base, intermediate_size: 100 }),
      IncompatibleAdapterError,
      /down_proj\.ia3_l: in_features is 172 but model\.layers\.0\.mlp\.down_proj of the base has 100/,
    );
    const fewer = { ...base, num_hidden_layers: 3 };
    expectError(
      check(a, fewer),
      IncompatibleAdapterError,
      /model\.layers\.3\.self_attn\.v_proj does not exist in the base model \(llama, 3 layers/,
    );
  });

  it('refuses prompt sizes that do not fit', () => {
    const p = loadAdapter(makePromptTuningAdapter(), 'p');
    expectError(
      check(p, other),
      IncompatibleAdapterError,
      /^p\/adapter_config\.json: token_dim: is 64 but the base's hidden_size is 32/,
    );
    const prefix = loadAdapter(makePrefixTuningAdapter(), 'prefix');
    expectError(
      check(prefix, { ...base, num_hidden_layers: 4 }),
      IncompatibleAdapterError,
      /^prefix\/adapter_config\.json: num_layers: is 5 but the base has 4 layers/,
    );
    // 8 kv heads: PEFT rescales token_dim 32 / 4 heads * 8 = 64, the saved prefix is only 320 wide
    expectError(
      check(prefix, { ...base, num_key_value_heads: 8 }),
      IncompatibleAdapterError,
      /^prefix\/adapter_model\.safetensors: prompt_embeddings: has 320 columns but num_layers \* 2 \* 64 = 640/,
    );
    expectError(
      check(prefix, { ...base, num_attention_heads: 4, num_key_value_heads: 4, head_dim: 4 }),
      IncompatibleAdapterError,
      /token_dim: gives 32 key\/value features per layer but the base has 16/,
    );
  });

  it('refuses files that disagree with what target_modules selects', () => {
    const files = build({ ...LORA_CONFIG, target_modules: ['q_proj', 'k_proj'] }, qTensors());
    expectError(
      check(parsePeftAdapter(files, 'x')),
      IncompatibleAdapterError,
      'x/adapter_config.json: target_modules: selects model.layers.0.self_attn.k_proj but adapter_model.safetensors has no weights for it',
    );
    const extra = build({ ...LORA_CONFIG, layers_to_transform: [0, 1, 2, 3] }, qTensors());
    expectError(
      check(parsePeftAdapter(extra, 'x')),
      IncompatibleAdapterError,
      `x/adapter_model.safetensors: ${q(4)}.lora_A.weight: holds weights for model.layers.4.self_attn.q_proj, which target_modules does not select on this base (PEFT would not load them)`,
    );
  });
});
