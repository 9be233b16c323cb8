/**
 * Token-level mixtures of LoRA experts (src/graph/expert-router.ts, src/mixtures/): PEFT's Arrow
 * routing and a learned gate, run by onnxruntime on stories260K with three LoRA experts, against
 * the float64 oracle (src/reference/mixtures.ts), which routes each token by PEFT's formula with
 * prototypes found by its own power iteration.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { IncompatibleAdapterError, InvalidInputError } from '../src/errors.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { adapterFeeds } from '../src/methods/combine.js';
import { checkpointBase } from '../src/methods/feeds.js';
import { linearModules } from '../src/methods/targets.js';
import { arrowPrototype, topEigenvector } from '../src/mixtures/arrow.js';
import { mixtureFeeds } from '../src/mixtures/expert-feeds.js';
import { argmax } from '../src/reference/llama.js';
import { MixtureReferenceSession, type ReferenceRouter } from '../src/reference/mixtures.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { Runtime } from '../src/runtime.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const folder = checkpointToModelFolder(ckpt, {
  tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
});
const base = checkpointBase(ckpt);
/** "Once upon a time" and 15 more tokens. */
const TOKENS = [1, 403, 407, 261, 378, ...Array.from({ length: 15 }, (_, i) => (i * 89 + 17) % 512)];

// Three experts of different ranks and targets (the third leaves the MLP alone).
const experts = [
  loadAdapter(makeLoraAdapter({ seed: 11, r: 4, scale: 0.1 }), 'expert-0'),
  loadAdapter(makeLoraAdapter({ seed: 12, r: 8, alpha: 16, scale: 0.05 }), 'expert-1'),
  loadAdapter(
    makeLoraAdapter({ seed: 13, r: 2, targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], scale: 0.1 }),
    'expert-2',
  ),
];

function seededGate(seed: number): Map<string, Float32Array> {
  const weights = new Map<string, Float32Array>();
  let s = seed;
  const next = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  for (const { module, in: inF } of linearModules(ckpt.config)) {
    if (module !== 'lm_head') weights.set(module, Float32Array.from({ length: inF * 3 }, next));
  }
  return weights;
}

function maxDiffRows(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(...a.map((row, i) => maxAbsDiff(row, b[i])));
}

describe('Arrow prototypes (src/mixtures/arrow.ts)', () => {
  it('are the top right singular vector of B A: equal to a long power iteration, up to sign', () => {
    const feeds = adapterFeeds([{ adapter: experts[1] }], base).modules;
    for (const module of ['model.layers.0.self_attn.q_proj', 'model.layers.4.mlp.down_proj']) {
      const f = feeds.get(module)!;
      const inF = f.a.length / f.rank;
      const outF = f.b.length / f.rank;
      const p = arrowPrototype(f, inF, outF);
      // Independent: M = a b bᵀ aᵀ [in, in] formed here, power iteration.
      let v = Float64Array.from({ length: inF }, (_, i) => Math.cos(i + 1));
      const dw = new Float64Array(inF * outF);
      for (let i = 0; i < inF; i++)
        for (let k = 0; k < f.rank; k++)
          for (let o = 0; o < outF; o++) dw[i * outF + o] += f.a[i * f.rank + k] * f.b[k * outF + o];
      for (let it = 0; it < 20000; it++) {
        const u = new Float64Array(outF);
        for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) u[o] += dw[i * outF + o] * v[i];
        const w = new Float64Array(inF);
        for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) w[i] += dw[i * outF + o] * u[o];
        const n = Math.hypot(...w);
        v = w.map((x) => x / n);
      }
      const sign = Math.sign(p.reduce((s, x, i) => s + x * v[i], 0));
      expect(
        maxAbsDiff(
          p.map((x) => x * sign),
          v,
        ),
      ).toBeLessThan(1e-9);
      expect(Math.hypot(...p)).toBeCloseTo(1, 12);
    }
  });

  it('Jacobi finds the top eigenvector of a symmetric matrix', () => {
    // [[2, 1], [1, 2]]: eigenvalues 3 (1, 1)/√2 and 1.
    const v = topEigenvector(Float64Array.of(2, 1, 1, 2), 2);
    expect(Math.abs(v[0])).toBeCloseTo(Math.SQRT1_2, 12);
    expect(v[0] * v[1]).toBeGreaterThan(0);
  });
});

describe('token-level mixtures in the graph, against the float64 oracle', () => {
  let arrow: Runtime;
  let gate: Runtime;
  beforeAll(async () => {
    const make = async (router: 'arrow' | 'gate') => {
      const rt = await Runtime.create({ model: memorySource(folder, 'stories260K'), slots: { router } });
      for (const e of experts) await rt.adapters.add(e.label, e);
      return rt;
    };
    [arrow, gate] = [await make('arrow'), await make('gate')];
  });
  afterAll(async () => {
    await arrow.release();
    await gate.release();
  });
  const ids = experts.map((e) => e.label);

  for (const [topK, temperature] of [
    [1, 1],
    [2, 1],
    [3, 0.5],
  ]) {
    it(`Arrow, top ${topK}, temperature ${temperature}: every position within 1e-4`, async () => {
      await arrow.adapters.activateMixture({ experts: ids, router: { kind: 'arrow', topK, temperature } });
      const got = await arrow.logits(TOKENS);
      const router: ReferenceRouter = { kind: 'arrow', topK, temperature };
      const want = new MixtureReferenceSession(ckpt, experts, router).forward(TOKENS);
      expect(maxDiffRows(got, want)).toBeLessThan(1e-4);
      // Not a fixed blend: the even blend of the three is far away.
      const even = referenceLogitsWithAdapters(
        ckpt,
        experts.map((adapter) => ({ adapter, weight: 1 / 3 })),
        TOKENS,
      );
      expect(maxDiffRows(got, even)).toBeGreaterThan(1e-2);
    });
  }

  it('a learned gate, top 2: every position within 1e-4, and the routing matters', async () => {
    const weights = seededGate(5);
    await gate.adapters.activateMixture({ experts: ids, router: { kind: 'gate', topK: 2, weights } });
    const got = await gate.logits(TOKENS);
    const want = new MixtureReferenceSession(ckpt, experts, {
      kind: 'gate',
      topK: 2,
      temperature: 1,
      weights,
    });
    expect(maxDiffRows(got, want.forward(TOKENS))).toBeLessThan(1e-4);
    // Another gate routes differently: the logits move by far more than the tolerance.
    await gate.adapters.activateMixture({
      experts: ids,
      router: { kind: 'gate', topK: 2, weights: seededGate(6) },
    });
    expect(maxDiffRows(await gate.logits(TOKENS), got)).toBeGreaterThan(1e-2);
  });

  it('decodes with the KV cache as the oracle steps, token by token (greedy)', async () => {
    await arrow.adapters.activateMixture({ experts: ids, router: { kind: 'arrow', topK: 2 } });
    const out = await arrow.complete(TOKENS.slice(0, 5), { maxTokens: 12, temperature: 0, eosTokenIds: [] });
    const ref = new MixtureReferenceSession(ckpt, experts, { kind: 'arrow', topK: 2, temperature: 1 });
    let logits = ref.forward(TOKENS.slice(0, 5)).at(-1)!;
    const want: number[] = [];
    for (let i = 0; i < 12; i++) {
      const t = argmax(logits);
      want.push(t);
      logits = ref.step(t);
    }
    expect(out.tokens).toEqual(want);
  });

  it('a single adapter on a router graph is one expert with coefficient 1: plain LoRA', async () => {
    await arrow.adapters.activate('expert-1');
    const got = await arrow.logits(TOKENS);
    const want = referenceLogitsWithAdapters(ckpt, [{ adapter: experts[1] }], TOKENS);
    expect(maxDiffRows(got, want)).toBeLessThan(1e-4);
    arrow.adapters.deactivate();
    expect(
      maxDiffRows(await arrow.logits(TOKENS), referenceLogitsWithAdapters(ckpt, [], TOKENS)),
    ).toBeLessThan(1e-4);
  });

  it('refuses DoRA experts, unknown ids, a graph without a router, and a bad top k', async () => {
    const dora = loadAdapter(makeLoraAdapter({ seed: 3, dora: true }), 'dora');
    expect(() => mixtureFeeds([experts[0], dora], { kind: 'arrow' }, base)).toThrow(IncompatibleAdapterError);
    expect(() => mixtureFeeds(experts, { kind: 'arrow', topK: 4 }, base)).toThrow(InvalidInputError);
    await expect(
      arrow.adapters.activateMixture({ experts: ['expert-0', 'nope'], router: { kind: 'arrow' } }),
    ).rejects.toThrow(/nope/);
    await expect(gate.adapters.activateMixture({ experts: ids, router: { kind: 'arrow' } })).rejects.toThrow(
      /'gate' router/,
    );
    const plain = await Runtime.create({ model: memorySource(folder, 'stories260K') });
    try {
      for (const e of experts) await plain.adapters.add(e.label, e);
      await expect(
        plain.adapters.activateMixture({ experts: ids, router: { kind: 'arrow' } }),
      ).rejects.toThrow(/without a router/);
    } finally {
      await plain.release();
    }
  });
});
