/**
 * The model folders the benchmarks run, generated once under bench/out/models/ (gitignored):
 *
 *   stories260K   llama2.c stories260K converted as `edge-adapters convert llama2c` does
 *   smollm2-135m  synthCheckpoint('smollm2-135m') (real SmolLM2-135M shapes, seeded random weights)
 *
 * Both in our default ('standard') profile, float32. Each folder is also a transformers.js folder:
 * onnx/model.onnx is a hard link to model.onnx, so both engines read the same bytes. The synthetic
 * model gets tok512.bin extended with placeholder pieces to its 49152 ids, so our loader has a
 * tokenizer and every sampled id decodes; prompts are real TinyStories text in tok512 ids, valid in
 * both vocabularies.
 *
 * A folder is rebuilt when the source files that shape it change (a hash in `.stamp`).
 */
import { createHash } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkpointToModelFolder } from '../../src/convert.js';
import type { Checkpoint, LlamaConfig } from '../../src/formats/checkpoint.js';
import { parseLlama2cCheckpoint } from '../../src/formats/llama2c-checkpoint.js';
import {
  Llama2cTokenizer,
  llama2cTokenizerToHfConfig,
  llama2cTokenizerToHfJson,
} from '../../src/formats/llama2c-tokenizer.js';
import { synthCheckpoint, synthConfig } from '../../src/formats/synth.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const OUT = path.join(ROOT, 'bench', 'out');
const FIXTURES = path.join(ROOT, '..', 'shared', 'fixtures');

export type ModelName = 'stories260K' | 'smollm2-135m';
export const MODELS: readonly ModelName[] = ['stories260K', 'smollm2-135m'];

export function fixture(relative: string): string {
  const p = path.join(FIXTURES, relative);
  if (!existsSync(p)) throw new Error(`missing fixture ../shared/fixtures/${relative}`);
  return p;
}

const bytes = (file: string): Uint8Array => {
  const b = readFileSync(file);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
};

export function modelDir(name: ModelName): string {
  return path.join(OUT, 'models', name);
}

export function modelConfig(name: ModelName): LlamaConfig {
  return JSON.parse(readFileSync(path.join(modelDir(name), 'config.json'), 'utf8')) as LlamaConfig;
}

/** Hash of the sources that decide a folder's bytes. */
function sourceStamp(name: ModelName): string {
  const h = createHash('sha256').update(name);
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) h.update(e.name).update(readFileSync(p));
    }
  };
  walk(path.join(ROOT, 'src', 'graph'));
  walk(path.join(ROOT, 'src', 'formats'));
  h.update(readFileSync(path.join(ROOT, 'src', 'convert.ts')));
  h.update(readFileSync(fileURLToPath(import.meta.url)));
  return h.digest('hex').slice(0, 16);
}

/** tok512.bin with `vocabSize - 512` more pieces (`<unused512>`, ...) that no text merges into. */
export function extendedTok512(vocabSize: number): Uint8Array {
  const base = bytes(fixture('llama2c/tok512.bin'));
  const extra: Uint8Array[] = [];
  let maxLen = new DataView(base.buffer, base.byteOffset).getInt32(0, true);
  for (let id = 512; id < vocabSize; id++) {
    const piece = new TextEncoder().encode(`<unused${id}>`);
    const e = new Uint8Array(8 + piece.length);
    const v = new DataView(e.buffer);
    v.setFloat32(0, -1e9, true);
    v.setInt32(4, piece.length, true);
    e.set(piece, 8);
    extra.push(e);
    maxLen = Math.max(maxLen, piece.length);
  }
  const out = new Uint8Array(base.length + extra.reduce((n, e) => n + e.length, 0));
  out.set(base);
  new DataView(out.buffer).setInt32(0, maxLen, true);
  let at = base.length;
  for (const e of extra) {
    out.set(e, at);
    at += e.length;
  }
  return out;
}

export function storiesCheckpoint(): Checkpoint {
  return parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
}

export const SYNTH_SEED = 0;

export function smolCheckpoint(): Checkpoint {
  return synthCheckpoint('smollm2-135m', SYNTH_SEED);
}

function folderFiles(name: ModelName): Map<string, Uint8Array> {
  if (name === 'stories260K') {
    const ckpt = storiesCheckpoint();
    const tokenizerBin = bytes(fixture('llama2c/tok512.bin'));
    const tok = Llama2cTokenizer.parse(tokenizerBin, ckpt.config.vocab_size, 'tok512.bin');
    const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    return checkpointToModelFolder(ckpt, {
      tokenizerFiles: new Map([
        ['tokenizer.bin', tokenizerBin],
        ['tokenizer.json', json(llama2cTokenizerToHfJson(tok))],
        ['tokenizer_config.json', json(llama2cTokenizerToHfConfig(tok))],
      ]),
      generationConfig: { eos_token_id: [ckpt.config.eos_token_id, ckpt.config.bos_token_id] },
    });
  }
  const config = synthConfig('smollm2-135m');
  return checkpointToModelFolder(smolCheckpoint(), {
    tokenizerFiles: new Map([['tokenizer.bin', extendedTok512(config.vocab_size)]]),
  });
}

/** Makes sure the folder exists and is current; returns its path. */
export function ensureModel(name: ModelName): string {
  const dir = modelDir(name);
  const stamp = sourceStamp(name);
  const stampFile = path.join(dir, '.stamp');
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return dir;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.join(dir, 'onnx'), { recursive: true });
  for (const [file, data] of folderFiles(name)) writeFileSync(path.join(dir, file), data);
  linkSync(path.join(dir, 'model.onnx'), path.join(dir, 'onnx', 'model.onnx'));
  writeFileSync(stampFile, stamp);
  return dir;
}

/**
 * Real text for prompts: the first `length` tok512 ids of the TinyStories corpus (BOS first), then
 * the next `continuation` ids (teacher-forced decode steps).
 */
export function storyTokens(length: number, continuation = 0): { prompt: number[]; next: number[] } {
  const tok = Llama2cTokenizer.parse(bytes(fixture('llama2c/tok512.bin')), 512, 'tok512.bin');
  const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8').slice(
    0,
    20 * (length + continuation),
  );
  const ids = tok.encode(text, { bos: true });
  if (ids.length < length + continuation) throw new Error('the TinyStories corpus fixture is too short');
  return { prompt: ids.slice(0, length), next: ids.slice(length, length + continuation) };
}
