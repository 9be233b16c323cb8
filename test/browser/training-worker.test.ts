/**
 * On-device learning in real Chromium: the personal adapter of a runtime in a web worker, its
 * feedback log and versions in the browser's real IndexedDB. Oracles: Node's Runtime trained on the
 * same feedback with the same seed (same losses, same logits), the versions' own exported PEFT files
 * loaded in Node, and the greedy text of the last committed version while a new one trains.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from '../fixtures.js';
import { main } from '../../src/cli.js';
import { Runtime } from '../../src/runtime.js';
import { parsePeftAdapter } from '../../src/formats/peft-adapter.js';
import type { FeedbackEvent } from '../../src/train/feedback.js';
import { maxAbsDiff } from '../helpers/numeric.js';
import { startHarness, type Harness } from './harness.js';

const prompt = 'Once upon a time';
const events: FeedbackEvent[] = [
  {
    prompt,
    completion: ', there was a girl named Lily. She liked to play.',
    correction: ', there was a boy named Tom. He liked to play.',
  },
  { prompt, completion: ', there was a boy named Tom. He had a ball.', rating: 1 },
  { prompt, completion: ', there was a girl named Lily. She had a doll.', rating: -1 },
  {
    prompt,
    chosen: ', Tom went to the park with his dog.',
    rejected: ', Lily went to the park with her dog.',
  },
];
const probe = [1, 403, 407, 261, 378, 300, 301, 263, 302, 290];
const lora = { rank: 4, targets: ['q_proj', 'v_proj', 'down_proj'] };
const sft = { method: 'sft' as const, steps: 6, lr: 5e-3, seed: 1 };

let h: Harness;
let modelDir: string;
const flat = (rows: ArrayLike<number>[]) => rows.flatMap((r) => Array.from(r));
const bytesOf = (files: Record<string, number[]>) => ({
  config: Uint8Array.from(files['adapter_config.json']),
  weights: Uint8Array.from(files['adapter_model.safetensors']),
});

beforeAll(async () => {
  h = await startHarness(
    async (work) => {
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
    },
    { page: 'test/browser/training-page.ts', global: 'training' },
  );
  await h.page.evaluate(() =>
    window.edge.load('t', {
      model: '/served/model/',
      backend: 'wasm',
      personal: { lora: { rank: 4, targets: ['q_proj', 'v_proj', 'down_proj'] } },
    }),
  );
}, 180_000);

afterAll(async () => {
  await h?.close();
});

describe('the personal adapter in a worker', () => {
  it('logs feedback in IndexedDB; a malformed event is an InvalidInputError naming the field', async () => {
    const ids = await h.page.evaluate((e) => window.training.feedback('t', e), events);
    expect(ids).toHaveLength(events.length);
    expect(new Set(ids).size).toBe(events.length);
    const bad = await h.page.evaluate(() =>
      window.training.feedbackFailure('t', { prompt: 'x', completion: 'y', ratting: 1 }),
    );
    expect(bad).toMatchObject({ name: 'InvalidInputError', field: 'ratting' });
    expect(bad!.classes).toContain('InvalidInputError');
    expect(await h.page.evaluate(() => window.training.feedbackLog('t'))).toEqual(events);
  });

  it('trains in the worker as Node does, without blocking the page, generating with the committed version meanwhile', async () => {
    // Node: the same feedback, seed and recipe.
    const node = await Runtime.create({ model: modelDir, personal: { lora } });
    for (const e of events) await node.feedback(e);
    const baseText = (await node.complete(prompt, { maxTokens: 20 })).text;
    const nodeReport = await node.train(sft);
    const nodeLogits = flat(await node.logits(probe));

    await h.page.evaluate((r) => window.training.startTraining('t', 'sft', r, { generate: [1] }), sft);
    const t = await h.page.evaluate(() => window.training.training('sft'));
    expect(t.failure).toBeUndefined();
    expect(t.report!.version).toMatchObject({ version: 1, method: 'sft', steps: 6 });
    // The same training run: Chromium's wasm and Node's wasm compute the same losses.
    expect(maxAbsDiff(t.report!.losses, nodeReport.losses)).toBeLessThan(1e-5);
    expect(t.events.filter((e) => e.stage === 'train').map((e) => (e as { step: number }).step)).toEqual([
      1, 2, 3, 4, 5, 6,
    ]);
    // A request made during the run started streaming before the run ended, with the last committed
    // version: none yet, the base.
    expect(t.during).toHaveLength(1);
    expect(t.during[0].firstChunk).toBeLessThan(t.trainedAt!);
    expect(t.during[0].text).toBe(baseText);
    // The page never stalled while the worker trained.
    expect(t.longTasks.filter((l) => l.duration > 200)).toEqual([]);
    // Now active: the worker's logits are Node's.
    const logits = await h.page.evaluate((p) => window.edge.logits('t', p), probe);
    expect(maxAbsDiff(flat(logits), nodeLogits)).toBeLessThan(1e-4);
    await node.release();
  });

  it('versions: a second run, rollback, export, and a restarted worker that comes back with them', async () => {
    const v1 = flat(await h.page.evaluate((p) => window.edge.logits('t', p), probe));
    const v1Files = await h.page.evaluate(() => window.training.exportPersonal('t'));
    await h.page.evaluate(() =>
      window.training.startTraining('t', 'dpo', { method: 'dpo', steps: 3, lr: 5e-3 }),
    );
    const dpo = await h.page.evaluate(() => window.training.training('dpo'));
    expect(dpo.report!.version).toMatchObject({ version: 2, parent: 1, method: 'dpo' });
    expect(dpo.report!.losses[0]).toBeCloseTo(Math.LN2, 5);
    const v2 = flat(await h.page.evaluate((p) => window.edge.logits('t', p), probe));
    expect(maxAbsDiff(v1, v2)).toBeGreaterThan(1e-4);

    // The exported files of v2, loaded in Node, give the worker's logits.
    const node = await Runtime.create({ model: modelDir });
    await node.adapters.add(
      'v2',
      parsePeftAdapter(bytesOf(await h.page.evaluate(() => window.training.exportPersonal('t')))),
    );
    await node.adapters.activate('v2');
    expect(maxAbsDiff(flat(await node.logits(probe)), v2)).toBeLessThan(1e-4);
    await node.release();

    await h.page.evaluate(() => window.training.rollback('t', 1));
    expect(maxAbsDiff(flat(await h.page.evaluate((p) => window.edge.logits('t', p), probe)), v1)).toBe(0);
    expect(await h.page.evaluate(() => window.training.exportPersonal('t', 1))).toEqual(v1Files);

    // A new worker reads the same IndexedDB: version 1 current, history and feedback kept.
    await h.page.evaluate(() => window.training.restart('t'));
    expect((await h.page.evaluate(() => window.training.current('t')))?.version).toBe(1);
    expect((await h.page.evaluate(() => window.training.history('t'))).map((v) => v.version)).toEqual([1, 2]);
    expect(await h.page.evaluate(() => window.training.feedbackLog('t'))).toEqual(events);
    await h.page.evaluate(() => window.edge.activate('t', 'personal'));
    expect(maxAbsDiff(flat(await h.page.evaluate((p) => window.edge.logits('t', p), probe)), v1)).toBe(0);
  });

  it('RLAIF with a judge on the page, and an aborted run that commits nothing', async () => {
    await h.page.evaluate(() =>
      window.training.startTraining('t', 'rlaif', {
        method: 'rlaif',
        judge: 'length',
        prompts: ['Once upon a time', 'One day'],
        samples: 3,
        maxTokens: 12,
        steps: 2,
      }),
    );
    const r = await h.page.evaluate(() => window.training.training('rlaif'));
    expect(r.failure).toBeUndefined();
    expect(r.report!.pairs).toBe(2);
    expect(r.report!.version).toMatchObject({ version: 3, parent: 1, method: 'rlaif' });
    expect(r.events.filter((e) => e.stage === 'sample')).toHaveLength(6);

    const before = await h.page.evaluate(() => window.training.history('t'));
    await h.page.evaluate(() =>
      window.training.startTraining('t', 'aborted', { method: 'sft', steps: 40 }, { abortAt: 2 }),
    );
    const aborted = await h.page.evaluate(() => window.training.training('aborted'));
    expect(aborted.failure?.name).toBe('AbortError');
    expect(await h.page.evaluate(() => window.training.history('t'))).toEqual(before);
  });
});
