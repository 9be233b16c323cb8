/**
 * The demo's task adapters, trained by the project on its default model (models/default), one per
 * method family, each measured against the base in the same run:
 *
 *   shakespeare   LoRA r8, every linear   SFT on tinyshakespeare.txt (lower-cased, as the base's text)
 *                                         -> perplexity of held-out Shakespeare
 *   happy-ending  LoRA r8, every linear   SFT on the training stories that end happily
 *                                         -> share of sampled stories whose last sentence is happy
 *   short-answer  IA3 (k, v, down)        SFT on one-sentence replies ending in </s>
 *                                         -> mean length of sampled replies
 *   dog-stories   prompt tuning, 8 tokens SFT on the training stories about a dog
 *                                         -> share of sampled stories that mention a dog
 *   seaside       prefix tuning, 8 tokens SFT on the training stories at the beach or the sea
 *                                         -> share of sampled stories at the beach or the sea
 *
 *   npx tsx models/train-task-adapters.ts [--model models/default] [--out models/default-adapters] [--quick]
 *
 * Writes one PEFT folder per adapter (adapter_config.json, adapter_model.safetensors), index.json
 * (id, method, description, the measured effect) and README.md with the table.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadModelWithBase } from '../src/load-model.js';
import { loadBackend } from '../src/engine/backend.js';
import { Runtime } from '../src/runtime.js';
import { createPeftAdapter, serializePeftAdapter, type PeftAdapter } from '../src/formats/peft-adapter.js';
import { parsePeftConfig } from '../src/formats/peft-config.js';
import { float32Entry } from '../src/formats/safetensors.js';
import { matchTargets } from '../src/methods/targets.js';
import { Trainer, type TrainOptions } from '../src/train/trainer.js';
import { initLora } from '../src/train/init-lora.js';
import { seededRandom } from '../src/engine/sampling.js';
import type { TrainingRow } from '../src/train/batch.js';
import { splitStories } from './pretrain-default.js';
import { heldOutPerplexity } from './model-card.js';
import type { LlamaConfig } from '../src/formats/checkpoint.js';
import type { Tokenizer } from '../src/formats/tokenizer.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const CORPORA = path.join(ROOT, '..', 'shared', 'fixtures', 'corpora');

export interface TaskAdapter {
  id: string;
  method: string;
  description: string;
  /** The prompt the effect is measured from. */
  prompt: string;
  effect: { measure: string; base: number; adapter: number };
  steps: number;
  seconds: number;
}

const HAPPY = /\b(happy|happily|smiled|smile|laughed|hugged|fun|joy|glad|best day)\b/;
const lastSentence = (s: string) =>
  s
    .trim()
    .split(/(?<=[.!?])\s+/)
    .filter(Boolean)
    .pop() ?? '';

/** One-sentence replies: a story's first sentence as the prompt, its second as the reply. */
function sentencePairs(stories: string[]): { prompt: string; reply: string }[] {
  const out: { prompt: string; reply: string }[] = [];
  for (const s of stories) {
    const sentences = s.split(/(?<=[.!?])\s+/);
    if (sentences.length >= 2 && sentences[1].length < 120)
      out.push({ prompt: sentences[0], reply: ` ${sentences[1]}` });
  }
  return out;
}

/** Windows of `length` tokens (after BOS) of `text`, every token scored. */
function windows(tokenizer: Tokenizer, text: string, length: number, count: number): TrainingRow[] {
  const ids = tokenizer.encode(text);
  const rows: TrainingRow[] = [];
  for (let i = 0; i + length <= ids.length && rows.length < count; i += length)
    rows.push({ tokens: [tokenizer.bosId as number, ...ids.slice(i, i + length)], completionStart: 1 });
  return rows;
}

/** Stories as rows: BOS, the story, EOS; all of it scored. */
function storyRows(tokenizer: Tokenizer, stories: string[], max: number): TrainingRow[] {
  return stories.slice(0, max).map((s) => ({
    tokens: [tokenizer.bosId as number, ...tokenizer.encode(s).slice(0, 300), tokenizer.eosId as number],
    completionStart: 1,
  }));
}

function ia3Adapter(config: LlamaConfig, baseName: string): PeftAdapter {
  const json = {
    auto_mapping: null,
    base_model_name_or_path: baseName,
    exclude_modules: null,
    fan_in_fan_out: false,
    feedforward_modules: ['down_proj'],
    inference_mode: true,
    init_ia3_weights: true,
    modules_to_save: null,
    peft_type: 'IA3',
    revision: null,
    target_modules: ['k_proj', 'v_proj', 'down_proj'],
    task_type: 'CAUSAL_LM',
  };
  const parsed = parsePeftConfig(json);
  const tensors = matchTargets(parsed as Parameters<typeof matchTargets>[0], config).map((module) => {
    const down = module.endsWith('down_proj');
    const n = down
      ? config.intermediate_size
      : (config.num_key_value_heads * config.hidden_size) / config.num_attention_heads;
    const shape = down ? [1, n] : [n, 1];
    return [`base_model.model.${module}.ia3_l`, float32Entry(new Float32Array(n).fill(1), shape)] as [
      string,
      ReturnType<typeof float32Entry>,
    ];
  });
  return createPeftAdapter(parsed, tensors, { format: 'pt' }, 'short-answer');
}

/** A prompt-learning adapter (prompt or prefix tuning) initialized from the embeddings of `text`'s tokens, as PEFT's TEXT init. */
function promptAdapter(
  type: 'PROMPT_TUNING' | 'PREFIX_TUNING',
  config: LlamaConfig,
  baseName: string,
  tokens: number,
  seed: number,
  embedding: Float32Array,
): PeftAdapter {
  const hd = config.hidden_size / config.num_attention_heads;
  const tokenDim = type === 'PROMPT_TUNING' ? config.hidden_size : config.num_key_value_heads * hd;
  const cols = type === 'PROMPT_TUNING' ? config.hidden_size : config.num_hidden_layers * 2 * tokenDim;
  const random = seededRandom(seed);
  const data = new Float32Array(tokens * cols);
  if (type === 'PROMPT_TUNING') {
    // Rows of the embedding table of random vocabulary tokens (PEFT's RANDOM init samples real token embeddings too).
    for (let t = 0; t < tokens; t++) {
      const id = 3 + Math.floor(random() * (config.vocab_size - 3));
      data.set(embedding.subarray(id * config.hidden_size, (id + 1) * config.hidden_size), t * cols);
    }
  } else {
    for (let i = 0; i < data.length; i++) data[i] = (random() * 2 - 1) * 0.1;
  }
  const json = {
    auto_mapping: null,
    base_model_name_or_path: baseName,
    inference_mode: true,
    modules_to_save: null,
    num_attention_heads: type === 'PROMPT_TUNING' ? config.num_attention_heads : config.num_key_value_heads,
    num_layers: config.num_hidden_layers,
    num_transformer_submodules: 1,
    num_virtual_tokens: tokens,
    peft_type: type,
    revision: null,
    task_type: 'CAUSAL_LM',
    token_dim: tokenDim,
    ...(type === 'PROMPT_TUNING'
      ? {
          prompt_tuning_init: 'RANDOM',
          prompt_tuning_init_text: null,
          tokenizer_kwargs: null,
          tokenizer_name_or_path: null,
        }
      : { encoder_hidden_size: tokenDim, prefix_projection: false }),
  };
  return createPeftAdapter(
    parsePeftConfig(json),
    [['prompt_embeddings', float32Entry(data, [tokens, cols])]],
    { format: 'pt' },
    type,
  );
}

async function rate(
  rt: Runtime,
  prompt: string,
  test: (s: string) => boolean,
  n: number,
  maxTokens = 120,
): Promise<number> {
  let hits = 0;
  for (let seed = 0; seed < n; seed++)
    if (test((await rt.complete(prompt, { maxTokens, temperature: 1, seed })).text)) hits++;
  return hits / n;
}

async function meanLength(rt: Runtime, prompts: string[], maxTokens: number): Promise<number> {
  let total = 0;
  for (const [i, p] of prompts.entries())
    total += (await rt.complete(p, { maxTokens, temperature: 1, seed: i })).tokens.length;
  return total / prompts.length;
}

async function run(): Promise<void> {
  const { values } = parseArgs({
    options: { model: { type: 'string' }, out: { type: 'string' }, quick: { type: 'boolean' } },
  });
  const quick = values.quick ?? false;
  const modelDir = path.resolve(values.model ?? path.join(ROOT, 'models/default'));
  const outDir = path.resolve(
    values.out ?? path.join(ROOT, quick ? 'models/out/default-adapters-quick' : 'models/default-adapters'),
  );
  const baseName = 'edge-adapters/default';
  const samples = quick ? 8 : 100;
  const log = (line: string) => process.stderr.write(`${line}\n`);

  const { graph, base, model } = await loadModelWithBase(modelDir, { slots: false });
  await model.release();
  const config = base.config;
  const trainer = new Trainer(await loadBackend({ backend: 'node', threads: 2 }), graph, config, base);
  const rt = await Runtime.create({ model: modelDir });
  const tokenizer = rt.model.tokenizer;
  const stories = splitStories(readFileSync(path.join(CORPORA, 'tinystories-lowercase-4MB.txt'), 'utf8'));
  const train = stories.slice(0, stories.length - Math.ceil(stories.length * 0.05));
  const shakespeare = readFileSync(path.join(CORPORA, 'tinyshakespeare.txt'), 'utf8').toLowerCase();
  const cut = Math.floor(shakespeare.length * 0.9);
  const steps = (n: number) => (quick ? 3 : n);
  const fit = async (start: PeftAdapter, rows: TrainingRow[], options: Partial<TrainOptions>) => {
    const t0 = performance.now();
    const r = await trainer.train(
      start,
      { sft: rows, kto: [], dpo: [] },
      { method: 'sft', steps: 100, lr: 3e-3, batchSize: 8, ...options, ...(quick ? { steps: 3 } : {}) },
    );
    log(`  loss ${r.losses[0].toFixed(3)} -> ${r.losses[r.losses.length - 1].toFixed(3)}`);
    return { adapter: r.adapter, seconds: (performance.now() - t0) / 1000, steps: r.losses.length };
  };
  const measured = async (adapter: PeftAdapter, measure: (r: Runtime) => Promise<number>) => {
    rt.adapters.deactivate();
    const before = await measure(rt);
    await rt.adapters.replace('task', adapter);
    await rt.adapters.activate('task');
    const after = await measure(rt);
    rt.adapters.deactivate();
    return { before, after };
  };
  const results: TaskAdapter[] = [];
  const save = (t: TaskAdapter, adapter: PeftAdapter) => {
    const dir = path.join(outDir, t.id);
    mkdirSync(dir, { recursive: true });
    for (const [name, bytes] of serializePeftAdapter(adapter)) writeFileSync(path.join(dir, name), bytes);
    results.push(t);
    log(`${t.id}: ${t.effect.measure} ${t.effect.base.toFixed(3)} -> ${t.effect.adapter.toFixed(3)}`);
  };

  // 1. Shakespeare: LoRA on every linear, SFT on windows of the play text.
  log('shakespeare');
  const lora = (seed: number) => initLora(config, { rank: 8, targets: 'all-linear', seed, baseName });
  const sh = await fit(lora(1), windows(tokenizer, shakespeare.slice(0, cut), 128, 2000), {
    steps: steps(150),
  });
  const heldShakespeare = shakespeare
    .slice(cut)
    .split(/\n\n+/)
    .filter((s) => s.length > 40)
    .slice(0, quick ? 10 : 300);
  const shEffect = await measured(
    sh.adapter,
    async (r) => (await heldOutPerplexity(r, heldShakespeare)).perplexity,
  );
  save(
    {
      id: 'shakespeare',
      method: 'LORA',
      description: 'Writes like Shakespeare: a LoRA (r 8, every linear) trained on tinyshakespeare',
      prompt: 'first citizen:',
      effect: { measure: 'held-out Shakespeare perplexity', base: shEffect.before, adapter: shEffect.after },
      steps: sh.steps,
      seconds: sh.seconds,
    },
    sh.adapter,
  );

  // 2. Happy endings.
  log('happy-ending');
  const happy = train.filter((s) => HAPPY.test(lastSentence(s)));
  const he = await fit(lora(2), storyRows(tokenizer, happy, 2000), { steps: steps(120) });
  const isHappy = (s: string) => HAPPY.test(lastSentence(s));
  const heEffect = await measured(he.adapter, (r) => rate(r, 'once upon a time', isHappy, samples, 200));
  save(
    {
      id: 'happy-ending',
      method: 'LORA',
      description:
        'Stories that end happily: a LoRA (r 8, every linear) trained on stories with a happy last sentence',
      prompt: 'once upon a time',
      effect: { measure: 'share of stories ending happily', base: heEffect.before, adapter: heEffect.after },
      steps: he.steps,
      seconds: he.seconds,
    },
    he.adapter,
  );

  // 3. Short answers: IA3 on one-sentence replies ending with </s>.
  log('short-answer');
  const pairs = sentencePairs(train).slice(0, 3000);
  const replyRows = pairs.map(({ prompt, reply }) => {
    const p = [tokenizer.bosId as number, ...tokenizer.encode(prompt)];
    return {
      tokens: [...p, ...tokenizer.encode(reply), tokenizer.eosId as number],
      completionStart: p.length,
    };
  });
  const sa = await fit(ia3Adapter(config, baseName), replyRows, { steps: steps(150), lr: 2e-2 });
  const probes = sentencePairs(stories.slice(train.length))
    .slice(0, samples)
    .map((p) => p.prompt);
  const saEffect = await measured(sa.adapter, (r) => meanLength(r, probes, 100));
  save(
    {
      id: 'short-answer',
      method: 'IA3',
      description: 'Answers in one sentence: IA3 vectors (k, v, down) trained on one-sentence replies',
      prompt: probes[0] ?? 'the sun was hot.',
      effect: { measure: 'mean reply length, tokens', base: saEffect.before, adapter: saEffect.after },
      steps: sa.steps,
      seconds: sa.seconds,
    },
    sa.adapter,
  );

  // 4. Dog stories: prompt tuning.
  log('dog-stories');
  const embed = base.weight('model.embed_tokens');
  const dog = /\b(dog|puppy)\b/;
  const dg = await fit(
    promptAdapter('PROMPT_TUNING', config, baseName, 8, 4, embed),
    storyRows(
      tokenizer,
      train.filter((s) => dog.test(s)),
      2000,
    ),
    { steps: steps(150), lr: 1e-2 },
  );
  const dgEffect = await measured(dg.adapter, (r) =>
    rate(r, 'once upon a time', (s) => dog.test(s), samples),
  );
  save(
    {
      id: 'dog-stories',
      method: 'PROMPT_TUNING',
      description: 'Stories about a dog: 8 virtual tokens (prompt tuning) trained on dog stories',
      prompt: 'once upon a time',
      effect: { measure: 'share of stories with a dog', base: dgEffect.before, adapter: dgEffect.after },
      steps: dg.steps,
      seconds: dg.seconds,
    },
    dg.adapter,
  );

  // 5. Seaside: prefix tuning.
  log('seaside');
  const sea = /\b(beach|sea|ocean|waves?|sand)\b/;
  const ss = await fit(
    promptAdapter('PREFIX_TUNING', config, baseName, 8, 5, embed),
    storyRows(
      tokenizer,
      train.filter((s) => sea.test(s)),
      2000,
    ),
    { steps: steps(150), lr: 1e-2 },
  );
  const ssEffect = await measured(ss.adapter, (r) =>
    rate(r, 'once upon a time', (s) => sea.test(s), samples),
  );
  save(
    {
      id: 'seaside',
      method: 'PREFIX_TUNING',
      description:
        'Stories at the seaside: 8 prefix keys and values per layer (prefix tuning) trained on beach and sea stories',
      prompt: 'once upon a time',
      effect: {
        measure: 'share of stories at the beach or the sea',
        base: ssEffect.before,
        adapter: ssEffect.after,
      },
      steps: ss.steps,
      seconds: ss.seconds,
    },
    ss.adapter,
  );

  writeFileSync(path.join(outDir, 'index.json'), `${JSON.stringify(results, null, 2)}\n`);
  const rows = results.map(
    (r) =>
      `| ${r.id} | ${r.method} | ${r.description.split(': ')[1] ?? r.description} | ${r.steps} | ${r.seconds.toFixed(0)} | ${r.effect.measure} | ${r.effect.base.toFixed(3)} | ${r.effect.adapter.toFixed(3)} |`,
  );
  writeFileSync(
    path.join(outDir, 'README.md'),
    `# The demo's task adapters

Trained by \`npx tsx models/train-task-adapters.ts\` on the default model (models/default) with the
project's trainer (SFT, AdamW, onnxruntime-node, 2 threads), one per method family; real Hugging Face
PEFT folders. Each effect is measured against the base in the same run (${samples} samples at
temperature 1, seeds 0-${samples - 1}; perplexity on held-out text).

| adapter | PEFT type | what | steps | train s | measure | base | with the adapter |
| --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join('\n')}
`,
  );
  await rt.release();
  await trainer.release();
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
