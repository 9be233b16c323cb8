/**
 * Routing accuracy on held-out prompts (issue: at least 90% to the right expert): the default
 * model's four LoRA experts (models/default-experts, and the demo's Shakespeare LoRA), prototypes
 * from 200 example prompts each from the training split, and every held-out prompt of
 * models/expert-tasks.ts routed top-1 (src/mixtures/prompt-router.ts); and the runtime's own
 * adapters.route agrees with it.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR } from '../models/default-model.js';
import {
  EXPERTS_DIR,
  EXPERT_IDS,
  SHAKESPEARE_DIR,
  expertTexts,
  routingAccuracy,
} from '../models/expert-tasks.js';
import { PromptRouter } from '../src/mixtures/prompt-router.js';
import { Runtime } from '../src/runtime.js';

describe('routing held-out prompts to the default model’s experts', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await Runtime.create({ model: DEFAULT_MODEL_DIR });
    for (const id of EXPERT_IDS)
      await rt.adapters.add(id, id === 'shakespeare' ? SHAKESPEARE_DIR : path.join(EXPERTS_DIR, id));
  });
  afterAll(() => rt.release());

  it('sends at least 90% of the held-out prompts to their expert, and most of each expert’s', async () => {
    const acc = await routingAccuracy((p) => rt.adapters.routingEmbedding(p));
    let right = 0;
    let total = 0;
    for (const [id, r] of acc) {
      console.log(`${id}: ${r.right}/${r.total}`);
      expect(r.total).toBeGreaterThanOrEqual(40);
      expect(r.right / r.total).toBeGreaterThan(0.75);
      right += r.right;
      total += r.total;
    }
    expect(right / total).toBeGreaterThanOrEqual(0.9);
  });

  it('adapters.route, given the same examples, chooses as that router does', async () => {
    const texts = expertTexts({ examples: 40, heldOut: 10 });
    const router = new PromptRouter();
    for (const id of EXPERT_IDS) {
      await rt.adapters.setExamples(id, texts.examples[id]);
      const embeddings: Float64Array[] = [];
      for (const p of texts.examples[id]) embeddings.push(await rt.adapters.routingEmbedding(p));
      router.setExamples(id, embeddings);
    }
    for (const id of EXPERT_IDS) {
      for (const p of texts.heldOut[id]) {
        const got = await rt.adapters.route(p, { topK: 2 });
        const want = router.route(await rt.adapters.routingEmbedding(p), { topK: 2 });
        expect(got).toEqual(want);
      }
    }
  });
});
