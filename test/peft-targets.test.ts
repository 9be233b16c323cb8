import { describe, expect, it } from 'vitest';
import { AdapterFormatError, IncompatibleAdapterError } from '../src/errors.js';
import {
  type AdaLoraConfig,
  type IA3Config,
  type LoraConfig,
  parsePeftConfig,
} from '../src/formats/peft-config.js';
import { synthConfig } from '../src/formats/synth.js';
import {
  adaloraRankMasks,
  isFeedforward,
  linearModules,
  loraRank,
  loraScaling,
  matchTargets,
  patternValue,
} from '../src/methods/targets.js';

const base = synthConfig('tiny'); // stories260K: hidden 64, 5 layers, 8 heads, 4 kv heads, ff 172, vocab 512
const lora = (extra: Record<string, unknown>) =>
  parsePeftConfig({ peft_type: 'LORA', ...extra }) as LoraConfig;
const ia3 = (extra: Record<string, unknown>) => parsePeftConfig({ peft_type: 'IA3', ...extra }) as IA3Config;
const ada = (extra: Record<string, unknown>) =>
  parsePeftConfig({ peft_type: 'ADALORA', total_step: 10, init_r: 6, ...extra }) as AdaLoraConfig;
const layer = (i: number, m: string) => `model.layers.${i}.${m}`;
const every = (m: string, layers = [0, 1, 2, 3, 4]) => layers.map((i) => layer(i, m));

function thrown(f: () => unknown): Error {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

describe('linearModules', () => {
  it('lists every nn.Linear of LlamaForCausalLM with its features', () => {
    const all = linearModules(base);
    expect(all).toHaveLength(5 * 7 + 1);
    expect(all.slice(0, 7)).toEqual([
      { module: 'model.layers.0.self_attn.q_proj', layer: 0, in: 64, out: 64 },
      { module: 'model.layers.0.self_attn.k_proj', layer: 0, in: 64, out: 32 },
      { module: 'model.layers.0.self_attn.v_proj', layer: 0, in: 64, out: 32 },
      { module: 'model.layers.0.self_attn.o_proj', layer: 0, in: 64, out: 64 },
      { module: 'model.layers.0.mlp.gate_proj', layer: 0, in: 64, out: 172 },
      { module: 'model.layers.0.mlp.up_proj', layer: 0, in: 64, out: 172 },
      { module: 'model.layers.0.mlp.down_proj', layer: 0, in: 172, out: 64 },
    ]);
    expect(all[35]).toEqual({ module: 'lm_head', layer: null, in: 64, out: 512 });
    expect(all[34].module).toBe('model.layers.4.mlp.down_proj');
  });
});

describe('matchTargets', () => {
  it('matches a list by suffix on "." boundaries', () => {
    expect(matchTargets(lora({ target_modules: ['q_proj'] }), base)).toEqual(every('self_attn.q_proj'));
    expect(matchTargets(lora({ target_modules: ['self_attn.v_proj', 'lm_head'] }), base)).toEqual([
      ...every('self_attn.v_proj'),
      'lm_head',
    ]);
    expect(matchTargets(lora({ target_modules: ['model.layers.3.mlp.up_proj'] }), base)).toEqual([
      layer(3, 'mlp.up_proj'),
    ]);
    // 'proj' is not a '.'-separated suffix of any module name: nothing matches, as in PEFT
    const e = thrown(() => matchTargets(lora({ target_modules: ['proj'] }), base));
    expect(e).toBeInstanceOf(IncompatibleAdapterError);
    expect(e.message).toMatch(
      /^adapter_config\.json: target_modules: \["proj"\] selects no module of the base model/,
    );
  });

  it('matches a string with re.fullmatch', () => {
    const c = lora({ target_modules: '.*\\.layers\\.[01]\\.self_attn\\.(q|v)_proj' });
    expect(matchTargets(c, base)).toEqual([
      layer(0, 'self_attn.q_proj'),
      layer(0, 'self_attn.v_proj'),
      layer(1, 'self_attn.q_proj'),
      layer(1, 'self_attn.v_proj'),
    ]);
    expect(() => matchTargets(lora({ target_modules: 'q_proj' }), base)).toThrow(IncompatibleAdapterError);
  });

  it("expands 'all-linear' (any case) to every linear layer but lm_head", () => {
    const all = linearModules(base)
      .map((m) => m.module)
      .filter((m) => m !== 'lm_head');
    expect(matchTargets(lora({ target_modules: 'all-linear' }), base)).toEqual(all);
    expect(matchTargets(lora({ target_modules: 'ALL-Linear' }), base)).toEqual(all);
    expect(all).toHaveLength(35);
  });

  it('keeps only layers_to_transform, found by layers_pattern or any ".name.N." segment', () => {
    const targets = ['q_proj', 'down_proj'];
    const expected = [
      layer(0, 'self_attn.q_proj'),
      layer(0, 'mlp.down_proj'),
      layer(2, 'self_attn.q_proj'),
      layer(2, 'mlp.down_proj'),
    ];
    expect(matchTargets(lora({ target_modules: targets, layers_to_transform: [0, 2] }), base)).toEqual(
      expected,
    );
    expect(
      matchTargets(
        lora({ target_modules: targets, layers_to_transform: [0, 2], layers_pattern: 'layers' }),
        base,
      ),
    ).toEqual(expected);
    expect(matchTargets(lora({ target_modules: targets, layers_to_transform: 4 }), base)).toEqual([
      layer(4, 'self_attn.q_proj'),
      layer(4, 'mlp.down_proj'),
    ]);
    // GPT-2's 'h' does not occur in Llama names: nothing left
    expect(() =>
      matchTargets(lora({ target_modules: targets, layers_to_transform: [0], layers_pattern: ['h'] }), base),
    ).toThrow(IncompatibleAdapterError);
    // a module named exactly bypasses the layer filter (`key in target_modules` comes first)
    const exact = lora({ target_modules: ['q_proj', layer(4, 'mlp.up_proj')], layers_to_transform: [1] });
    expect(matchTargets(exact, base)).toEqual([layer(1, 'self_attn.q_proj'), layer(4, 'mlp.up_proj')]);
  });

  it('fails as PEFT does when layers_pattern captures a group of its own', () => {
    const c = lora({ target_modules: ['q_proj'], layers_to_transform: [0], layers_pattern: '(layers)' });
    const e = thrown(() => matchTargets(c, base));
    expect(e).toBeInstanceOf(AdapterFormatError);
    expect(e.message).toMatch(
      /layers_pattern: on model\.layers\.0\.self_attn\.q_proj the layer index group captures "layers"/,
    );
  });

  it('drops exclude_modules (list by suffix, string by full match)', () => {
    const c = lora({ target_modules: ['q_proj'], exclude_modules: ['layers.1.self_attn.q_proj'] });
    expect(matchTargets(c, base)).toEqual(every('self_attn.q_proj', [0, 2, 3, 4]));
    const r = lora({ target_modules: ['q_proj'], exclude_modules: '.*\\.[34]\\..*' });
    expect(matchTargets(r, base)).toEqual(every('self_attn.q_proj', [0, 1, 2]));
  });

  it("uses PEFT's Llama defaults when target_modules is null", () => {
    expect(matchTargets(lora({}), base)).toEqual(
      every('self_attn.q_proj').flatMap((q, i) => [q, layer(i, 'self_attn.v_proj')]),
    );
    expect(matchTargets(ia3({}), base)).toEqual(
      [0, 1, 2, 3, 4].flatMap((i) => [
        layer(i, 'self_attn.k_proj'),
        layer(i, 'self_attn.v_proj'),
        layer(i, 'mlp.down_proj'),
      ]),
    );
  });

  it('refuses selections PEFT cannot wrap, naming the module', () => {
    expect(matchTargets(lora({ target_modules: ['embed_tokens'] }), base)).toEqual(['model.embed_tokens']);
    expect(
      thrown(() => matchTargets(lora({ target_modules: ['embed_tokens'], use_dora: true }), base)).message,
    ).toBe(
      'adapter_config.json: target_modules: selects model.embed_tokens: DoRA on an embedding is not supported',
    );
    expect(
      thrown(() => matchTargets(ia3({ target_modules: ['embed_tokens'], feedforward_modules: [] }), base))
        .message,
    ).toMatch(/selects model\.embed_tokens: IA3 on an embedding is not supported/);
    const e = thrown(() => matchTargets(lora({ target_modules: ['input_layernorm'] }), base));
    expect(e).toBeInstanceOf(IncompatibleAdapterError);
    expect(e.message).toMatch(/selects model\.layers\.0\.input_layernorm, which is not a linear layer/);
    expect(thrown(() => matchTargets(lora({ target_modules: '.*' }), base)).message).toMatch(
      /selects model, which is not a linear/,
    );
  });
});

describe('patternValue (get_pattern_key)', () => {
  const q0 = layer(0, 'self_attn.q_proj');
  const q1 = layer(1, 'self_attn.q_proj');

  it('matches a key as a "."-bounded suffix regex, first key in order', () => {
    expect(patternValue({ q_proj: 16 }, q0, 8)).toBe(16);
    expect(patternValue({ q_proj: 16 }, layer(0, 'self_attn.k_proj'), 8)).toBe(8);
    expect(patternValue({ proj: 16 }, q0, 8)).toBe(8); // "_proj" is not ".proj"
    expect(patternValue({ 'layers.0.self_attn.q_proj': 2, q_proj: 4 }, q0, 8)).toBe(2);
    expect(patternValue({ 'layers.0.self_attn.q_proj': 2, q_proj: 4 }, q1, 8)).toBe(4);
    expect(patternValue({ q_proj: 4, 'layers.0.self_attn.q_proj': 2 }, q0, 8)).toBe(4);
    expect(patternValue({ '^model.layers.[01].self_attn.q_proj': 2 }, q1, 8)).toBe(2);
    expect(patternValue({ '^model.layers.[01].self_attn.q_proj': 2 }, layer(2, 'self_attn.q_proj'), 8)).toBe(
      8,
    );
    expect(patternValue({ 'layers\\.\\d\\.mlp\\..*': 3 }, layer(3, 'mlp.gate_proj'), 8)).toBe(3);
    // no regex match, but the module is a key itself (dict.get(key_to_match))
    expect(patternValue({ 'a+b': 3 }, 'a+b', 8)).toBe(3);
    expect(patternValue({ 'a+b': 3 }, 'aab', 8)).toBe(3);
  });
});

describe('rank and scaling', () => {
  const q = layer(0, 'self_attn.q_proj');
  const k = layer(0, 'self_attn.k_proj');

  it('LoRA: alpha / r, alpha / sqrt(r) with rslora, patterns per module', () => {
    expect(loraScaling(lora({ r: 8, lora_alpha: 16 }), q)).toBe(2);
    expect(loraScaling(lora({ r: 8, lora_alpha: 16, use_rslora: true }), q)).toBe(16 / Math.sqrt(8));
    const c = lora({ r: 8, lora_alpha: 16, rank_pattern: { q_proj: 4 }, alpha_pattern: { q_proj: 32 } });
    expect([loraRank(c, q), loraScaling(c, q)]).toEqual([4, 8]);
    expect([loraRank(c, k), loraScaling(c, k)]).toEqual([8, 2]);
    const rs = lora({ r: 8, lora_alpha: 16, use_rslora: true, rank_pattern: { q_proj: 4 } });
    expect(loraScaling(rs, q)).toBe(8);
  });

  it('AdaLoRA: lora_alpha / (init_r + 1e-5), the kept rank when lora_alpha <= 0', () => {
    const masks = { [`${q}.lora_E`]: [true, false, true, false, false, false] };
    const c = ada({ lora_alpha: 8, rank_pattern: masks });
    expect([loraRank(c, q), loraRank(c, k)]).toEqual([2, 6]);
    expect(loraScaling(c, q)).toBe(8 / 6.00001);
    expect(loraScaling(ada({ lora_alpha: 0, rank_pattern: masks }), q)).toBe(2 / 6.00001);
    expect(loraScaling(ada({ lora_alpha: 0, rank_pattern: masks }), k)).toBe(6 / 6.00001);
  });

  it('AdaLoRA: finds the module of a mask key with or without the adapter name', () => {
    const c = ada({
      rank_pattern: {
        [`${q}.lora_E`]: [true, true, true, true, true, false],
        [`${k}.lora_E.default`]: [true, false, false, false, false, false],
      },
    });
    expect([...adaloraRankMasks(c).keys()]).toEqual([q, k]);
    expect(loraRank(c, k)).toBe(1);
  });
});

describe('isFeedforward', () => {
  const down = layer(0, 'mlp.down_proj');
  const up = layer(0, 'mlp.up_proj');
  it('matches a list by plain suffix and a string by full match', () => {
    expect(
      isFeedforward(ia3({ target_modules: ['down_proj'], feedforward_modules: ['down_proj'] }), down),
    ).toBe(true);
    expect(
      isFeedforward(ia3({ target_modules: ['down_proj'], feedforward_modules: ['down_proj'] }), up),
    ).toBe(false);
    // no '.' boundary, unlike target_modules: 'proj' makes every projection feedforward
    const loose = ia3({ target_modules: '.*proj', feedforward_modules: ['proj'] });
    expect(isFeedforward(loose, up)).toBe(true);
    const re = ia3({ target_modules: '.*proj', feedforward_modules: '.*mlp\\.down_proj' });
    expect([isFeedforward(re, down), isFeedforward(re, up)]).toEqual([true, false]);
    expect([isFeedforward(ia3({}), down), isFeedforward(ia3({}), layer(0, 'self_attn.k_proj'))]).toEqual([
      true,
      false,
    ]);
  });
});
