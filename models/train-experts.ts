/**
 * The default model's LoRA experts for mixtures (README, "Mixtures of adapters"): one LoRA per topic,
 * trained by the project on its default model (models/default) with SFT, with the demo's Shakespeare
 * LoRA as the fourth expert (models/expert-tasks.ts defines the tasks and their prompts):
 *
 *   dog, seaside, royal   LoRA r 8 on every linear, SFT on the training stories of the topic
 *                         -> share of sampled stories that name the topic, base and expert
 *
 *   npx tsx models/train-experts.ts [--out models/default-experts] [--quick]
 *
 * Writes one PEFT folder per expert and index.json (id, description, the measured effect).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadModelWithBase } from '../src/load-model.js';
import { loadBackend } from '../src/engine/backend.js';
import { Runtime } from '../src/runtime.js';
import { serializePeftAdapter } from '../src/formats/peft-adapter.js';
import { Trainer } from '../src/train/trainer.js';
import { initLora } from '../src/train/init-lora.js';
import type { TrainingRow } from '../src/train/batch.js';
import { DEFAULT_MODEL_DIR } from './default-model.js';
import { EXPERTS_DIR, TOPICS, expertTexts, type Topic } from './expert-tasks.js';

export interface ExpertEntry {
  id: string;
  description: string;
  effect: { measure: string; base: number; expert: number };
  stories: number;
  steps: number;
  seconds: number;
}

const DESCRIPTIONS: Record<Topic, string> = {
  dog: 'Stories with a dog: a LoRA (r 8, every linear) trained on dog stories',
  seaside: 'Stories at the seaside: a LoRA (r 8, every linear) trained on beach and sea stories',
  royal: 'Stories of kings and princesses: a LoRA (r 8, every linear) trained on royal stories',
};

async function run(): Promise<void> {
  const { values } = parseArgs({ options: { out: { type: 'string' }, quick: { type: 'boolean' } } });
  const quick = values.quick ?? false;
  const outDir = path.resolve(values.out ?? (quick ? 'models/out/default-experts-quick' : EXPERTS_DIR));
  const samples = quick ? 8 : 100;
  const log = (line: string) => process.stderr.write(`${line}\n`);

  const { graph, base, model } = await loadModelWithBase(DEFAULT_MODEL_DIR, { slots: false });
  await model.release();
  const trainer = new Trainer(await loadBackend({ backend: 'node', threads: 2 }), graph, base.config, base);
  const rt = await Runtime.create({ model: DEFAULT_MODEL_DIR });
  const tokenizer = rt.model.tokenizer;
  const texts = expertTexts();
  const rate = async (topic: Topic) => {
    let hits = 0;
    for (let seed = 0; seed < samples; seed++) {
      const { text } = await rt.complete('once upon a time', { maxTokens: 120, temperature: 1, seed });
      if (TOPICS[topic].test(text)) hits++;
    }
    return hits / samples;
  };
  const entries: ExpertEntry[] = [];
  for (const [i, topic] of (['dog', 'seaside', 'royal'] as const).entries()) {
    log(topic);
    const stories = texts.train.stories[topic];
    const rows: TrainingRow[] = stories.map((s) => ({
      tokens: [tokenizer.bosId as number, ...tokenizer.encode(s).slice(0, 300), tokenizer.eosId as number],
      completionStart: 1,
    }));
    const start = initLora(base.config, {
      rank: 8,
      targets: 'all-linear',
      seed: 10 + i,
      baseName: 'edge-adapters/default',
    });
    const t0 = performance.now();
    const result = await trainer.train(
      start,
      { sft: rows, kto: [], dpo: [] },
      { method: 'sft', steps: quick ? 3 : 120, lr: 3e-3, batchSize: 8, seed: i },
    );
    const seconds = (performance.now() - t0) / 1000;
    log(
      `  loss ${result.losses[0].toFixed(3)} -> ${result.losses.at(-1)!.toFixed(3)} in ${seconds.toFixed(0)} s`,
    );
    const dir = path.join(outDir, topic);
    mkdirSync(dir, { recursive: true });
    for (const [name, bytes] of serializePeftAdapter(result.adapter))
      writeFileSync(path.join(dir, name), bytes);
    rt.adapters.deactivate();
    const before = await rate(topic);
    await rt.adapters.replace('expert', result.adapter);
    await rt.adapters.activate('expert');
    const after = await rate(topic);
    log(`  stories naming the topic: ${before} -> ${after}`);
    entries.push({
      id: topic,
      description: DESCRIPTIONS[topic],
      effect: {
        measure: `share of ${samples} sampled stories that name the topic`,
        base: before,
        expert: after,
      },
      stories: stories.length,
      steps: result.losses.length,
      seconds,
    });
  }
  writeFileSync(path.join(outDir, 'index.json'), `${JSON.stringify(entries, null, 2)}\n`);
  await rt.release();
  await trainer.release();
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
