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
import { loadModel } from './load-model.js';
import { Runtime } from './runtime.js';
import { quantizeModelFolder } from './quantize-folder.js';
import { QUANT_FORMATS, type QuantFormat } from './quant/index.js';
import { measureThroughput } from './engine/throughput.js';
import { EdgeAdaptersError } from './errors.js';
import type { DecoderProfile } from './graph/llama.js';
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
  help: { type: 'boolean', short: 'h' },
} as const;

class UsageError extends Error {}

function number(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got "${value}"`);
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

/** Writes every file into a temporary folder first, then moves it into place: nothing half-written. */
async function writeFolder(out: string, files: Map<string, Uint8Array>): Promise<void> {
  const tmp = `${out.replace(/\/+$/, '')}.partial-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  try {
    for (const [name, bytes] of files) {
      await mkdir(path.dirname(path.join(tmp, name)), { recursive: true });
      await writeFile(path.join(tmp, name), bytes);
    }
    await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    throw error;
  }
}

export async function main(
  argv: string[],
  stdout: (s: string) => void = (s) => process.stdout.write(s),
): Promise<void> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    options: OPTIONS,
    allowPositionals: true,
    strict: true,
  });
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
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
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
