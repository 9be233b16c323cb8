/**
 * The project's own default base model, made from scratch with the project's own engine:
 *
 *   npx tsx models/pretrain-default.ts             # about 45 minutes on 2 cores: models/default/ and its card
 *   npx tsx models/pretrain-default.ts --quick     # a few steps into models/out/default-quick (a smoke run)
 *
 * 1. TinyStories (../shared/fixtures/corpora/tinystories-lowercase-4MB.txt) split into its stories
 *    (one per line; paragraphs inside a story are separated by blank lines); the last 5% of the
 *    stories are held out for evaluation.
 * 2. A byte-level BPE tokenizer trained on the other 95% (src/formats/bpe-trainer.ts), written as
 *    a Hugging Face tokenizer.json.
 * 3. Each story as BOS + tokens + EOS, concatenated; a Llama-family decoder pretrained on random
 *    windows of that stream (src/train/pretrain.ts).
 * 4. The model folder (config.json, model.onnx, tokenizer.json, ...), its int8 and int4 variants
 *    (`edge-adapters quantize`), and the model card README.md with the loss curve and the held-out
 *    perplexity next to stories260K's on the same text.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { checkpointToModelFolder } from '../src/convert.js';
import type { LlamaConfig } from '../src/formats/checkpoint.js';
import { trainBpe } from '../src/formats/bpe-trainer.js';
import { HfTokenizer } from '../src/formats/hf-tokenizer.js';
import { loadBackend, type BackendName } from '../src/engine/backend.js';
import { pretrain, type PretrainProgress } from '../src/train/pretrain.js';
import { main as cli } from '../src/cli.js';
import { writeModelCard } from './model-card.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const CORPUS = path.join(ROOT, '..', 'shared', 'fixtures', 'corpora', 'tinystories-lowercase-4MB.txt');

/** The default model's shape: about 1.8 M parameters. */
export const DEFAULT_CONFIG: LlamaConfig = {
  model_type: 'llama',
  architectures: ['LlamaForCausalLM'],
  hidden_size: 128,
  intermediate_size: 384,
  num_hidden_layers: 8,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 2048,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
  hidden_act: 'silu',
  bos_token_id: 1,
  eos_token_id: 2,
} as LlamaConfig;

/** The stories of the corpus: lines that are not blank, joined with their paragraphs. */
export function splitStories(text: string): string[] {
  return text
    .split(/(?<!\n)\n(?!\n)/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

async function run(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean' },
      steps: { type: 'string' },
      batch: { type: 'string' },
      seq: { type: 'string' },
      lr: { type: 'string' },
      backend: { type: 'string' },
      threads: { type: 'string' },
      out: { type: 'string' },
      seed: { type: 'string' },
    },
  });
  const quick = values.quick ?? false;
  const out = path.resolve(
    values.out ?? path.join(ROOT, quick ? 'models/out/default-quick' : 'models/default'),
  );
  const steps = Number(values.steps ?? (quick ? 20 : 4000));
  const batchSize = Number(values.batch ?? 8);
  const seqLength = Number(values.seq ?? 256);
  const lr = Number(values.lr ?? 2e-3);
  const seed = Number(values.seed ?? 0);
  const t0 = performance.now();
  const log = (line: string) =>
    process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(0)}s] ${line}\n`);

  const stories = splitStories(readFileSync(CORPUS, 'utf8'));
  const heldOut = Math.ceil(stories.length * 0.05);
  const train = stories.slice(0, stories.length - heldOut);
  const evalStories = stories.slice(stories.length - heldOut);
  log(`${stories.length} stories: ${train.length} to train on, ${heldOut} held out`);

  const tTok = performance.now();
  const trained = trainBpe(train.join('\n'), { vocabSize: DEFAULT_CONFIG.vocab_size });
  const tokenizerSeconds = (performance.now() - tTok) / 1000;
  const tokenizer = HfTokenizer.fromJson(trained.tokenizerJson, trained.tokenizerConfig);
  const stream = (list: string[]) => {
    const ids: number[] = [];
    for (const s of list)
      ids.push(tokenizer.bosId as number, ...tokenizer.encode(s), tokenizer.eosId as number);
    return Int32Array.from(ids);
  };
  const trainTokens = stream(train);
  const evalTokens = stream(evalStories);
  log(
    `tokenizer: ${tokenizerSeconds.toFixed(1)} s; ${trainTokens.length} training tokens, ${evalTokens.length} held out`,
  );

  const backendName = (values.backend ?? 'node') as BackendName;
  const threads = Number(values.threads ?? 2);
  const backend = await loadBackend({ backend: backendName, threads });
  const progress: PretrainProgress[] = [];
  const result = await pretrain({
    config: DEFAULT_CONFIG,
    tokens: trainTokens,
    evalTokens,
    evalEvery: quick ? 10 : 250,
    evalBatches: quick ? 1 : 8,
    seqLength,
    batchSize,
    steps,
    lr,
    warmupSteps: Math.min(200, Math.floor(steps / 10)),
    seed,
    backend,
    onProgress: (p) => {
      progress.push(p);
      if (p.step % 50 === 0 || p.evalLoss !== undefined || p.step === 1)
        log(
          `step ${p.step}/${p.steps} loss ${p.loss.toFixed(4)}${p.evalLoss === undefined ? '' : ` held-out ${p.evalLoss.toFixed(4)}`} lr ${p.lr.toExponential(2)} ${Math.round(p.tokensPerSecond)} tok/s`,
        );
    },
  });
  log(`pretrained in ${result.seconds.toFixed(0)} s`);

  const json = (v: unknown) => new TextEncoder().encode(`${JSON.stringify(v, null, 2)}\n`);
  const files = checkpointToModelFolder(result.checkpoint, {
    tokenizerFiles: new Map([
      ['tokenizer.json', new TextEncoder().encode(JSON.stringify(trained.tokenizerJson))],
      ['tokenizer_config.json', json(trained.tokenizerConfig)],
    ]),
  });
  mkdirSync(out, { recursive: true });
  for (const [name, bytes] of files) writeFileSync(path.join(out, name), bytes);
  for (const [format, flags] of [
    ['int8', ['--format', 'int8']],
    ['int4', ['--format', 'int4', '--block-size', '32']],
  ] as const) {
    await cli(['quantize', '--model', out, ...flags, '--out', `${out}-${format}`], () => undefined);
  }
  await writeModelCard({
    dir: out,
    config: DEFAULT_CONFIG,
    log: progress,
    seconds: result.seconds,
    tokenizerSeconds,
    trainTokens: trainTokens.length,
    evalStories,
    stories: stories.length,
    heldOut,
    options: { steps, batchSize, seqLength, lr, seed, backend: `${backendName}, ${threads} threads` },
    fixturesRoot: path.join(ROOT, '..', 'shared', 'fixtures'),
  });
  log(`wrote ${out}, ${out}-int8, ${out}-int4`);
}

if (import.meta.url === `file://${process.argv[1]}`) await run();
