import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdapterFormatError } from '../src/errors.js';
import {
  type AdaLoraConfig,
  type IA3Config,
  type LoraConfig,
  parsePeftConfig,
  serializePeftConfig,
} from '../src/formats/peft-config.js';
import { formatPeftJson, pythonFloat } from '../src/formats/python-json.js';
import { pythonRegExp } from '../src/formats/python-regex.js';
import { fixture } from './fixtures.js';

const CHESS = 'peft/chessgpt-gpt2-lora/adapter_config.json';
const TIGRINYA = 'peft/gpt2-tigrinya-lora/adapter_config.json';
const text = (path: string) => readFileSync(fixture(path), 'utf8');
const json = (path: string) => JSON.parse(text(path)) as Record<string, unknown>;

/** The thrown error of `f` (fails the test when nothing is thrown). */
function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

function refuses(config: Record<string, unknown>, message: string | RegExp): void {
  const e = thrown(() => parsePeftConfig(config));
  expect(e).toBeInstanceOf(AdapterFormatError);
  if (typeof message === 'string') expect(e.message).toBe(message);
  else expect(e.message).toMatch(message);
}

const lora = (extra: Record<string, unknown> = {}) => ({ ...json(TIGRINYA), ...extra });

describe('real GPT-2 LoRA configs', () => {
  it('reads chessgpt-gpt2-lora as in the file', () => {
    const c = parsePeftConfig(json(CHESS)) as LoraConfig;
    expect(c).toMatchObject({
      peft_type: 'LORA',
      task_type: null,
      base_model_name_or_path: 'gpt2',
      revision: null,
      inference_mode: true,
      r: 8,
      lora_alpha: 32,
      lora_dropout: 0.1,
      use_rslora: false,
      use_dora: false,
      target_modules: ['c_attn'],
      exclude_modules: null,
      layers_to_transform: null,
      layers_pattern: null,
      rank_pattern: {},
      alpha_pattern: {},
      fan_in_fan_out: true,
      bias: 'none',
      modules_to_save: null,
      init_lora_weights: true,
    });
    expect(c.raw).toEqual({
      auto_mapping: {
        base_model_class: 'GPT2LMHeadModel',
        parent_library: 'transformers.models.gpt2.modeling_gpt2',
      },
      layer_replication: null,
      loftq_config: {},
      megatron_config: null,
      megatron_core: 'megatron.core',
    });
  });

  it('reads gpt2-tigrinya-lora as in the file', () => {
    const c = parsePeftConfig(json(TIGRINYA)) as LoraConfig;
    expect(c).toMatchObject({
      task_type: 'CAUSAL_LM',
      lora_dropout: 0.05,
      target_modules: ['c_attn', 'c_proj'],
    });
    expect(Object.keys(c.raw).sort()).toEqual(
      [
        'auto_mapping',
        'corda_config',
        'eva_config',
        'layer_replication',
        'loftq_config',
        'lora_bias',
        'megatron_config',
        'megatron_core',
        'qalora_group_size',
        'target_parameters',
        'trainable_token_indices',
        'use_qalora',
      ].sort(),
    );
  });

  it('writes them back as PEFT does, byte for byte', () => {
    const tigrinya = text(TIGRINYA);
    expect(new TextDecoder().decode(serializePeftConfig(parsePeftConfig(JSON.parse(tigrinya))))).toBe(
      tigrinya,
    );
    // chessgpt was saved by a PEFT without exclude_modules: re-saving adds it with its default, as PEFT does.
    const chess = text(CHESS);
    const expected = chess.replace('"bias": "none",\n', '"bias": "none",\n  "exclude_modules": null,\n');
    expect(new TextDecoder().decode(serializePeftConfig(parsePeftConfig(JSON.parse(chess))))).toBe(expected);
  });
});

describe('field types', () => {
  it('names the file and the field', () => {
    refuses(lora({ lora_alpha: '8' }), 'adapter_config.json: lora_alpha: expected a number, got "8"');
    refuses(lora({ r: 0 }), 'adapter_config.json: r: expected a positive integer, got 0');
    refuses(lora({ r: 2.5 }), /r: expected a positive integer, got 2.5/);
    refuses(lora({ r: true }), /r: expected a positive integer, got true/);
    refuses(
      lora({ use_rslora: 'yes' }),
      'adapter_config.json: use_rslora: expected true or false, got "yes"',
    );
    refuses(lora({ bias: 'some' }), /bias: expected one of "none", "all", "lora_only", got "some"/);
    refuses(lora({ target_modules: ['q_proj', 3] }), /target_modules: expected a list of strings or null/);
    refuses(
      lora({ rank_pattern: { q_proj: 0 } }),
      /rank_pattern\.q_proj: expected a positive integer, got 0/,
    );
    refuses(lora({ alpha_pattern: { q_proj: 'x' } }), /alpha_pattern\.q_proj: expected a number/);
    refuses(lora({ layers_to_transform: [0, -1] }), /layers_to_transform: expected a layer index or a list/);
    refuses(lora({ task_type: 'CAUSAL' }), /task_type: expected one of "SEQ_CLS", /);
    const e = thrown(() => parsePeftConfig({ peft_type: 'LORA', r: 'x' }, 'my/adapter_config.json'));
    expect(e.message).toBe('my/adapter_config.json: r: expected a positive integer, got "x"');
  });

  it('refuses unknown and missing PEFT types, listing the supported ones', () => {
    const list = 'supported: LORA, ADALORA, IA3, PREFIX_TUNING, PROMPT_TUNING, P_TUNING';
    refuses({ peft_type: 'LOHA' }, `adapter_config.json: peft_type: unsupported PEFT type "LOHA"; ${list}`);
    refuses({ r: 8 }, `adapter_config.json: peft_type: missing; ${list}`);
    refuses([] as unknown as Record<string, unknown>, 'adapter_config.json: expected a JSON object, got []');
  });

  it('fills PEFT defaults for missing fields', () => {
    const c = parsePeftConfig({ peft_type: 'LORA' }) as LoraConfig;
    expect(c).toMatchObject({ r: 8, lora_alpha: 8, use_rslora: false, bias: 'none', target_modules: null });
  });
});

describe('LoRA fields the runtime cannot honour', () => {
  it.each([
    ['megatron_config', { tensor_model_parallel_size: 2 }],
    ['layer_replication', [[0, 4]]],
    ['target_parameters', ['experts.down_proj']],
    ['use_qalora', true],
    ['alora_invocation_tokens', [5, 6]],
    ['trainable_token_indices', [0, 1]],
    ['lora_bias', true],
    ['use_bdlora', { block: 4 }],
    ['arrow_config', { top_k: 2 }],
    ['ensure_weight_tying', true],
  ])('refuses %s', (key, value) => {
    const e = thrown(() => parsePeftConfig(lora({ [key]: value })));
    expect(e).toBeInstanceOf(AdapterFormatError);
    expect(e.message.startsWith(`adapter_config.json: ${key}: `)).toBe(true);
  });

  it('refuses modules_to_save, which replaces whole base modules', () => {
    refuses(
      lora({ modules_to_save: ['lm_head'] }),
      /modules_to_save: \["lm_head"\] would replace whole base modules/,
    );
    expect((parsePeftConfig(lora({ modules_to_save: [] })) as LoraConfig).modules_to_save).toEqual([]);
  });

  it('refuses an unknown field with a value, keeps one with a default-like value', () => {
    refuses(lora({ use_magic: true }), /use_magic: unknown field with a non-default value true/);
    const c = parsePeftConfig(lora({ use_magic: false, magic_config: null }));
    expect(c.raw.use_magic).toBe(false);
    expect(c.raw).toHaveProperty('magic_config', null);
  });

  it('accepts what only matters while training or at init', () => {
    const c = parsePeftConfig(
      lora({
        init_lora_weights: 'loftq',
        loftq_config: { loftq_bits: 4, loftq_iter: 1 },
        eva_config: { rho: 2 },
        lora_dropout: 0.3,
        bias: 'all',
        fan_in_fan_out: true,
        peft_version: '0.17.0',
      }),
    ) as LoraConfig;
    expect(c.init_lora_weights).toBe('loftq');
    expect(c.bias).toBe('all');
    expect(c.raw.loftq_config).toEqual({ loftq_bits: 4, loftq_iter: 1 });
    refuses(
      lora({ init_lora_weights: 'loftq', loftq_config: {} }),
      /loftq_config: must be set when init_lora_weights is 'loftq'/,
    );
    refuses(
      lora({ init_lora_weights: 3 }),
      /init_lora_weights: expected true, false or the name of an init scheme/,
    );
  });
});

describe('layer selection fields', () => {
  it('normalises an int layers_to_transform and a string layers_pattern', () => {
    const c = parsePeftConfig(lora({ layers_to_transform: 2, layers_pattern: 'layers' })) as LoraConfig;
    expect(c.layers_to_transform).toEqual([2]);
    expect(c.layers_pattern).toEqual(['layers']);
    expect(
      (parsePeftConfig(lora({ layers_to_transform: [1], layers_pattern: '' })) as LoraConfig).layers_pattern,
    ).toEqual([]);
  });

  it("applies LoraConfig.__post_init__'s checks", () => {
    refuses(
      lora({ target_modules: '.*q_proj', layers_to_transform: [0] }),
      /layers_to_transform: cannot be used when target_modules is a string/,
    );
    refuses(
      lora({ target_modules: 'all-linear', layers_pattern: ['layers'] }),
      /layers_pattern: cannot be used when target_modules is a string/,
    );
    refuses(lora({ layers_pattern: 'layers' }), /layers_pattern: needs layers_to_transform/);
    // `if self.layers_pattern and not self.layers_to_transform`: PEFT refuses layer 0 given as an int
    refuses(
      lora({ layers_pattern: 'layers', layers_to_transform: 0 }),
      /layers_pattern: needs layers_to_transform/,
    );
    expect(() => parsePeftConfig(lora({ layers_pattern: 'layers', layers_to_transform: [0] }))).not.toThrow();
  });

  it('checks regexes where they are read', () => {
    refuses(lora({ target_modules: '(?P<x>q' }), /target_modules: Python regex "\(\?P<x>q" is not valid/);
    refuses(
      lora({ exclude_modules: 'a++' }),
      /exclude_modules: Python regex "a\+\+": possessive quantifiers are not supported/,
    );
    refuses(lora({ rank_pattern: { '(': 4 } }), /rank_pattern\.\(: Python regex/);
    refuses(
      lora({ layers_to_transform: [0], layers_pattern: ['(?i)layers'] }),
      /layers_pattern: .*inline flags/,
    );
  });
});

describe('AdaLoRA', () => {
  const ada = (extra: Record<string, unknown> = {}) => ({
    ...lora(),
    peft_type: 'ADALORA',
    target_modules: ['q_proj'],
    init_r: 4,
    target_r: 2,
    total_step: 10,
    ...extra,
  });

  it('reads the rank masks as saved', () => {
    const masks = { 'model.layers.0.self_attn.q_proj.lora_E': [true, false, true, false] };
    const c = parsePeftConfig(ada({ rank_pattern: masks })) as AdaLoraConfig;
    expect(c).toMatchObject({
      init_r: 4,
      target_r: 2,
      total_step: 10,
      tinit: 0,
      tfinal: 0,
      deltaT: 1,
      beta1: 0.85,
    });
    expect(c.rank_pattern).toEqual(masks);
    expect((parsePeftConfig(ada({ rank_pattern: null })) as AdaLoraConfig).rank_pattern).toBeNull();
  });

  it("applies AdaLoraConfig.__post_init__'s checks", () => {
    refuses(ada({ use_dora: true }), /use_dora: AdaLoRA does not support DoRA/);
    refuses(ada({ loftq_config: { loftq_bits: 4 } }), /loftq_config: AdaLoRA does not support LoftQ/);
    refuses(ada({ total_step: undefined }), /total_step: expected a positive integer, got nothing/);
    refuses({ ...ada(), total_step: 0 }, /total_step: expected a positive integer, got 0/);
    refuses(ada({ tinit: 5, tfinal: 5 }), /tinit: tinit 5 leaves no budgeting phase/);
  });

  it('refuses masks PEFT cannot load', () => {
    refuses(
      ada({ rank_pattern: { 'a.lora_E': [true, false] } }),
      /rank_pattern\.a\.lora_E: has 2 entries but init_r is 4/,
    );
    refuses(ada({ rank_pattern: { 'a.lora_E': [false, false, false, false] } }), /keeps no rank at all/);
    refuses(ada({ rank_pattern: { 'a.lora_E': [1, 0, 1, 0] } }), /expected a list of true\/false/);
  });
});

describe('IA3', () => {
  const ia3 = (extra: Record<string, unknown>) => ({ peft_type: 'IA3', task_type: 'CAUSAL_LM', ...extra });

  it('checks that feedforward_modules is a subset of target_modules when both are lists', () => {
    refuses(
      ia3({ target_modules: ['k_proj', 'v_proj'], feedforward_modules: ['down_proj'] }),
      /feedforward_modules: must be a subset of target_modules; not targeted: \["down_proj"\]/,
    );
    const c = parsePeftConfig(
      ia3({ target_modules: '.*(k|down)_proj', feedforward_modules: '.*down_proj' }),
    ) as IA3Config;
    expect(c.feedforward_modules).toBe('.*down_proj');
    expect(c.init_ia3_weights).toBe(true);
  });
});

describe('prompt learning', () => {
  const prompt = (extra: Record<string, unknown>) => ({
    peft_type: 'PROMPT_TUNING',
    task_type: 'CAUSAL_LM',
    num_virtual_tokens: 4,
    token_dim: 64,
    ...extra,
  });

  it('accepts CAUSAL_LM or null, refuses other tasks and two transformer stacks', () => {
    expect(parsePeftConfig(prompt({ task_type: null })).task_type).toBeNull();
    refuses(
      prompt({ task_type: 'SEQ_2_SEQ_LM' }),
      /task_type: PROMPT_TUNING for SEQ_2_SEQ_LM is not supported/,
    );
    refuses(
      prompt({ peft_type: 'PREFIX_TUNING', task_type: 'SEQ_CLS' }),
      /task_type: PREFIX_TUNING for SEQ_CLS/,
    );
    refuses(
      prompt({ num_transformer_submodules: 2 }),
      /num_transformer_submodules: is 2; a decoder-only base has 1/,
    );
  });

  it('requires num_virtual_tokens and checks PromptTuningConfig.__post_init__', () => {
    refuses(
      prompt({ num_virtual_tokens: undefined }),
      /num_virtual_tokens: expected a positive integer, got nothing/,
    );
    refuses(
      prompt({ prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'hi' }),
      /tokenizer_name_or_path: is required/,
    );
    refuses(
      prompt({ tokenizer_kwargs: { a: 1 } }),
      /tokenizer_kwargs: is only valid when prompt_tuning_init is 'TEXT'/,
    );
    refuses(
      prompt({ modules_to_save: ['lm_head'] }),
      /modules_to_save: modules_to_save would replace whole base modules/,
    );
    refuses(
      prompt({ peft_type: 'P_TUNING', encoder_reparameterization_type: 'GRU' }),
      /encoder_reparameterization_type: expected one of "MLP", "LSTM"/,
    );
  });
});

describe('Python regex translation', () => {
  const full = (source: string) => pythonRegExp(source, 'full', 'adapter_config.json', 'target_modules');
  const q = 'model.layers.0.self_attn.q_proj';

  it('matches as re.fullmatch does', () => {
    expect(full('.*\\.(q|v)_proj').test(q)).toBe(true);
    expect(full('(q|v)_proj').test(q)).toBe(false); // full match, not search
    expect(full('.*q_pro').test(q)).toBe(false);
    expect(full('.*(?P<kind>q)_proj').test(q)).toBe(true);
    expect(full('.*(?P<c>[qv])_pro(?P=c)').test('x.q_proq')).toBe(true);
    expect(full('\\Amodel.*proj\\Z').test(q)).toBe(true);
    expect(full('(?i)MODEL.*Q_PROJ').test(q)).toBe(true);
    expect(full('.*[]q]_proj').test(q)).toBe(true); // a leading ']' is a class member in Python
    expect(full('model\\.layers\\.\\d{,2}\\..*').test(q)).toBe(true); // {,n} is {0,n}
    expect(full('.*q_proj(?#a comment)').test(q)).toBe(true);
    expect(full('a{b}').test('a{b}')).toBe(true); // not a repeat: literal braces
    expect(full('(?:.*\\.)?q_proj').test('q_proj')).toBe(true); // an optional group may hold a repeat
    expect(full('(.*\\.)?(q|v)_proj').test(q)).toBe(true);
  });

  it('refuses what it cannot honour, naming the field', () => {
    for (const [source, why] of [
      ['a*+', 'possessive quantifiers'],
      ['(?>a)', 'group syntax'],
      ['(?(1)a|b)', 'group syntax'],
      ['(?x)a b', 'inline flag "x"'],
      ['a(?i)b', 'inline flags are only supported as global flags'],
      ['(?i:a)', 'inline flags are only supported as global flags'],
      ['\\q', 'bad or unsupported escape \\q'],
      ['\\U0001F600', 'bad or unsupported escape \\U'],
      ['[a-', 'unterminated character set'],
      ['\\12', 'octal escapes'],
      ['(?<name>a)', 'group syntax'],
      // would backtrack exponentially (or as n^k) on a 31-character module name: refused, not hung
      ['(.*)*x', 'a group with an unbounded repeat is itself repeated'],
      ['.*(\\w+\\.)+q_proj', 'a group with an unbounded repeat is itself repeated'],
      ['(.*a){20}', 'a group with an unbounded repeat is itself repeated'],
      ['.*.*.*.*.*.*.*x', 'more than 6 unbounded repeats'],
    ]) {
      const e = thrown(() => full(source));
      expect(e).toBeInstanceOf(AdapterFormatError);
      expect(e.message).toContain('adapter_config.json: target_modules: Python regex');
      expect(e.message).toContain(why);
    }
  });
});

describe('JSON as Python writes it', () => {
  it('spells floats as repr() does', () => {
    const cases: [number, string][] = [
      [0.1, '0.1'],
      [1e-5, '1e-05'],
      [0.0001, '0.0001'],
      [1e16, '1e+16'],
      [1234567890123456, '1234567890123456.0'],
      [1.5e-7, '1.5e-07'],
      [123.456, '123.456'],
      [-2.5, '-2.5'],
      [5e-324, '5e-324'],
      [1.7976931348623157e308, '1.7976931348623157e+308'],
      [0, '0.0'],
      [-0, '-0.0'],
      [100, '100.0'],
      [2 ** 60, '1.152921504606847e+18'],
    ];
    for (const [x, s] of cases) expect(pythonFloat(x)).toBe(s);
  });

  it('sorts keys by code point, escapes non-ASCII, indents by two', () => {
    const out = formatPeftJson({
      b: [1, { y: 'é\u007f\n"' }],
      a: {},
      c: [],
      A: null,
      '\u{1F600}': 1,
      '\uffff': 2,
      lora_dropout: 0,
    });
    // json.dumps(..., indent=2, sort_keys=True) output, checked against CPython
    expect(out).toBe(
      [
        '{',
        '  "A": null,',
        '  "a": {},',
        '  "b": [',
        '    1,',
        '    {',
        '      "y": "\\u00e9\\u007f\\n\\""',
        '    }',
        '  ],',
        '  "c": [],',
        '  "lora_dropout": 0.0,',
        '  "\\uffff": 2,',
        '  "\\ud83d\\ude00": 1',
        '}',
      ].join('\n'),
    );
  });
});
