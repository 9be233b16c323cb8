/**
 * PEFT adapters through the real path: Runtime -> patched graph -> onnxruntime-web, against the
 * float64 PEFT reference (src/reference/peft.ts) and, for LoRA/DoRA/IA3, against a second oracle:
 * the adapter merged into the weights of a second model run without slots.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it, beforeAll, afterAll, afterEach } from 'vitest';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { tensorToFloat32 } from '../src/formats/safetensors.js';
import {
  loadAdapter,
  makeAdaloraAdapter,
  makeIa3Adapter,
  makeLoraAdapter,
  makePTuningAdapter,
  makePrefixTuningAdapter,
  makePromptTuningAdapter,
  type AdapterFiles,
} from './helpers/peft-fixtures.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { Runtime } from '../src/runtime.js';
import { loadModel } from '../src/load-model.js';
import { referenceLogitsWithAdapters, type ActiveAdapter } from '../src/reference/peft.js';
import { referenceLogits } from '../src/reference/llama.js';
import type { Checkpoint } from '../src/formats/checkpoint.js';
import { IncompatibleAdapterError, AdapterFormatError, EdgeAdaptersError } from '../src/errors.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const tokenizerBin = bytes(fixture('llama2c/tok512.bin'));
const tokenizer = Llama2cTokenizer.parse(tokenizerBin, 512);
const folder = (c: Checkpoint) =>
  memorySource(
    checkpointToModelFolder(c, { tokenizerFiles: new Map([['tokenizer.bin', tokenizerBin]]) }),
    'stories260K',
  );
const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8').slice(5000, 7000);
const tokens = tokenizer.encode(text, { bos: true }).slice(0, 64);
const pair = (f: AdapterFiles) => ({
  config: f.get('adapter_config.json')!,
  weights: f.get('adapter_model.safetensors')!,
});

let rt: Runtime;
beforeAll(async () => {
  rt = await Runtime.create({ model: folder(ckpt) });
});
afterAll(async () => rt.release());
afterEach(async () => {
  for (const a of rt.adapters.list()) await rt.adapters.remove(a.id);
});

const CASES: [string, () => { id: string; files: AdapterFiles; weight?: number }[]][] = [
  ['LoRA', () => [{ id: 'lora', files: makeLoraAdapter({ scale: 0.1 }) }]],
  [
    'rsLoRA with rank and alpha patterns',
    () => [
      {
        id: 'rs',
        files: makeLoraAdapter({
          rslora: true,
          r: 8,
          rankPattern: { q_proj: 2 },
          alphaPattern: { 'layers.1.mlp.up_proj': 4 },
          seed: 5,
          scale: 0.05,
        }),
      },
    ],
  ],
  ['DoRA', () => [{ id: 'dora', files: makeLoraAdapter({ dora: true, seed: 7 }) }]],
  ['AdaLoRA', () => [{ id: 'adalora', files: makeAdaloraAdapter() }]],
  ['IA3', () => [{ id: 'ia3', files: makeIa3Adapter() }]],
  ['prompt tuning', () => [{ id: 'prompt', files: makePromptTuningAdapter({ seed: 3 }) }]],
  ['P-tuning', () => [{ id: 'ptuning', files: makePTuningAdapter({ seed: 2, scale: 3 }) }]],
  ['prefix tuning', () => [{ id: 'prefix', files: makePrefixTuningAdapter() }]],
  [
    'a weighted blend of three LoRA adapters',
    () => [
      { id: 'b1', files: makeLoraAdapter({ seed: 11 }), weight: 0.5 },
      { id: 'b2', files: makeLoraAdapter({ seed: 12, targets: ['q_proj', 'v_proj'], r: 8 }), weight: 0.8 },
      { id: 'b3', files: makeLoraAdapter({ seed: 13, rslora: true }), weight: -0.3 },
    ],
  ],
  [
    'DoRA then LoRA',
    () => [
      { id: 'd1', files: makeLoraAdapter({ dora: true, seed: 21 }), weight: 0.7 },
      { id: 'l1', files: makeLoraAdapter({ seed: 22 }) },
    ],
  ],
  [
    'prompt tuning with a LoRA blend',
    () => [
      { id: 'p1', files: makePromptTuningAdapter({ seed: 3 }) },
      { id: 'l2', files: makeLoraAdapter({ seed: 31, scale: 0.1 }), weight: 0.6 },
      { id: 'l3', files: makeLoraAdapter({ seed: 32, scale: 0.1 }), weight: 0.4 },
    ],
  ],
];

describe('every method equals the float64 PEFT reference within 1e-4 at every position', () => {
  const base = referenceLogits(ckpt, tokens);
  for (const [name, make] of CASES) {
    it(name, async () => {
      const specs = make();
      for (const s of specs) await rt.adapters.add(s.id, pair(s.files));
      await rt.adapters.activate(specs.map((s) => ({ id: s.id, weight: s.weight })));
      const got = await rt.logits(tokens);
      const active: ActiveAdapter[] = specs.map((s) => ({
        adapter: loadAdapter(s.files, s.id),
        weight: s.weight ?? 1,
      }));
      const want = referenceLogitsWithAdapters(ckpt, active, tokens);
      expect(got).toHaveLength(64);
      let worst = 0;
      let moved = 0;
      for (let i = 0; i < 64; i++) {
        worst = Math.max(worst, maxAbsDiff(got[i], want[i]));
        moved = Math.max(moved, maxAbsDiff(want[i], base[i]));
      }
      expect(worst).toBeLessThan(1e-4);
      expect(moved).toBeGreaterThan(0.1); // the adapter really changes the model

      // greedy tokens differ from the base's
      const withAdapter = await rt.complete('Once upon a time', { maxTokens: 24, eosTokenIds: [] });
      rt.adapters.deactivate();
      const plain = await rt.complete('Once upon a time', { maxTokens: 24, eosTokenIds: [] });
      expect(withAdapter.tokens).not.toEqual(plain.tokens);
      for (const s of specs) await rt.adapters.remove(s.id);
    });
  }
});

/** W' = W + s·BᵀAᵀ-style merge in the HF layout, done here from the PEFT tensors, independently of methods/. */
function mergeInto(c: Checkpoint, files: AdapterFiles): Checkpoint {
  const adapter = loadAdapter(files);
  const config = adapter.config as {
    peft_type: string;
    r?: number;
    lora_alpha?: number;
    use_dora?: boolean;
    feedforward_modules?: string[];
  };
  const out: Checkpoint = {
    config: c.config,
    tensors: new Map([...c.tensors].map(([k, t]) => [k, { shape: t.shape, data: t.data.slice() }])),
  };
  const f32 = (name: string) => {
    const t = adapter.tensors.get(name)!;
    return tensorToFloat32(t);
  };
  for (const name of adapter.tensors.keys()) {
    const m = /^base_model\.model\.(.+)\.(lora_A\.weight|ia3_l)$/.exec(name);
    if (!m) continue;
    const module = m[1];
    const w = out.tensors.get(`${module}.weight`)!;
    const [outF, inF] = w.shape;
    if (config.peft_type === 'IA3') {
      const l = f32(name);
      const ff = (config.feedforward_modules ?? []).some((x) => module.endsWith(x));
      for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) w.data[o * inF + i] *= ff ? l[i] : l[o];
      continue;
    }
    const A = f32(`base_model.model.${module}.lora_A.weight`); // [r, in]
    const B = f32(`base_model.model.${module}.lora_B.weight`); // [out, r]
    const r = A.length / inF;
    const s = config.lora_alpha! / config.r!;
    const merged = new Float64Array(outF * inF);
    for (let o = 0; o < outF; o++)
      for (let i = 0; i < inF; i++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += B[o * r + k] * A[k * inF + i];
        merged[o * inF + i] = w.data[o * inF + i] + s * d;
      }
    if (config.use_dora) {
      const mag = f32(`base_model.model.${module}.lora_magnitude_vector`);
      for (let o = 0; o < outF; o++) {
        let n = 0;
        for (let i = 0; i < inF; i++) n += merged[o * inF + i] ** 2;
        const g = mag[o] / Math.sqrt(n);
        for (let i = 0; i < inF; i++) merged[o * inF + i] *= g;
      }
    }
    w.data.set(merged);
  }
  return out;
}

describe('second oracle: the adapter merged into the weights of a second model', () => {
  for (const [name, files] of [
    ['LoRA', makeLoraAdapter({ seed: 41, scale: 0.1 })],
    ['DoRA', makeLoraAdapter({ dora: true, seed: 42 })],
    ['IA3', makeIa3Adapter({ seed: 43, scale: 0.1 })],
  ] as const) {
    it(`${name}: slot path == merged model`, async () => {
      await rt.adapters.add(name, pair(files));
      await rt.adapters.activate(name);
      const slot = await rt.logits(tokens);
      await rt.adapters.remove(name);
      const merged = await loadModel(folder(mergeInto(ckpt, files)), { slots: false });
      const want = await merged.logits(tokens);
      await merged.release();
      for (let i = 0; i < 64; i++) expect(maxAbsDiff(slot[i], want[i])).toBeLessThan(1e-4);
    });
  }
});

describe('hot swap', () => {
  it('switching in any order gives each adapter its own logits, on one session', async () => {
    const session = rt.model.session;
    const ids = ['s1', 's2', 's3'];
    const files = [
      makeLoraAdapter({ seed: 51 }),
      makeIa3Adapter({ seed: 52 }),
      makePrefixTuningAdapter({ seed: 53 }),
    ];
    for (let k = 0; k < 3; k++) await rt.adapters.add(ids[k], pair(files[k]));
    const first = new Map<string, Float32Array[]>();
    for (const id of ids) {
      await rt.adapters.activate(id);
      first.set(id, await rt.logits(tokens.slice(0, 16)));
    }
    rt.adapters.deactivate();
    const base = await rt.logits(tokens.slice(0, 16));
    for (const id of ['s3', 's1', 's2', 's1', 's3']) {
      await rt.adapters.activate(id);
      const again = await rt.logits(tokens.slice(0, 16));
      for (let i = 0; i < 16; i++) expect(maxAbsDiff(again[i], first.get(id)![i])).toBe(0);
    }
    rt.adapters.deactivate();
    expect(maxAbsDiff((await rt.logits(tokens.slice(0, 16)))[15], base[15])).toBe(0);
    expect(rt.model.session).toBe(session);
    for (const id of ids) await rt.adapters.remove(id);
  });

  it('a request keeps the adapter it started with; the change applies from the next one', async () => {
    await rt.adapters.add('x1', pair(makeLoraAdapter({ seed: 61 })));
    await rt.adapters.add('x2', pair(makeLoraAdapter({ seed: 62 })));
    await rt.adapters.activate('x1');
    const alone = await rt.complete('Once upon a time', { maxTokens: 20, eosTokenIds: [] });
    const stream = rt.generate('Once upon a time', { maxTokens: 20, eosTokenIds: [] });
    const got: number[] = [];
    for await (const chunk of stream) {
      got.push(chunk.token);
      if (got.length === 3) await rt.adapters.activate('x2');
    }
    expect(got).toEqual(alone.tokens);
    const next = await rt.complete('Once upon a time', { maxTokens: 20, eosTokenIds: [] });
    expect(next.tokens).not.toEqual(alone.tokens);
    await rt.adapters.remove('x1');
    await rt.adapters.remove('x2');
  });

  it('list() and remove() of an active adapter in a blend', async () => {
    await rt.adapters.add('m1', pair(makeLoraAdapter({ seed: 71 })));
    await rt.adapters.add('m2', pair(makeLoraAdapter({ seed: 72, dora: true })));
    await rt.adapters.activate([{ id: 'm1', weight: 0.5 }, 'm2']);
    expect(rt.adapters.list()).toEqual([
      { id: 'm1', peftType: 'LORA', bytes: expect.any(Number), active: true, weight: 0.5 },
      { id: 'm2', peftType: 'LORA', variant: 'dora', bytes: expect.any(Number), active: true, weight: 1 },
    ]);
    await rt.adapters.remove('m1');
    expect(rt.adapters.active()).toEqual([{ id: 'm2' }]);
    const onlyM2 = await rt.logits(tokens.slice(0, 8));
    const want = referenceLogitsWithAdapters(
      ckpt,
      [{ adapter: loadAdapter(makeLoraAdapter({ seed: 72, dora: true })) }],
      tokens.slice(0, 8),
    );
    expect(maxAbsDiff(onlyM2[7], want[7])).toBeLessThan(1e-4);
    await rt.adapters.remove('m2');
  });
});

describe('export and bad input', () => {
  it('exports every loaded adapter back to PEFT files, byte for byte', async () => {
    const all: [string, AdapterFiles][] = [
      ['e-lora', makeLoraAdapter({ seed: 81, dtype: 'F16' })],
      ['e-ia3', makeIa3Adapter({ seed: 82 })],
      ['e-prompt', makePromptTuningAdapter({ seed: 83, dtype: 'BF16' })],
      ['e-prefix', makePrefixTuningAdapter({ seed: 84 })],
    ];
    for (const [id, files] of all) {
      await rt.adapters.add(id, pair(files));
      const out = rt.adapters.export(id);
      expect(
        Buffer.from(out.get('adapter_model.safetensors')!).equals(
          Buffer.from(files.get('adapter_model.safetensors')!),
        ),
      ).toBe(true);
      expect(new TextDecoder().decode(out.get('adapter_config.json')!)).toBe(
        new TextDecoder().decode(files.get('adapter_config.json')!),
      );
      await rt.adapters.remove(id);
    }
  });

  it('real GPT-2 PEFT files are refused naming the first missing module; the active adapter stays', async () => {
    await rt.adapters.add('keep', pair(makeLoraAdapter({ seed: 91 })));
    await rt.adapters.activate('keep');
    const before = await rt.logits(tokens.slice(0, 8));
    const dir = fixture('peft');
    const { readdirSync } = await import('node:fs');
    for (const name of readdirSync(dir).filter((n) => !n.includes('.'))) {
      const source = path.join(dir, name);
      await expect(rt.adapters.add(name, source)).rejects.toThrow(IncompatibleAdapterError);
      await expect(rt.adapters.add(name, source)).rejects.toThrow(/transformer\.h\.0\.attn\.c_attn/);
    }
    const broken = pair(makeLoraAdapter({ seed: 92 }));
    await expect(
      rt.adapters.add('broken', { config: broken.config, weights: broken.weights.subarray(0, 100) }),
    ).rejects.toThrow(AdapterFormatError);
    const after = await rt.logits(tokens.slice(0, 8));
    expect(maxAbsDiff(after[7], before[7])).toBe(0);
    expect(rt.adapters.active()).toEqual([{ id: 'keep' }]);
    expect(rt.adapters.list().map((a) => a.id)).toEqual(['keep']);
    await rt.adapters.remove('keep');
  });
});

describe('broken adapters never disturb the active one', () => {
  it('random corruptions of a real adapter are typed errors, and the active adapter stays', async () => {
    const fc = await import('fast-check');
    await rt.adapters.add('keep', pair(makeLoraAdapter({ seed: 101, scale: 0.1 })));
    await rt.adapters.activate('keep');
    const before = await rt.logits(tokens.slice(0, 6));
    const good = pair(makeLoraAdapter({ seed: 102 }));
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(good.weights.length - 1) }),
          fc.record({
            kind: fc.constant('flip' as const),
            at: fc.nat(good.weights.length - 1),
            value: fc.integer({ min: 0, max: 255 }),
          }),
          fc.record({ kind: fc.constant('nan' as const), at: fc.nat(1000) }),
          fc.record({ kind: fc.constant('config' as const), json: fc.json() }),
        ),
        async (c) => {
          let config: Uint8Array | object = good.config;
          let weights = good.weights;
          if (c.kind === 'truncate') weights = good.weights.subarray(0, c.at);
          if (c.kind === 'flip') (weights = good.weights.slice())[c.at] = c.value;
          if (c.kind === 'nan') {
            // a NaN in the first tensor's data (the header is followed by float32 values)
            const headerLength = Number(
              new DataView(good.weights.buffer, good.weights.byteOffset).getBigUint64(0, true),
            );
            weights = good.weights.slice();
            new DataView(weights.buffer).setFloat32(8 + headerLength + 4 * c.at, Number.NaN, true);
          }
          if (c.kind === 'config') config = new TextEncoder().encode(c.json);
          try {
            await rt.adapters.add(`bad${n}`, { config, weights });
            await rt.adapters.remove(`bad${n}`); // a corruption that still reads as a valid adapter is fine
          } catch (error) {
            expect(error).toBeInstanceOf(EdgeAdaptersError);
          }
          n++;
          expect(rt.adapters.active()).toEqual([{ id: 'keep' }]);
        },
      ),
      { numRuns: 60, seed: 7 },
    );
    const after = await rt.logits(tokens.slice(0, 6));
    for (let i = 0; i < 6; i++) expect(maxAbsDiff(after[i], before[i])).toBe(0);
  });
});
