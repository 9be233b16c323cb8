/**
 * Routing accuracy of the default model's four experts on held-out prompts (models/expert-tasks.ts),
 * per expert and overall, for the router as it ships (200 examples each, whitened) and with fewer
 * examples or plain cosines, printed as a markdown table (README, "Mixtures of adapters").
 *
 *   npx tsx models/routing-accuracy.ts
 */
import path from 'node:path';
import { Runtime } from '../src/runtime.js';
import { DEFAULT_MODEL_DIR } from './default-model.js';
import { EXPERTS_DIR, EXPERT_IDS, SHAKESPEARE_DIR, routingAccuracy } from './expert-tasks.js';

async function run(): Promise<void> {
  const rt = await Runtime.create({ model: DEFAULT_MODEL_DIR });
  for (const id of EXPERT_IDS)
    await rt.adapters.add(id, id === 'shakespeare' ? SHAKESPEARE_DIR : path.join(EXPERTS_DIR, id));
  // Each prompt's embedding is one base forward: computed once for every variant.
  const cache = new Map<string, Float64Array>();
  const embed = async (p: string) => {
    let e = cache.get(p);
    if (!e) cache.set(p, (e = await rt.adapters.routingEmbedding(p)));
    return e;
  };
  const rows: string[] = [];
  for (const [examples, whiten] of [
    [200, true],
    [40, true],
    [200, false],
    [40, false],
  ] as const) {
    const acc = await routingAccuracy(embed, { examples, whiten });
    let right = 0;
    let total = 0;
    const cells = EXPERT_IDS.map((id) => {
      const r = acc.get(id) as { right: number; total: number };
      right += r.right;
      total += r.total;
      return `${r.right}/${r.total}`;
    });
    const router = `${whiten ? 'whitened' : 'plain cosine'}, ${examples} examples each`;
    rows.push(
      `| ${router} | ${cells.join(' | ')} | **${((100 * right) / total).toFixed(1)}%** (${right}/${total}) |`,
    );
  }
  console.log(
    `| router | ${EXPERT_IDS.join(' | ')} | all |\n| --- | ${EXPERT_IDS.map(() => '---').join(' | ')} | --- |`,
  );
  for (const r of rows) console.log(r);
  await rt.release();
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
