/**
 * `npx tsx bench/learning.ts [--samples N] [--methods sft,kto,dpo,rlaif]`: the learning-from-feedback
 * table of the README (bench/lib/learning-experiment.ts says what is simulated and measured).
 * About 3 minutes on 2 cores with the default 200 samples per row.
 */
import { parseArgs } from 'node:util';
import { ensureStories260K } from '../models/default-model.js';
import { learningExperiment, EVENTS, RECIPES } from './lib/learning-experiment.js';
import { fixture } from './lib/models.js';
import { machineLine, progress } from './lib/report.js';
import type { TrainMethod } from '../src/personal-adapter.js';

export async function runLearning(o: { samples: number; methods: readonly TrainMethod[] }): Promise<void> {
  const results = await learningExperiment({
    model: await ensureStories260K(),
    corpus: fixture('corpora/tinystories-197KB.txt'),
    methods: o.methods,
    samples: o.samples,
    log: progress,
  });
  const base = results[0];
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  console.log(`\n## Learning from feedback (stories260K, ${EVENTS} simulated feedback events)\n`);
  console.log(
    machineLine(undefined, `onnxruntime-web wasm, 1 thread · ${o.samples} sampled stories per row`),
  );
  console.log(
    '\n| method | trained on | steps | train s | loss first → last | Tom rate | vs base | Lily rate | held-out perplexity | vs base |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of results) {
    const on =
      r.method === 'base' ? '—' : r.method === 'rlaif' ? `${r.pairs} judged pairs` : `${r.events} events`;
    const loss = r.firstLoss === undefined ? '—' : `${r.firstLoss.toFixed(3)} → ${r.lastLoss!.toFixed(3)}`;
    const recipe = r.method === 'base' ? '' : ` (lr ${RECIPES[r.method].lr})`;
    console.log(
      `| ${r.method}${recipe} | ${on} | ${r.steps || '—'} | ${r.seconds ? r.seconds.toFixed(1) : '—'} | ${loss} | ${pct(r.tom)} | ${
        r.method === 'base'
          ? '1.00x'
          : `${(r.tom / base.tom).toFixed(2)}x (+${(100 * (r.tom - base.tom)).toFixed(1)} pts)`
      } | ${pct(r.lily)} | ${r.perplexity.toFixed(3)} | ${r.method === 'base' ? '1.000x' : `${(r.perplexity / base.perplexity).toFixed(3)}x`} |`,
    );
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { samples: { type: 'string' }, methods: { type: 'string' } } });
  await runLearning({
    samples: Number(values.samples ?? 200),
    methods: (values.methods?.split(',') ?? ['sft', 'kto', 'dpo', 'rlaif']) as TrainMethod[],
  });
}
