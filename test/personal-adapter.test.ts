/**
 * The personal adapter through the runtime's API on stories260K: feedback in, versions out —
 * rt.feedback / rt.train / rt.personal.history / rollback / export — with the logits of each version
 * checked against the same adapter loaded independently from its exported PEFT files, generation
 * during training on the last committed version, and failed or aborted runs changing nothing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { main } from '../src/cli.js';
import { Runtime } from '../src/runtime.js';
import { parsePeftAdapter } from '../src/formats/peft-adapter.js';
import { parsePeftConfig } from '../src/formats/peft-config.js';
import { InvalidInputError } from '../src/errors.js';
import type { FeedbackEvent } from '../src/train/feedback.js';
import { memoryFeedbackLog } from '../src/train/feedback-log.js';
import { memoryPersonalVersions } from '../src/train/personal-versions.js';
import { logProbJudge } from '../src/train/rlaif.js';

const work = mkdtempSync(path.join(tmpdir(), 'edge-adapters-personal-'));
const dir = path.join(work, 'stories260K');
afterAll(() => rmSync(work, { recursive: true, force: true }));

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

describe('the personal adapter', () => {
  let rt: Runtime;
  const stores = { feedback: memoryFeedbackLog(), versions: memoryPersonalVersions() };
  beforeAll(async () => {
    await main(
      ['convert', 'llama2c', fixture('llama2c/stories260K.bin'), fixture('llama2c/tok512.bin'), '--out', dir],
      () => {},
    );
    rt = await Runtime.create({
      model: dir,
      personal: { ...stores, lora: { rank: 4, targets: ['q_proj', 'v_proj', 'down_proj'] } },
    });
  });
  afterAll(() => rt.release());

  it('validates and logs feedback', async () => {
    for (const e of events) await rt.feedback(e);
    const log = await rt.personal.feedbackLog();
    expect(log.map((s) => s.event)).toEqual(events);
    await expect(
      rt.feedback({ prompt, completion: 'x', rating: 2 } as unknown as FeedbackEvent),
    ).rejects.toThrow(InvalidInputError);
    expect(await rt.personal.feedbackLog()).toHaveLength(events.length);
  });

  it('trains version 1, activates it, and exports it as a PEFT adapter with the same logits', async () => {
    const before = await rt.logits(probe);
    const steps: number[] = [];
    const report = await rt.train(
      { method: 'sft', steps: 6, lr: 5e-3 },
      (e) => e.stage === 'train' && steps.push(e.step),
    );
    expect(steps).toEqual([1, 2, 3, 4, 5, 6]);
    expect(report.version).toMatchObject({ version: 1, method: 'sft', steps: 6, examples: 3 });
    expect(report.version.parent).toBeUndefined();
    expect(rt.adapters.active()).toEqual([{ id: 'personal' }]);
    const after = await rt.logits(probe);
    expect(
      maxAbsDiff(
        after.flatMap((r) => [...r]),
        before.flatMap((r) => [...r]),
      ),
    ).toBeGreaterThan(1e-3);

    const files = await rt.personal.export();
    const config = parsePeftConfig(JSON.parse(new TextDecoder().decode(files.get('adapter_config.json'))));
    expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, task_type: 'CAUSAL_LM' });
    // The exported files, loaded as any PEFT adapter: the same logits as the personal adapter.
    const other = await Runtime.create({ model: dir });
    await other.adapters.add(
      'exported',
      parsePeftAdapter({
        config: files.get('adapter_config.json')!,
        weights: files.get('adapter_model.safetensors')!,
      }),
    );
    await other.adapters.activate('exported');
    expect(
      maxAbsDiff(
        (await other.logits(probe)).flatMap((r) => [...r]),
        after.flatMap((r) => [...r]),
      ),
    ).toBeLessThan(1e-6);
    await other.release();
  });

  it('trains version 2 from version 1, rolls back to 1, and a new run continues from there', async () => {
    const v1 = (await rt.logits(probe)).flatMap((r) => [...r]);
    const report = await rt.train({ method: 'dpo', steps: 4, lr: 5e-3 });
    expect(report.version).toMatchObject({ version: 2, parent: 1, method: 'dpo' });
    expect(report.losses[0]).toBeCloseTo(Math.LN2, 5); // the reference is version 1 itself
    const v2 = (await rt.logits(probe)).flatMap((r) => [...r]);
    expect(maxAbsDiff(v1, v2)).toBeGreaterThan(1e-4);

    await rt.personal.rollback(1);
    expect(
      maxAbsDiff(
        (await rt.logits(probe)).flatMap((r) => [...r]),
        v1,
      ),
    ).toBe(0);
    expect((await rt.personal.history()).map((v) => v.version)).toEqual([1, 2]);
    const v3 = await rt.train({ method: 'kto', steps: 2, lr: 5e-3 });
    expect(v3.version).toMatchObject({ version: 3, parent: 1, method: 'kto' });
    expect(v3.losses[0]).toBeCloseTo(0.5, 5);
    expect((await rt.personal.current())?.version).toBe(3);
    // An exported earlier version is its stored files.
    expect((await rt.personal.export(2)).get('adapter_model.safetensors')!.byteLength).toBeGreaterThan(0);
  });

  it('generates with the last committed version while a run trains, and refuses a second run', async () => {
    const committed = (await rt.logits(probe)).flatMap((r) => [...r]);
    let during: number[] | undefined;
    let second: unknown;
    const run = rt.train({ method: 'sft', steps: 8, lr: 5e-3 }, (e) => {
      if (e.stage === 'train' && e.step === 2 && !during) {
        void rt.logits(probe).then((l) => (during = l.flatMap((r) => [...r])));
        second = rt.train({ method: 'sft', steps: 1 }).catch((err: unknown) => err);
      }
    });
    await run;
    expect(await second).toBeInstanceOf(InvalidInputError);
    expect(during).toBeDefined();
    expect(maxAbsDiff(during!, committed)).toBe(0);
    expect(
      maxAbsDiff(
        (await rt.logits(probe)).flatMap((r) => [...r]),
        committed,
      ),
    ).toBeGreaterThan(1e-4);
  });

  it('an aborted run commits nothing and leaves the active adapter as it was', async () => {
    const history = await rt.personal.history();
    const logits = (await rt.logits(probe)).flatMap((r) => [...r]);
    const controller = new AbortController();
    await expect(
      rt.train(
        { method: 'sft', steps: 50, signal: controller.signal },
        (e) => e.stage === 'train' && e.step === 3 && controller.abort(),
      ),
    ).rejects.toThrow();
    expect(await rt.personal.history()).toEqual(history);
    expect(
      maxAbsDiff(
        (await rt.logits(probe)).flatMap((r) => [...r]),
        logits,
      ),
    ).toBe(0);
  });

  it('RLAIF: a judge ranks sampled completions into DPO pairs; a judge that prefers nothing is an error', async () => {
    const judge = (_p: string, cs: readonly string[]) => cs.map((c) => c.length);
    const sampled: number[] = [];
    const report = await rt.train(
      { method: 'rlaif', judge, prompts: [prompt, 'One day'], samples: 3, maxTokens: 12, steps: 2, lr: 1e-3 },
      (e) => e.stage === 'sample' && sampled.push(e.done),
    );
    expect(sampled).toEqual([1, 2, 3, 4, 5, 6]);
    expect(report.pairs).toBe(2);
    expect(report.version.method).toBe('rlaif');
    await expect(
      rt.train({
        method: 'rlaif',
        judge: (_p, cs) => cs.map(() => 0),
        prompts: [prompt],
        samples: 2,
        maxTokens: 4,
      }),
    ).rejects.toThrow(/no preference/);
    await expect(
      rt.train({ method: 'rlaif', judge: () => [1], prompts: [prompt], samples: 2, maxTokens: 4 }),
    ).rejects.toThrow(/judge/);
  });

  it('RLAIF with a scoring model as the judge: pairs ordered by the judge, and the policy learns them', async () => {
    // The judge: a second runtime whose active adapter was trained (SFT) on stories about Tom; it
    // scores a completion by its mean token log-probability (logProbJudge over rt.logProb).
    const judgeRt = await Runtime.create({
      model: dir,
      personal: { lora: { rank: 4, targets: 'all-linear' } },
    });
    for (const thing of ['ball', 'dog', 'cat', 'kite'])
      await judgeRt.feedback({ prompt, completion: `, there was a boy named Tom. Tom had a ${thing}.` });
    await judgeRt.train({ method: 'sft', steps: 12, lr: 1e-2 });
    const judge = logProbJudge((p, c) => judgeRt.logProb(p, c));
    const student = await Runtime.create({
      model: dir,
      personal: { lora: { rank: 4, targets: 'all-linear' } },
    });
    const report = await student.train({
      method: 'rlaif',
      judge,
      prompts: Array(8).fill(prompt),
      samples: 4,
      maxTokens: 12,
      steps: 10,
      lr: 1e-3,
    });
    const pairs = report.judged!.flatMap(({ completions, scores }) => {
      const best = scores.indexOf(Math.max(...scores));
      const worst = scores.indexOf(Math.min(...scores));
      return scores[best] > scores[worst]
        ? [{ chosen: completions[best], rejected: completions[worst], gap: scores[best] - scores[worst] }]
        : [];
    });
    expect(pairs).toHaveLength(report.pairs!);
    expect(pairs.length).toBeGreaterThan(4);
    // The judge's scores are its mean log-probs: recomputed independently, they order each pair.
    for (const pair of pairs) {
      const [c, r] = [
        await judgeRt.logProb(prompt, pair.chosen),
        await judgeRt.logProb(prompt, pair.rejected),
      ];
      expect(c.sum / c.tokens - r.sum / r.tokens).toBeCloseTo(pair.gap, 5);
    }
    // DPO on them widened the policy's margin log p(chosen) - log p(rejected) over the base's.
    const margins = async () => {
      let m = 0;
      for (const pair of pairs)
        m +=
          (await student.logProb(prompt, pair.chosen)).sum -
          (await student.logProb(prompt, pair.rejected)).sum;
      return m / pairs.length;
    };
    const trained = await margins();
    student.adapters.deactivate();
    const base = await margins();
    expect(trained).toBeGreaterThan(base + 1);
    await judgeRt.release();
    await student.release();
  });

  it('a runtime created on the same stores comes back with the current version added, not active', async () => {
    const logits = (await rt.logits(probe)).flatMap((r) => [...r]);
    const again = await Runtime.create({ model: dir, personal: stores });
    expect(again.adapters.list().map((a) => [a.id, a.active])).toEqual([['personal', false]]);
    expect((await again.personal.current())?.version).toBe((await rt.personal.current())?.version);
    expect(await again.personal.feedbackLog()).toHaveLength(events.length);
    await again.adapters.activate('personal');
    expect(
      maxAbsDiff(
        (await again.logits(probe)).flatMap((r) => [...r]),
        logits,
      ),
    ).toBe(0);
    await again.release();
  });
});
