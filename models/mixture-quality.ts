/**
 * What the mixtures do for text of each task: perplexity of held-out text of the four experts'
 * tasks (models/expert-tasks.ts) on the default model, with the base alone, the task's own expert
 * (the oracle choice), an even blend of the four, a token-level Arrow mixture (data-free), a
 * mixture with gates learned on the device from mixed training text (src/mixtures/train-gates.ts),
 * and per-request routing by the text's first sentence. Printed as a markdown table (README,
 * "Mixtures of adapters").
 *
 *   npx tsx models/mixture-quality.ts [--texts 30] [--gate-steps 80]
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadBackend } from '../src/engine/backend.js';
import { loadModelWithBase } from '../src/load-model.js';
import { GateTrainer } from '../src/mixtures/train-gates.js';
import { Runtime } from '../src/runtime.js';
import type { TrainingRow } from '../src/train/batch.js';
import type { PeftAdapter } from '../src/formats/peft-adapter.js';
import { DEFAULT_MODEL_DIR } from './default-model.js';
import { EXPERTS_DIR, EXPERT_IDS, SHAKESPEARE_DIR, expertTexts, type ExpertId } from './expert-tasks.js';
import { heldOutPerplexity } from './model-card.js';

const dirOf = (id: ExpertId) => (id === 'shakespeare' ? SHAKESPEARE_DIR : path.join(EXPERTS_DIR, id));

async function run(): Promise<void> {
  const { values } = parseArgs({ options: { texts: { type: 'string' }, 'gate-steps': { type: 'string' } } });
  const n = Number(values.texts ?? 30);
  const gateSteps = Number(values['gate-steps'] ?? 80);
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const texts = expertTexts({ examples: 200, heldOut: 100 });
  const arrow = await Runtime.create({ model: DEFAULT_MODEL_DIR, slots: { router: 'arrow' } });
  const gate = await Runtime.create({ model: DEFAULT_MODEL_DIR, slots: { router: 'gate' } });
  for (const id of EXPERT_IDS) {
    await arrow.adapters.add(id, dirOf(id));
    await gate.adapters.add(id, dirOf(id));
    await arrow.adapters.setExamples(id, texts.examples[id]);
  }
  const tokenizer = arrow.model.tokenizer;
  const limit = arrow.model.config.max_position_embeddings - 2;
  const fits = (t: string) => tokenizer.encode(t).length < limit;
  const held = Object.fromEntries(
    EXPERT_IDS.map((id) => [id, texts.heldOutTexts[id].filter(fits).slice(0, n)]),
  );

  // Gates learned from mixed training text: 100 rows of each task, all tokens scored.
  log('training gates');
  const rows: TrainingRow[] = [];
  const row = (t: string): TrainingRow => ({
    tokens: [tokenizer.bosId as number, ...tokenizer.encode(t).slice(0, 128)],
    completionStart: 1,
  });
  for (const topic of ['dog', 'seaside', 'royal'] as const)
    rows.push(...texts.train.stories[topic].slice(0, 100).map(row));
  const play = texts.train.shakespeare;
  for (let i = 0; i < 100; i++) rows.push(row(play.slice(i * 997, i * 997 + 600)));
  const { graph, base, model } = await loadModelWithBase(DEFAULT_MODEL_DIR, { slots: false });
  await model.release();
  const experts = EXPERT_IDS.map((id) => gate.adapters.get(id) as PeftAdapter);
  const trainer = new GateTrainer(
    await loadBackend({ backend: 'node', threads: 2 }),
    graph,
    base.config,
    base,
    experts,
  );
  const t0 = performance.now();
  const learned = await trainer.train(rows, { steps: gateSteps, lr: 1e-2, topK: 2, batchSize: 8, seed: 1 });
  const gateSeconds = (performance.now() - t0) / 1000;
  log(
    `  loss ${learned.losses[0].toFixed(3)} -> ${learned.losses.at(-1)!.toFixed(3)} in ${gateSeconds.toFixed(0)} s`,
  );
  await trainer.release();

  const ppl = async (rt: Runtime, id: ExpertId) => (await heldOutPerplexity(rt, held[id])).perplexity;
  const variants: [string, (id: ExpertId) => Promise<number>][] = [
    ['base', async (id) => (arrow.adapters.deactivate(), ppl(arrow, id))],
    ["the task's own expert", async (id) => (await arrow.adapters.activate(id), ppl(arrow, id))],
    [
      'even blend of the 4',
      async (id) => (
        await arrow.adapters.activate(EXPERT_IDS.map((e) => ({ id: e, weight: 0.25 }))),
        ppl(arrow, id)
      ),
    ],
    [
      'Arrow mixture, top 2 per token',
      async (id) => (
        await arrow.adapters.activateMixture({
          experts: [...EXPERT_IDS],
          router: { kind: 'arrow', topK: 2 },
        }),
        ppl(arrow, id)
      ),
    ],
    [
      `learned gates, top 2 per token (${gateSteps} steps, ${gateSeconds.toFixed(0)} s)`,
      async (id) => (
        await gate.adapters.activateMixture({
          experts: [...EXPERT_IDS],
          router: { kind: 'gate', topK: 2, weights: learned.weights },
        }),
        ppl(gate, id)
      ),
    ],
    [
      'per-request routing, top 1 by the first sentence',
      async (id) => {
        let nll = 0;
        let tokens = 0;
        for (const t of held[id]) {
          const [best] = await arrow.adapters.route(t.split(/(?<=[.!?])\s+/)[0].slice(0, 200));
          await arrow.adapters.activate(best.id);
          const r = await heldOutPerplexity(arrow, [t]);
          nll += Math.log(r.perplexity) * r.tokens;
          tokens += r.tokens;
        }
        return Math.exp(nll / tokens);
      },
    ],
  ];
  console.log(
    `| held-out perplexity | ${EXPERT_IDS.join(' | ')} |\n| --- | ${EXPERT_IDS.map(() => '---:').join(' | ')} |`,
  );
  for (const [name, measure] of variants) {
    log(name);
    const cells: string[] = [];
    for (const id of EXPERT_IDS) cells.push((await measure(id)).toFixed(1));
    console.log(`| ${name} | ${cells.join(' | ')} |`);
  }
  console.log(`\n${n} held-out texts per task (${EXPERT_IDS.map((id) => held[id].length).join(', ')}).`);
  await arrow.release();
  await gate.release();
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
