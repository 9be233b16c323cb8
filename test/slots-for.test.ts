/**
 * Slots for a declared set of adapters (methods/slots-for.ts): the graph gets exactly the slots those
 * adapters need, every declared adapter still equals the float64 PEFT reference, and an undeclared
 * one is refused with a typed error naming the module, leaving the active adapter in place.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import {
  loadAdapter,
  makeIa3Adapter,
  makeLoraAdapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
  type AdapterFiles,
} from './helpers/peft-fixtures.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { Runtime } from '../src/runtime.js';
import { slotsFor } from '../src/methods/slots-for.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { referenceLogits } from '../src/reference/llama.js';
import { IncompatibleAdapterError } from '../src/errors.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const tokenizerBin = bytes(fixture('llama2c/tok512.bin'));
const tokenizer = Llama2cTokenizer.parse(tokenizerBin, 512);
const folder = () =>
  memorySource(
    checkpointToModelFolder(ckpt, { tokenizerFiles: new Map([['tokenizer.bin', tokenizerBin]]) }),
    'stories260K',
  );
const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8').slice(9000, 11000);
const tokens = tokenizer.encode(text, { bos: true }).slice(0, 48);
const pair = (f: AdapterFiles) => ({
  config: f.get('adapter_config.json')!,
  weights: f.get('adapter_model.safetensors')!,
});
const layers = (kinds: string[]) =>
  Array.from({ length: ckpt.config.num_hidden_layers }, (_, i) =>
    kinds.map((k) => `model.layers.${i}.${k}`),
  ).flat();

const declared: Record<string, AdapterFiles> = {
  qv: makeLoraAdapter({ targets: ['q_proj', 'v_proj'], seed: 41, scale: 0.1 }),
  dora: makeLoraAdapter({ targets: ['o_proj'], dora: true, seed: 42 }),
  ia3: makeIa3Adapter({ targets: ['k_proj', 'down_proj'], feedforward: ['down_proj'] }),
  prompt: makePromptTuningAdapter({ seed: 43 }),
  prefix: makePrefixTuningAdapter({ seed: 44 }),
};
const configs = Object.values(declared).map((f) => loadAdapter(f).config);

describe('slotsFor', () => {
  it("gives each method's modules and only the scales it uses", () => {
    const s = slotsFor(configs, ckpt.config);
    expect(new Set(s.modules)).toEqual(
      new Set(
        layers([
          'self_attn.q_proj',
          'self_attn.v_proj',
          'self_attn.o_proj',
          'self_attn.k_proj',
          'mlp.down_proj',
        ]),
      ),
    );
    expect(new Set(s.outputScales as string[])).toEqual(
      new Set(layers(['self_attn.o_proj', 'self_attn.k_proj'])),
    );
    expect(new Set(s.inputScales as string[])).toEqual(new Set(layers(['mlp.down_proj'])));
    expect(s.prompt).toBe(true);
  });

  it('needs nothing for prefix tuning alone', () => {
    expect(slotsFor([loadAdapter(declared.prefix).config], ckpt.config)).toEqual({
      modules: [],
      outputScales: [],
      inputScales: [],
      prompt: false,
    });
  });
});

describe('a runtime loaded with the slots of its declared adapters', () => {
  const base = referenceLogits(ckpt, tokens);
  let rt: Runtime;
  beforeAll(async () => {
    rt = await Runtime.create({ model: folder(), slots: { adapters: configs } });
    for (const [id, files] of Object.entries(declared)) await rt.adapters.add(id, pair(files));
  });
  afterAll(async () => rt.release());

  it('has exactly the slot inputs those adapters need', () => {
    const layout = rt.model.session.slots!;
    const inputs = layout.groups.flatMap((g) => [g.a, g.b, g.scaleIn, g.scaleOut].filter(Boolean)).sort();
    expect(inputs).toEqual(
      [
        'lora_A.mlp.down_proj',
        'lora_A.self_attn.k_proj',
        'lora_A.self_attn.o_proj',
        'lora_A.self_attn.q_proj',
        'lora_A.self_attn.v_proj',
        'lora_B.mlp.down_proj',
        'lora_B.self_attn.k_proj',
        'lora_B.self_attn.o_proj',
        'lora_B.self_attn.q_proj',
        'lora_B.self_attn.v_proj',
        'scale_in.mlp.down_proj',
        'scale_out.self_attn.k_proj',
        'scale_out.self_attn.o_proj',
      ].sort(),
    );
    expect(layout.prompt).toBeDefined();
  });

  for (const selection of [['qv'], ['dora'], ['ia3'], ['prompt'], ['prefix'], ['qv', 'dora', 'prompt']]) {
    it(`${selection.join(' + ')} equals the float64 PEFT reference within 1e-4`, async () => {
      await rt.adapters.activate(selection.map((id) => ({ id, weight: 1 })));
      const got = await rt.logits(tokens);
      const want = referenceLogitsWithAdapters(
        ckpt,
        selection.map((id) => ({ adapter: loadAdapter(declared[id], id), weight: 1 })),
        tokens,
      );
      let worst = 0;
      let moved = 0;
      for (let i = 0; i < tokens.length; i++) {
        worst = Math.max(worst, maxAbsDiff(got[i], want[i]));
        moved = Math.max(moved, maxAbsDiff(want[i], base[i]));
      }
      expect(worst).toBeLessThan(1e-4);
      expect(moved).toBeGreaterThan(0.1); // the adapter really changes the model
    });
  }

  it('refuses an undeclared adapter naming its first module, and keeps the active one', async () => {
    await rt.adapters.activate('qv');
    const before = await rt.logits(tokens.slice(0, 8));
    await rt.adapters.add('gate', pair(makeLoraAdapter({ targets: ['gate_proj'], seed: 45 })));
    const error = await rt.adapters.activate('gate').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IncompatibleAdapterError);
    expect((error as Error).message).toContain('model.layers.0.mlp.gate_proj');
    expect(rt.adapters.active()).toEqual([{ id: 'qv' }]);
    expect(maxAbsDiff((await rt.logits(tokens.slice(0, 8)))[7], before[7])).toBe(0);
  });
});
