/**
 * Bad input never crashes or hangs the PEFT readers: every failure is an AdapterFormatError or an
 * IncompatibleAdapterError, and valid-but-different inputs are told apart exactly.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AdapterFormatError, IncompatibleAdapterError } from '../src/errors.js';
import {
  checkAdapterAgainstBase,
  loraModules,
  parsePeftAdapter,
  serializePeftAdapter,
} from '../src/formats/peft-adapter.js';
import { PEFT_TYPES, parsePeftConfig, serializePeftConfig } from '../src/formats/peft-config.js';
import { formatPeftJson } from '../src/formats/python-json.js';
import { type SafetensorsEntry, float32Entry, serializeSafetensors } from '../src/formats/safetensors.js';
import { isFeedforward, loraScaling, matchTargets } from '../src/methods/targets.js';
import { STORIES_CONFIG as base, loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';

const RUNS = { numRuns: 200 };

/** Run `f`; typed errors are an outcome, anything else is re-thrown (fails the property). */
function outcome(f: () => unknown): 'ok' | 'refused' {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof AdapterFormatError || e instanceof IncompatibleAdapterError) return 'refused';
    throw e;
  }
}

const CONFIG = { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 2, lora_alpha: 4, target_modules: ['q_proj'] };
const configBytes = new TextEncoder().encode(formatPeftJson(CONFIG));
const q = (i: number) => `base_model.model.model.layers.${i}.self_attn.q_proj`;
const SHAPES: [string, number[]][] = [0, 1, 2, 3, 4].flatMap((i): [string, number[]][] => [
  [`${q(i)}.lora_A.weight`, [2, 64]],
  [`${q(i)}.lora_B.weight`, [64, 2]],
]);

function weights(shapes: [string, number[]][]): Uint8Array {
  const entries: [string, SafetensorsEntry][] = shapes.map(([name, shape]) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, i) => 0.01 * ((i % 5) - 2));
    return [name, float32Entry(data, shape)];
  });
  return serializeSafetensors(entries, { format: 'pt' });
}

const valid = weights(SHAPES);
const load = (w: Uint8Array, config: unknown = configBytes) => {
  const a = parsePeftAdapter({ config, weights: w });
  checkAdapterAgainstBase(a, base);
  return a;
};

/** The header of a safetensors file and where its data starts. */
function header(file: Uint8Array): { json: Record<string, unknown>; data: Uint8Array } {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  return { json: JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n))), data: file.subarray(8 + n) };
}

function withHeader(json: Record<string, unknown>, data: Uint8Array): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(json));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

describe('adapter_model.safetensors', () => {
  it('the valid file loads', () => {
    expect(outcome(() => load(valid))).toBe('ok');
  });

  it('random bytes are refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
        expect(outcome(() => load(bytes))).toBe('refused');
      }),
      RUNS,
    );
  });

  it('every truncation is refused', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: valid.length - 1 }), (n) => {
        expect(outcome(() => load(valid.slice(0, n)))).toBe('refused');
      }),
      RUNS,
    );
  });

  it('a header length past the end of the file is refused, however large', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: BigInt(valid.length - 7), max: 2n ** 64n - 1n }), (n) => {
        const bytes = valid.slice();
        new DataView(bytes.buffer).setBigUint64(0, n, true);
        expect(outcome(() => load(bytes))).toBe('refused');
      }),
      RUNS,
    );
  });

  it('moved data_offsets (overlaps, gaps, out of range) are refused', () => {
    const { json, data } = header(valid);
    const names = Object.keys(json).filter((k) => k !== '__metadata__');
    fc.assert(
      fc.property(
        fc.constantFrom(...names),
        fc.nat({ max: data.length + 16 }),
        fc.nat({ max: data.length + 16 }),
        (name, begin, end) => {
          const entry = json[name] as { data_offsets: number[] };
          const moved = { ...json, [name]: { ...entry, data_offsets: [begin, end] } };
          const same = entry.data_offsets[0] === begin && entry.data_offsets[1] === end;
          expect(outcome(() => load(withHeader(moved, data)))).toBe(same ? 'ok' : 'refused');
        },
      ),
      RUNS,
    );
  });

  it('flipped bytes never crash', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: valid.length - 1 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 8,
        }),
        (flips) => {
          const bytes = valid.slice();
          for (const [i, v] of flips) bytes[i] = v;
          outcome(() => load(bytes));
        },
      ),
      RUNS,
    );
  });

  it('wrong shapes are refused, right ones accepted', () => {
    const dims = fc.array(fc.constantFrom(1, 2, 3, 32, 64, 65), { minLength: 1, maxLength: 3 });
    fc.assert(
      fc.property(
        fc.array(fc.option(dims, { freq: 3 }), { minLength: SHAPES.length, maxLength: SHAPES.length }),
        (changes) => {
          const shapes = SHAPES.map(([name, shape], i): [string, number[]] => [name, changes[i] ?? shape]);
          const right = shapes.every(([, s], i) => s.join() === SHAPES[i][1].join());
          expect(outcome(() => load(weights(shapes)))).toBe(right ? 'ok' : 'refused');
        },
      ),
      RUNS,
    );
  });

  it('NaN and Inf are refused, naming the tensor and the first bad index', () => {
    const bad = fc.constantFrom(
      ['F32', NaN],
      ['F32', Infinity],
      ['F32', -Infinity],
      ['F16', 0x7e00],
      ['F16', 0xfc00],
      ['BF16', 0x7fc0],
      ['BF16', 0x7f80],
    ) as fc.Arbitrary<[string, number]>;
    const files = {
      F32: makeLoraAdapter({ targets: ['k_proj'] }),
      F16: makeLoraAdapter({ targets: ['k_proj'], dtype: 'F16' }),
      BF16: makeLoraAdapter({ targets: ['k_proj'], dtype: 'BF16' }),
    } as const;
    fc.assert(
      fc.property(bad, fc.nat({ max: 9 }), fc.nat({ max: 4095 }), ([dtype, value], t, k) => {
        const f = files[dtype as keyof typeof files];
        const adapter = loadAdapter(f);
        const [name, entry] = [...adapter.tensors][t];
        const index = k % (entry.bytes.length / (dtype === 'F32' ? 4 : 2));
        const original = entry.bytes.slice();
        const view = new DataView(entry.bytes.buffer, entry.bytes.byteOffset, entry.bytes.byteLength);
        if (dtype === 'F32') view.setFloat32(4 * index, value, true);
        else view.setUint16(2 * index, value, true);
        try {
          const e = (() => {
            try {
              loadAdapter(f);
            } catch (err) {
              return err as Error;
            }
            throw new Error('expected a refusal');
          })();
          expect(e).toBeInstanceOf(AdapterFormatError);
          expect(e.message).toContain(`adapter_model.safetensors: ${name}: value at flat index ${index} is `);
        } finally {
          entry.bytes.set(original); // the fixture bytes are shared between runs
        }
      }),
      RUNS,
    );
  });
});

describe('adapter_config.json', () => {
  const KEYS = [
    'r',
    'lora_alpha',
    'target_modules',
    'exclude_modules',
    'layers_to_transform',
    'layers_pattern',
    'rank_pattern',
    'alpha_pattern',
    'use_rslora',
    'use_dora',
    'bias',
    'modules_to_save',
    'init_lora_weights',
    'task_type',
    'fan_in_fan_out',
    'lora_dropout',
    'init_r',
    'target_r',
    'total_step',
    'tinit',
    'tfinal',
    'feedforward_modules',
    'num_virtual_tokens',
    'token_dim',
    'num_layers',
    'num_attention_heads',
    'num_transformer_submodules',
    'prompt_tuning_init',
    'encoder_reparameterization_type',
    'megatron_config',
    'use_qalora',
    'inference_mode',
    'base_model_name_or_path',
    'loftq_config',
    'some_new_field',
  ];
  const plausible = fc.constantFrom<unknown>(
    8,
    0,
    -1,
    2.5,
    1e300,
    'q_proj',
    ['q_proj', 'v_proj'],
    ['down_proj'],
    'all-linear',
    '.*\\.(q|down)_proj',
    '.*',
    '(',
    [0, 2],
    3,
    'layers',
    '(layers)',
    { q_proj: 4 },
    { 'layers.0.self_attn.q_proj': 2, v_proj: 3 },
    true,
    false,
    null,
    'CAUSAL_LM',
    'SEQ_2_SEQ_LM',
    'none',
    'all',
    100,
    [],
    {},
    'embed_tokens',
    ['lm_head'],
    'é\u2028',
  );
  const value = fc.oneof(plausible, fc.jsonValue({ maxDepth: 2 }), fc.string({ maxLength: 12 }));
  /** A valid minimal config of each type, so that random overrides are often still valid. */
  const TEMPLATES: Record<string, Record<string, unknown>> = {
    LORA: { r: 4 },
    ADALORA: { init_r: 4, total_step: 10 },
    IA3: {},
    PROMPT_TUNING: { num_virtual_tokens: 3, token_dim: 64 },
    P_TUNING: { num_virtual_tokens: 3 },
    PREFIX_TUNING: { num_virtual_tokens: 2, num_layers: 5 },
  };
  const config = fc.oneof(
    fc
      .tuple(fc.constantFrom(...PEFT_TYPES), fc.dictionary(fc.constantFrom(...KEYS), value, { maxKeys: 3 }))
      .map(([peft_type, rest]) => ({ ...TEMPLATES[peft_type], ...rest, peft_type })),
    fc
      .tuple(
        fc.constantFrom<unknown>(...PEFT_TYPES, 'LOHA', 3, null),
        fc.dictionary(fc.constantFrom(...KEYS), value, { maxKeys: 8 }),
      )
      .map(([peft_type, rest]) => ({ ...rest, peft_type })),
  );

  it('random configs are read or refused, and what is read round-trips and selects without crashing', () => {
    fc.assert(
      fc.property(config, (json) => {
        let parsed: ReturnType<typeof parsePeftConfig> | undefined;
        outcome(() => (parsed = parsePeftConfig(json)));
        if (parsed === undefined) return;
        const c = parsed;
        // writing and reading back gives the same config (JSON numbers: -0 reads back as 0)
        const again = parsePeftConfig(JSON.parse(new TextDecoder().decode(serializePeftConfig(c))));
        expect(JSON.parse(JSON.stringify(again))).toEqual(JSON.parse(JSON.stringify(c)));
        if (c.peft_type === 'LORA' || c.peft_type === 'ADALORA' || c.peft_type === 'IA3') {
          outcome(() => {
            for (const m of matchTargets(c, base)) {
              if (c.peft_type === 'IA3') isFeedforward(c, m);
              else expect(Number.isFinite(loraScaling(c, m))).toBe(true);
            }
          });
        }
      }),
      { numRuns: 600 },
    );
  });

  it('random bytes as the config are refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        expect(outcome(() => load(valid, bytes))).toBe('refused');
      }),
      RUNS,
    );
  });

  it('a mutated field of a valid adapter is read or refused, never a crash', () => {
    fc.assert(
      fc.property(fc.constantFrom(...KEYS), value, (key, v) => {
        outcome(() => load(valid, { ...CONFIG, [key]: v }));
      }),
      RUNS,
    );
  });
});

describe('generated adapters', () => {
  const options = fc.record({
    r: fc.integer({ min: 1, max: 6 }),
    alpha: fc.integer({ min: 1, max: 32 }),
    targets: fc.subarray(
      ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head'],
      { minLength: 1 },
    ),
    rslora: fc.boolean(),
    dora: fc.boolean(),
    rankPattern: fc.dictionary(
      fc.constantFrom('q_proj', 'layers.1.mlp.up_proj', 'down_proj'),
      fc.integer({ min: 1, max: 5 }),
      { maxKeys: 2 },
    ),
    layersToTransform: fc.option(fc.subarray([0, 1, 2, 3, 4], { minLength: 1 }), { nil: undefined }),
    seed: fc.nat(),
    dtype: fc.constantFrom('F32', 'F16', 'BF16') as fc.Arbitrary<'F32' | 'F16' | 'BF16'>,
  });

  it('parse, fit the base and export byte for byte', () => {
    fc.assert(
      fc.property(options, (o) => {
        if (o.layersToTransform !== undefined && o.targets.includes('lm_head'))
          o.targets = o.targets.filter((t) => t !== 'lm_head');
        if (o.targets.length === 0) return;
        const files = makeLoraAdapter(o);
        const adapter = loadAdapter(files);
        checkAdapterAgainstBase(adapter, base);
        expect(loraModules(adapter).size).toBe(
          matchTargets(adapter.config as Parameters<typeof matchTargets>[0], base).length,
        );
        const out = serializePeftAdapter(adapter);
        for (const [name, bytes] of files)
          expect(Buffer.compare(Buffer.from(out.get(name) as Uint8Array), Buffer.from(bytes))).toBe(0);
      }),
      { numRuns: 40 },
    );
  });
});
