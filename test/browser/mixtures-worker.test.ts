/**
 * Mixtures and gated combinations in the worker, in headless Chromium, against Node's Runtime on the
 * same files: a token-level Arrow mixture of three LoRA experts on wasm and on WebGPU (its router's
 * ops: Abs, Greater, Cast, ReduceSum, Less, Where, Softmax), per-request routing with a blend made for
 * one request, and UniPELT in AdapterHub's format on wasm and WebGPU (where the parts that are off
 * are one masked prefix position and one zero bottleneck unit, not empty tensors), and X-LoRA on
 * wasm (its scaling pass before every call).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from '../fixtures.js';
import { main } from '../../src/cli.js';
import { Runtime } from '../../src/runtime.js';
import { makeLoraAdapter } from '../helpers/peft-fixtures.js';
import { adapterHubFiles } from '../helpers/adapterhub-fixtures.js';
import { xloraFiles } from '../helpers/xlora-fixtures.js';
import { startHarness, type Harness } from './harness.js';

const EXPERTS = ['e11', 'e12', 'e13'];

const EXAMPLES: Record<string, string[]> = {
  e11: ['The dog ran to the park.', 'Max the dog wagged his tail.', 'The puppy barked at the cat.'],
  e12: ['The sun was hot at the beach.', 'They played in the sand by the sea.', 'The waves were big.'],
  e13: ['The princess lived in a castle.', 'The king had a big crown.', 'The queen sang a song.'],
};
const TOKENS = [1, 403, 407, 261, 378, 316, 291, 400, 46];
const mixture = { experts: EXPERTS, router: { kind: 'arrow' as const, topK: 2 } };

let h: Harness;
let node: Runtime;
let modelDir: string;

beforeAll(async () => {
  h = await startHarness(async (work) => {
    modelDir = path.join(work, 'model');
    await main(
      [
        'convert',
        'llama2c',
        fixture('llama2c/stories260K.bin'),
        fixture('llama2c/tok512.bin'),
        '--out',
        modelDir,
      ],
      () => undefined,
    );
    mkdirSync(path.join(work, 'xlora'), { recursive: true });
    const x = xloraFiles({ depth: 2, layerwise: true });
    writeFileSync(path.join(work, 'xlora', 'adapter_config.json'), JSON.stringify(x.config));
    writeFileSync(path.join(work, 'xlora', 'adapter_model.safetensors'), x.weights);
    mkdirSync(path.join(work, 'unipelt'), { recursive: true });
    const uni = adapterHubFiles({ lora: true, prefix: true, bottleneck: true });
    writeFileSync(path.join(work, 'unipelt', 'adapter_config.json'), JSON.stringify(uni.config));
    writeFileSync(path.join(work, 'unipelt', 'adapter.safetensors'), uni.weights);
    EXPERTS.forEach((id, i) => {
      mkdirSync(path.join(work, 'adapters', id), { recursive: true });
      for (const [name, bytes] of makeLoraAdapter({ seed: 11 + i, r: 4, scale: 0.1 }))
        writeFileSync(path.join(work, 'adapters', id, name), bytes);
    });
  });
  node = await Runtime.create({ model: modelDir, slots: { router: 'arrow' } });
  for (const id of EXPERTS) await node.adapters.add(id, path.join(h.work, 'adapters', id));
}, 120_000);

afterAll(async () => {
  await node?.release();
  await h?.close();
});

const maxDiff = (a: ArrayLike<number>[], b: ArrayLike<number>[]) => {
  let m = 0;
  a.forEach((row, i) => {
    for (let v = 0; v < row.length; v++) m = Math.max(m, Math.abs(row[v] - b[i][v]));
  });
  return m;
};

describe('a token-level Arrow mixture in the worker', () => {
  for (const [backend, tolerance, tokens] of [
    ['wasm', 1e-4, 40],
    ['webgpu', 1e-3, 16],
  ] as const) {
    it(`on ${backend}: Node's logits and greedy text`, async () => {
      await node.adapters.activateMixture(mixture);
      const want = await node.logits(TOKENS);
      const wantText = (await node.complete('Once upon a time', { maxTokens: tokens })).text;
      const key = `mix-${backend}`;
      await h.page.evaluate(
        ([k, b]) => window.edge.load(k, { model: '/served/model/', backend: b, slots: { router: 'arrow' } }),
        [key, backend] as const,
      );
      for (const id of EXPERTS)
        await h.page.evaluate(([k, i]) => window.edge.addAdapter(k, i, `/served/adapters/${i}/`), [key, id]);
      await h.page.evaluate(([k, m]) => window.edge.activateMixture(k, m), [key, mixture] as const);
      const got = await h.page.evaluate(([k, t]) => window.edge.logits(k, t), [key, TOKENS] as const);
      expect(maxDiff(got, want)).toBeLessThan(tolerance);
      const text = await h.page.evaluate(
        ([k, n]) => window.edge.generate(k, 'Once upon a time', { maxTokens: n }),
        [key, tokens] as const,
      );
      expect(text.text).toBe(wantText);
      await h.page.evaluate((k) => window.edge.release(k), key);
    });
  }
});

describe('per-request routing in the worker', () => {
  it("routes as Node does, and generate with adapters: 'route' gives Node's text", async () => {
    node.adapters.deactivate();
    for (const [id, prompts] of Object.entries(EXAMPLES)) await node.adapters.setExamples(id, prompts);
    await h.page.evaluate(() => window.edge.load('route', { model: '/served/model/', backend: 'wasm' }));
    for (const id of EXPERTS)
      await h.page.evaluate((i) => window.edge.addAdapter('route', i, `/served/adapters/${i}/`), id);
    for (const [id, prompts] of Object.entries(EXAMPLES))
      await h.page.evaluate(([i, p]) => window.edge.setExamples('route', i, p), [id, prompts] as const);
    for (const prompt of ['A little dog found a bone.', 'She built a sand castle by the sea.']) {
      const want = await node.adapters.route(prompt, { topK: 2 });
      const got = await h.page.evaluate((p) => window.edge.route('route', p, { topK: 2 }), prompt);
      expect(got.map((c) => c.id)).toEqual(want.map((c) => c.id));
      got.forEach((c, i) => expect(Math.abs(c.weight - want[i].weight)).toBeLessThan(1e-4));
      const options = { adapters: 'route' as const, route: { topK: 2 }, maxTokens: 24 };
      const text = await h.page.evaluate(([p, o]) => window.edge.generate('route', p, o), [
        prompt,
        options,
      ] as const);
      expect(text.text).toBe((await node.complete(prompt, options)).text);
    }
    await h.page.evaluate(() => window.edge.release('route'));
  });
});

describe('UniPELT in the worker', () => {
  for (const [backend, tolerance] of [
    ['wasm', 1e-4],
    ['webgpu', 1e-3],
  ] as const) {
    it(`on ${backend}: Node's logits with UniPELT active, and with a plain LoRA on the UniPELT graph`, async () => {
      const uni = await Runtime.create({ model: modelDir, slots: { unipelt: true } });
      const key = `uni-${backend}`;
      try {
        await uni.adapters.activateUniPelt(adapterHubFiles({ lora: true, prefix: true, bottleneck: true }));
        const want = await uni.logits(TOKENS);
        await uni.adapters.add('e11', path.join(h.work, 'adapters', 'e11'));
        await uni.adapters.activate('e11');
        const wantLora = await uni.logits(TOKENS);
        await h.page.evaluate(
          ([k, b]) => window.edge.load(k, { model: '/served/model/', backend: b, slots: { unipelt: true } }),
          [key, backend] as const,
        );
        await h.page.evaluate((k) => window.edge.activateUniPelt(k, '/served/unipelt/'), key);
        expect(
          maxDiff(await h.page.evaluate(([k, t]) => window.edge.logits(k, t), [key, TOKENS] as const), want),
        ).toBeLessThan(tolerance);
        await h.page.evaluate((k) => window.edge.addAdapter(k, 'e11', '/served/adapters/e11/'), key);
        await h.page.evaluate((k) => window.edge.activate(k, 'e11'), key);
        const got = await h.page.evaluate(([k, t]) => window.edge.logits(k, t), [key, TOKENS] as const);
        expect(maxDiff(got, wantLora)).toBeLessThan(tolerance);
      } finally {
        await uni.release();
        await h.page.evaluate((k) => window.edge.release(k), key);
      }
    });
  }
});

describe('X-LoRA in the worker', () => {
  it("on wasm: Node's logits and greedy text, a scaling pass before every call", async () => {
    const x = await Runtime.create({ model: modelDir, slots: { router: 'given' } });
    try {
      for (const id of EXPERTS) await x.adapters.add(id, path.join(h.work, 'adapters', id));
      await x.adapters.activateXLora(xloraFiles({ depth: 2, layerwise: true }), EXPERTS);
      const want = await x.logits(TOKENS);
      const wantText = (await x.complete('Once upon a time', { maxTokens: 24 })).text;
      await h.page.evaluate(() =>
        window.edge.load('xlora', { model: '/served/model/', backend: 'wasm', slots: { router: 'given' } }),
      );
      for (const id of EXPERTS)
        await h.page.evaluate((i) => window.edge.addAdapter('xlora', i, `/served/adapters/${i}/`), id);
      await h.page.evaluate((e) => window.edge.activateXLora('xlora', '/served/xlora/', e), EXPERTS);
      expect(
        maxDiff(await h.page.evaluate((t) => window.edge.logits('xlora', t), TOKENS), want),
      ).toBeLessThan(1e-4);
      const text = await h.page.evaluate(() =>
        window.edge.generate('xlora', 'Once upon a time', { maxTokens: 24 }),
      );
      expect(text.text).toBe(wantText);
    } finally {
      await x.release();
      await h.page.evaluate(() => window.edge.release('xlora'));
    }
  });
});
