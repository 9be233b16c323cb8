/**
 * edge-adapters: the command line.
 *
 *   edge-adapters convert llama2c CHECKPOINT.bin TOKENIZER.bin --out DIR [--profile P]
 *   edge-adapters convert hf SRC_DIR --out DIR [--profile P]
 *   edge-adapters synth --shape NAME [--seed S] --out DIR [--profile P]
 *   edge-adapters quantize --model DIR --format int4|nf4|int8 [--block-size N] [--double-quant]
 *                          [--embeddings] [--exclude-lm-head] --out DIR
 *   edge-adapters generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]
 *                          [--top-p P] [--repetition-penalty R] [--seed S] [--stop STR]...
 *   edge-adapters logits --model DIR --tokens 1,403,407
 *   (generate and logits take --adapter PEFT_DIR, repeatable, and --weights w1,w2,... for a blend)
 *   edge-adapters bench --model DIR [--prompt-tokens N] [--decode-tokens N]
 *   edge-adapters train --model DIR --feedback FILE.jsonl --method sft|kto|dpo [--adapter INIT_DIR]
 *                       [--rank R] [--alpha A] [--targets q_proj,v_proj,...|all-linear]
 *                       [--last-layers K] [--steps N] [--lr X] [--batch-size B] [--beta B] [--seed S]
 *                       --out DIR
 *
 * Common: --backend wasm|node, --threads N, --kernels auto|dequantize|native (quantized bases).
 */
import { mkdir, readFile, writeFile, rm, rename } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { checkpointToModelFolder, type ConvertOptions } from './convert.js';
import { parseLlama2cCheckpoint } from './formats/llama2c-checkpoint.js';
import {
  Llama2cTokenizer,
  llama2cTokenizerToHfConfig,
  llama2cTokenizerToHfJson,
} from './formats/llama2c-tokenizer.js';
import { readHfCheckpoint } from './formats/hf-checkpoint.js';
import { synthCheckpoint, SYNTH_SHAPES } from './formats/synth.js';
import { byteTokenizerJson, BYTE_TOKENIZER_CONFIG } from './formats/byte-tokenizer.js';
import { folderSource } from './formats/files-node.js';
import { loadModel, loadModelWithBase } from './load-model.js';
import { Runtime } from './runtime.js';
import { quantizeModelFolder } from './quantize-folder.js';
import { QUANT_FORMATS, type QuantFormat } from './quant/index.js';
import { measureThroughput } from './engine/throughput.js';
import { AdapterFormatError, EdgeAdaptersError, InvalidInputError } from './errors.js';
import { loadBackend } from './engine/backend.js';
import {
  CONFIG_FILE,
  WEIGHTS_FILE,
  checkAdapterAgainstBase,
  parsePeftAdapter,
  serializePeftAdapter,
  type PeftAdapter,
} from './formats/peft-adapter.js';
import { parseFeedbackJsonl } from './train/feedback.js';
import { trainingExamples } from './train/examples.js';
import { initLora, type LoraInit } from './train/init-lora.js';
import { checkTrainable } from './train/adapter-params.js';
import { Trainer, type TrainProgress } from './train/trainer.js';
import type { Objective } from './train/losses.js';
import type { DecoderProfile } from './graph/llama.js';
import type { LlamaConfig } from './formats/checkpoint.js';
import type { BackendName } from './engine/backend.js';
import type { Kernels } from './graph/dequantize-weights.js';

const USAGE = `usage:
  edge-adapters convert llama2c CHECKPOINT.bin TOKENIZER.bin --out DIR [--profile standard|contrib]
  edge-adapters convert hf SRC_DIR --out DIR [--profile standard|contrib]
  edge-adapters synth --shape ${Object.keys(SYNTH_SHAPES).join('|')} [--seed S] --out DIR
  edge-adapters quantize --model DIR --format int4|nf4|int8 [--block-size N] [--double-quant]
                         [--embeddings] [--exclude-lm-head] --out DIR
  edge-adapters generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K]
                         [--top-p P] [--repetition-penalty R] [--seed S] [--stop STR]
                         [--adapter PEFT_DIR]... [--weights w1,w2,...]
  edge-adapters logits --model DIR --tokens 1,403,407 [--adapter PEFT_DIR]... [--weights w1,w2,...]
  edge-adapters bench --model DIR [--prompt-tokens N] [--decode-tokens N]
  edge-adapters train --model DIR --feedback FILE.jsonl --method sft|kto|dpo [--adapter INIT_DIR]
                      [--rank R] [--alpha A] [--targets q_proj,v_proj,...|all-linear] [--last-layers K]
                      [--steps N] [--lr X] [--batch-size B] [--beta B] [--seed S] --out DIR
                      (defaults: --steps 20 --lr 1e-3 --rank 8 --alpha 2*rank --targets q_proj,v_proj
                      --seed 0; --adapter continues a PEFT LoRA, IA3 or prompt-tuning folder, config kept)
options for every command: --backend wasm|node  --threads N  --kernels auto|dequantize|native`;

const OPTIONS = {
  out: { type: 'string' },
  profile: { type: 'string' },
  'external-data': { type: 'boolean' },
  shape: { type: 'string' },
  format: { type: 'string' },
  'block-size': { type: 'string' },
  'double-quant': { type: 'boolean' },
  embeddings: { type: 'boolean' },
  'exclude-lm-head': { type: 'boolean' },
  kernels: { type: 'string' },
  seed: { type: 'string' },
  model: { type: 'string' },
  prompt: { type: 'string' },
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  stop: { type: 'string', multiple: true },
  tokens: { type: 'string' },
  adapter: { type: 'string', multiple: true },
  weights: { type: 'string' },
  backend: { type: 'string' },
  threads: { type: 'string' },
  'prompt-tokens': { type: 'string' },
  'decode-tokens': { type: 'string' },
  feedback: { type: 'string' },
  method: { type: 'string' },
  rank: { type: 'string' },
  alpha: { type: 'string' },
  targets: { type: 'string' },
  'last-layers': { type: 'string' },
  steps: { type: 'string' },
  lr: { type: 'string' },
  'batch-size': { type: 'string' },
  beta: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

class UsageError extends Error {}

function number(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = value.trim() === '' ? NaN : Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got "${value}"`);
  return n;
}

/** A number that must be an integer >= min. */
function integer(value: string | undefined, name: string, min: number): number | undefined {
  const n = number(value, name);
  if (n !== undefined && !(Number.isInteger(n) && n >= min))
    throw new UsageError(`--${name} expects an integer >= ${min}, got "${value}"`);
  return n;
}

function required(value: string | undefined, name: string): string {
  if (value === undefined) throw new UsageError(`--${name} is required`);
  return value;
}

async function readBytes(file: string): Promise<Uint8Array> {
  const b = await readFile(file);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * Writes every file into a temporary sibling folder first, then moves it into place: nothing
 * half-written. An existing `out` is moved aside until the new folder is in place, and comes back
 * if that fails.
 */
async function writeFolder(out: string, files: Map<string, Uint8Array>): Promise<void> {
  const base = out.replace(/\/+$/, '');
  const tmp = `${base}.partial-${process.pid}`;
  const old = `${base}.old-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await rm(old, { recursive: true, force: true });
  let movedAside = false;
  try {
    for (const [name, bytes] of files) {
      await mkdir(path.dirname(path.join(tmp, name)), { recursive: true });
      await writeFile(path.join(tmp, name), bytes);
    }
    try {
      await rename(base, old);
      movedAside = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    await rename(tmp, base);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    if (movedAside) await rename(old, base);
    throw error;
  }
  if (movedAside) await rm(old, { recursive: true, force: true });
}

function parse(argv: string[]) {
  return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
}

type Values = ReturnType<typeof parse>['values'];

export async function main(
  argv: string[],
  stdout: (s: string) => void = (s) => process.stdout.write(s),
): Promise<void> {
  const { values: o, positionals } = parse(argv);
  const [command, ...rest] = positionals;
  if (o.help || command === undefined) {
    stdout(`${USAGE}\n`);
    return;
  }
  if (o.kernels !== undefined && !['auto', 'dequantize', 'native'].includes(o.kernels))
    throw new UsageError(`--kernels must be auto, dequantize or native, got "${o.kernels}"`);
  const backend = {
    backend: o.backend as BackendName | undefined,
    threads: number(o.threads, 'threads'),
    kernels: o.kernels as Kernels | undefined,
  };
  const convert: ConvertOptions = {
    profile: o.profile as DecoderProfile | undefined,
    externalData: o['external-data'],
  };

  switch (command) {
    case 'convert': {
      const [kind, ...inputs] = rest;
      const out = required(o.out, 'out');
      if (kind === 'llama2c') {
        const [checkpointFile, tokenizerFile] = inputs;
        if (!checkpointFile || !tokenizerFile)
          throw new UsageError('convert llama2c needs CHECKPOINT.bin and TOKENIZER.bin');
        const ckpt = parseLlama2cCheckpoint(await readBytes(checkpointFile), checkpointFile);
        const tokenizerBin = await readBytes(tokenizerFile);
        const tokenizer = Llama2cTokenizer.parse(tokenizerBin, ckpt.config.vocab_size, tokenizerFile);
        const tokenizerFiles = new Map<string, Uint8Array>([
          ['tokenizer.bin', tokenizerBin],
          ['tokenizer.json', new TextEncoder().encode(JSON.stringify(llama2cTokenizerToHfJson(tokenizer)))],
          [
            'tokenizer_config.json',
            new TextEncoder().encode(JSON.stringify(llama2cTokenizerToHfConfig(tokenizer), null, 2)),
          ],
        ]);
        // llama2.c models end a story with BOS, and run.c stops generating there.
        const generationConfig = { eos_token_id: [ckpt.config.eos_token_id, ckpt.config.bos_token_id] };
        await writeFolder(
          out,
          checkpointToModelFolder(ckpt, { ...convert, tokenizerFiles, generationConfig }),
        );
      } else if (kind === 'hf') {
        const [src] = inputs;
        if (!src) throw new UsageError('convert hf needs SRC_DIR');
        const source = folderSource(src);
        const ckpt = await readHfCheckpoint(source.read, src);
        const tokenizerFiles = new Map<string, Uint8Array>();
        for (const name of [
          'tokenizer.json',
          'tokenizer_config.json',
          'special_tokens_map.json',
          'tokenizer.bin',
        ]) {
          const bytes = await source.read(name);
          if (bytes) tokenizerFiles.set(name, bytes);
        }
        const generationBytes = await source.read('generation_config.json');
        const generationConfig = generationBytes
          ? (JSON.parse(new TextDecoder().decode(generationBytes)) as Record<string, unknown>)
          : {};
        await writeFolder(
          out,
          checkpointToModelFolder(ckpt, { ...convert, tokenizerFiles, generationConfig }),
        );
      } else {
        throw new UsageError(`convert: unknown source kind "${kind ?? ''}"; expected llama2c or hf`);
      }
      stdout(`wrote ${out}\n`);
      return;
    }
    case 'synth': {
      const shape = required(o.shape, 'shape');
      if (!(shape in SYNTH_SHAPES))
        throw new UsageError(`unknown --shape "${shape}"; one of ${Object.keys(SYNTH_SHAPES).join(', ')}`);
      const ckpt = synthCheckpoint(shape, number(o.seed, 'seed') ?? 0);
      const json = (v: object) => new TextEncoder().encode(JSON.stringify(v));
      const tokenizerFiles = new Map([
        ['tokenizer.json', json(byteTokenizerJson(ckpt.config.vocab_size))],
        ['tokenizer_config.json', json(BYTE_TOKENIZER_CONFIG)],
      ]);
      await writeFolder(
        required(o.out, 'out'),
        checkpointToModelFolder(ckpt, { ...convert, tokenizerFiles }),
      );
      stdout(`wrote ${o.out}\n`);
      return;
    }
    case 'quantize': {
      const format = required(o.format, 'format');
      if (!(QUANT_FORMATS as readonly string[]).includes(format)) {
        throw new UsageError(`--format must be one of ${QUANT_FORMATS.join(', ')}, got "${format}"`);
      }
      const files = await quantizeModelFolder(folderSource(required(o.model, 'model')), {
        format: format as QuantFormat,
        blockSize: number(o['block-size'], 'block-size'),
        doubleQuant: o['double-quant'],
        embeddings: o.embeddings,
        lmHead: !o['exclude-lm-head'],
        externalData: o['external-data'],
      });
      await writeFolder(required(o.out, 'out'), files);
      stdout(`wrote ${o.out}\n`);
      return;
    }
    case 'generate': {
      const model = await runtimeWithAdapters(required(o.model, 'model'), backend, o.adapter, o.weights);
      const prompt = required(o.prompt, 'prompt');
      const tokens = model.encode(prompt);
      stdout(model.tokenizer.decode(tokens));
      for await (const chunk of model.generate(tokens, {
        maxTokens: number(o['max-tokens'], 'max-tokens'),
        temperature: number(o.temperature, 'temperature'),
        topK: number(o['top-k'], 'top-k'),
        topP: number(o['top-p'], 'top-p'),
        repetitionPenalty: number(o['repetition-penalty'], 'repetition-penalty'),
        seed: number(o.seed, 'seed'),
        stop: o.stop,
      })) {
        stdout(chunk.text);
      }
      stdout('\n');
      await model.release();
      return;
    }
    case 'logits': {
      const tokens = required(o.tokens, 'tokens')
        .split(',')
        .map((t) => {
          const n = Number(t.trim());
          if (!Number.isInteger(n))
            throw new UsageError(`--tokens expects comma-separated integers, got "${t}"`);
          return n;
        });
      const model = await runtimeWithAdapters(required(o.model, 'model'), backend, o.adapter, o.weights);
      const logits = await model.logits(tokens);
      stdout(`${JSON.stringify({ logits: logits.map((row) => Array.from(row)) })}\n`);
      await model.release();
      return;
    }
    case 'bench': {
      const model = await loadModel(required(o.model, 'model'), backend);
      const t = await measureThroughput(model.session, {
        promptTokens: number(o['prompt-tokens'], 'prompt-tokens'),
        decodeTokens: number(o['decode-tokens'], 'decode-tokens'),
      });
      stdout(
        `| model | backend | threads | prefill tok/s (${t.promptTokens}) | decode tok/s (${t.decodeTokens}) |\n` +
          `|---|---|---|---|---|\n` +
          `| ${o.model} | ${model.backend} | ${backend.threads ?? 'default'} | ${t.prefillTokensPerSecond.toFixed(1)} | ${t.decodeTokensPerSecond.toFixed(1)} |\n`,
      );
      await model.release();
      return;
    }
    case 'train':
      await train(o, backend, stdout);
      return;
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

const METHODS: readonly Objective[] = ['sft', 'kto', 'dpo'];

/** What each method learns from, for the message when a feedback file has none of it. */
const METHOD_NEEDS: Record<Objective, string> = {
  sft: 'demonstrations {prompt, completion}, corrections or thumbs-up ratings',
  kto: 'ratings, corrections, pairs or demonstrations',
  dpo: 'preference pairs {prompt, chosen, rejected}, corrections, or a 1 and a -1 rating of one prompt',
};

/** PEFT's all-linear on a Llama model, as names: a string target_modules cannot take layers_to_transform. */
const LLAMA_LINEAR = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/**
 * `train`: feedback JSONL -> training examples -> a LoRA (new, PEFT-initialized, or --adapter's)
 * trained with the Trainer -> a PEFT folder at --out, written all or nothing. Flags and the feedback
 * file are checked before the model loads.
 */
async function train(
  o: Values,
  backend: { backend?: BackendName; threads?: number; kernels?: Kernels },
  stdout: (s: string) => void,
): Promise<void> {
  const modelDir = required(o.model, 'model');
  const feedbackFile = required(o.feedback, 'feedback');
  const method = required(o.method, 'method') as Objective;
  if (!METHODS.includes(method)) throw new UsageError(`--method must be sft, kto or dpo, got "${method}"`);
  const out = required(o.out, 'out');
  const steps = integer(o.steps, 'steps', 1) ?? 20;
  const lr = number(o.lr, 'lr') ?? 1e-3;
  if (lr < 0) throw new UsageError(`--lr expects a number >= 0, got "${o.lr}"`);
  const batchSize = integer(o['batch-size'], 'batch-size', 1);
  const beta = number(o.beta, 'beta');
  if (beta !== undefined && !(beta > 0)) throw new UsageError(`--beta expects a number > 0, got "${o.beta}"`);
  const seed = integer(o.seed, 'seed', 0) ?? 0;
  const rank = integer(o.rank, 'rank', 1);
  const alpha = number(o.alpha, 'alpha');
  if (alpha !== undefined && !(alpha > 0))
    throw new UsageError(`--alpha expects a number > 0, got "${o.alpha}"`);
  const lastLayers = integer(o['last-layers'], 'last-layers', 1);
  const targets = o.targets === undefined ? undefined : parseTargets(o.targets);

  const inits = o.adapter ?? [];
  if (inits.length > 1) throw new UsageError(`train starts from one --adapter INIT_DIR, got ${inits.length}`);
  const initDir = inits[0];
  if (initDir !== undefined) {
    const own = (['rank', 'alpha', 'targets', 'last-layers'] as const).filter((k) => o[k] !== undefined);
    if (own.length)
      throw new UsageError(
        `${own.map((k) => `--${k}`).join(', ')} cannot be used with --adapter: the rank, lora_alpha, ` +
          `target_modules and layers are those of ${initDir}/${CONFIG_FILE}`,
      );
  }

  // The feedback and the init adapter are read before the model: their errors come first.
  let text: string;
  try {
    text = await readFile(feedbackFile, 'utf8');
  } catch (error) {
    throw new InvalidInputError(feedbackFile, undefined, `cannot be read (${(error as Error).message})`);
  }
  const events = parseFeedbackJsonl(text, feedbackFile);
  if (events.length === 0)
    throw new InvalidInputError(
      feedbackFile,
      undefined,
      'holds no feedback (the file is empty): one JSON object per line, {prompt, completion, rating}, ' +
        '{prompt, completion, correction}, {prompt, chosen, rejected} or {prompt, completion}',
    );
  const init = initDir === undefined ? undefined : await readAdapterFolder(initDir);
  if (init !== undefined) checkTrainable(init.config, init.label);

  const { model, base, graph } = await loadModelWithBase(modelDir, { ...backend, slots: false });
  // Training builds its own sessions from `graph`; the inference session is not needed.
  await model.release();
  const config = model.config;
  if (lastLayers !== undefined && lastLayers > config.num_hidden_layers)
    throw new UsageError(
      `--last-layers must be at most ${config.num_hidden_layers} (the layers of ${modelDir}), got ${lastLayers}`,
    );
  const examples = trainingExamples(events, model.tokenizer);
  if (examples[method].length === 0)
    throw new InvalidInputError(
      feedbackFile,
      undefined,
      `none of its ${events.length} feedback events is an example for --method ${method}: ` +
        `${method} learns from ${METHOD_NEEDS[method]}`,
    );
  let start: PeftAdapter;
  if (init !== undefined) {
    checkAdapterAgainstBase(init, config);
    start = init;
  } else {
    const options: LoraInit = { rank, alpha, lastLayers, seed, baseName: modelDir };
    options.targets = targets === 'all-linear' && lastLayers !== undefined ? LLAMA_LINEAR : targets;
    start = newLora(config, options);
  }

  const trainer = new Trainer(
    await loadBackend({ backend: backend.backend, threads: backend.threads }),
    graph,
    config,
    base,
  );
  const t0 = performance.now();
  try {
    const progress = (p: TrainProgress) =>
      stdout(
        `step ${p.step}/${p.steps}  loss ${p.loss.toFixed(6)}  lr ${p.lr.toExponential(2)}  ` +
          `grad_norm ${p.gradNorm.toPrecision(4)}  skipped ${p.skipped ? 'yes' : 'no'}\n`,
      );
    const result = await trainer.train(
      start,
      examples,
      { method, steps, lr, batchSize, beta, seed },
      progress,
    );
    await writeFolder(out, serializePeftAdapter(result.adapter));
    const seconds = (performance.now() - t0) / 1000;
    const first = result.losses[0];
    const last = result.losses[result.losses.length - 1];
    stdout(
      `trained ${method}: ${result.losses.length} steps, ${result.skipped} skipped, ` +
        `loss ${first.toFixed(6)} -> ${last.toFixed(6)}, ${result.examples} examples, ` +
        `${seconds.toFixed(1)} s\nwrote ${out}\n`,
    );
  } finally {
    await trainer.release();
  }
}

/** The config fields of a new LoRA, by the flag that sets them. */
const FLAG_OF: Record<string, string> = {
  target_modules: 'targets',
  targets: 'targets',
  rank: 'rank',
  r: 'rank',
  lora_alpha: 'alpha',
  lastLayers: 'last-layers',
  layers_to_transform: 'last-layers',
};

/** initLora, its errors about a field told as errors of the flag that set it. */
function newLora(config: LlamaConfig, options: LoraInit): PeftAdapter {
  try {
    return initLora(config, options);
  } catch (error) {
    const flag = error instanceof EdgeAdaptersError ? FLAG_OF[error.field ?? ''] : undefined;
    if (flag === undefined) throw error;
    const e = error as EdgeAdaptersError;
    throw new UsageError(`--${flag}: ${e.message.slice(`${e.file}: ${e.field}: `.length)}`);
  }
}

/** --targets: module names or suffixes separated by commas, or all-linear. */
function parseTargets(value: string): string[] | 'all-linear' {
  if (value.trim().toLowerCase() === 'all-linear') return 'all-linear';
  const names = value.split(',').map((t) => t.trim());
  if (names.some((t) => !/^[A-Za-z0-9_.]+$/.test(t)))
    throw new UsageError(
      `--targets expects module names separated by commas (q_proj,v_proj) or all-linear, got "${value}"`,
    );
  return names;
}

/** A PEFT adapter folder on disk (adapter_config.json + adapter_model.safetensors), parsed. */
async function readAdapterFolder(dir: string): Promise<PeftAdapter> {
  const files = folderSource(dir);
  const config = await files.read(CONFIG_FILE);
  const weights = await files.read(WEIGHTS_FILE);
  if (!config) throw new AdapterFormatError(`${dir}/${CONFIG_FILE}`, undefined, 'missing');
  if (!weights) throw new AdapterFormatError(`${dir}/${WEIGHTS_FILE}`, undefined, 'missing');
  return parsePeftAdapter({ config, weights }, dir);
}

/** The model with the PEFT adapters of --adapter active (a blend with --weights when several). */
async function runtimeWithAdapters(
  model: string,
  backend: { backend?: BackendName; threads?: number; kernels?: Kernels },
  adapters: string[] = [],
  weights?: string,
) {
  const list = weights?.split(',').map((w) => number(w.trim(), 'weights') as number);
  if (list && list.length !== adapters.length) {
    throw new UsageError(`--weights has ${list.length} values for ${adapters.length} --adapter folders`);
  }
  const rt = await Runtime.create({ model, ...backend, slots: adapters.length ? undefined : false });
  for (const dir of adapters) await rt.adapters.add(dir, dir);
  if (adapters.length) await rt.adapters.activate(adapters.map((id, i) => ({ id, weight: list?.[i] ?? 1 })));
  return rt.model;
}

/** Runs the CLI as a process: usage errors exit 2, model and input errors exit 1 with their message. */
export async function run(argv: string[]): Promise<void> {
  try {
    await main(argv);
  } catch (error: unknown) {
    const parseError =
      error instanceof TypeError &&
      String((error as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS');
    if (error instanceof UsageError || parseError) {
      process.stderr.write(`edge-adapters: ${(error as Error).message}\n${USAGE}\n`);
      process.exitCode = 2;
    } else if (error instanceof EdgeAdaptersError) {
      process.stderr.write(`edge-adapters: ${error.name}: ${error.message}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(
        `edge-adapters: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
      );
      process.exitCode = 1;
    }
  }
}
