/**
 * A model folder: what `edge-adapters convert` writes and what the engine loads.
 *
 *   config.json              Hugging Face LlamaConfig fields
 *   model.onnx               the decoder graph (Hugging Face / optimum I/O layout)
 *   model.onnx_data          its weights, when stored as ONNX external data
 *   tokenizer.json           Hugging Face tokenizer (+ tokenizer_config.json), and/or
 *   tokenizer.bin            a llama2.c tokenizer (preferred when present: byte-exact with run.c)
 *   generation_config.json   defaults for generation (eos_token_id, sampling)
 *
 * A transformers.js-style folder (onnx/model.onnx beside config.json and tokenizer.json) loads too.
 */
import type { LlamaConfig } from './checkpoint.js';
import { readJson, type FileSource } from './files.js';
import { parseLlamaConfig } from './llama-config.js';
import type { Tokenizer } from './tokenizer.js';
import { Llama2cTokenizer } from './llama2c-tokenizer.js';
import { HfTokenizer } from './hf-tokenizer.js';
import { decodeModel, externalLocations } from './onnx/index.js';
import { ModelFormatError } from '../errors.js';

export interface GenerationDefaults {
  eosTokenIds?: number[];
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
}

export interface ModelFolder {
  label: string;
  config: LlamaConfig;
  /** The path of the graph inside the folder, e.g. `model.onnx` or `onnx/model.onnx`. */
  onnxFile: string;
  onnx: Uint8Array;
  /** External data files, with `path` as the graph names them (relative to the graph's folder). */
  externalData: { path: string; data: Uint8Array }[];
  tokenizer: Tokenizer;
  generation: GenerationDefaults;
}

const GRAPH_FILES = ['model.onnx', 'onnx/model.onnx'];

export async function readModelFolder(source: FileSource): Promise<ModelFolder> {
  const where = (name: string) => `${source.label}/${name}`;
  const configJson = await readJson(source, 'config.json');
  if (configJson === undefined)
    throw new ModelFormatError(where('config.json'), undefined, 'missing: a model folder needs config.json');
  const config = parseLlamaConfig(configJson, where('config.json'));

  let onnxFile: string | undefined;
  let onnx: Uint8Array | undefined;
  for (const name of GRAPH_FILES) {
    onnx = await source.read(name);
    if (onnx) {
      onnxFile = name;
      break;
    }
  }
  if (!onnx || !onnxFile)
    throw new ModelFormatError(
      where('model.onnx'),
      undefined,
      `missing: expected one of ${GRAPH_FILES.join(', ')}`,
    );

  const dir = onnxFile.includes('/') ? onnxFile.slice(0, onnxFile.lastIndexOf('/') + 1) : '';
  const externalData: ModelFolder['externalData'] = [];
  for (const location of externalLocations(decodeModel(onnx, where(onnxFile)))) {
    const data = await source.read(dir + location);
    if (!data)
      throw new ModelFormatError(
        where(dir + location),
        undefined,
        `missing: ${onnxFile} stores weights there`,
      );
    externalData.push({ path: location, data });
  }

  const tokenizer = await readTokenizer(source, config);
  const generation = readGenerationDefaults(await readJson(source, 'generation_config.json'), config);
  return { label: source.label, config, onnxFile, onnx, externalData, tokenizer, generation };
}

async function readTokenizer(source: FileSource, config: LlamaConfig): Promise<Tokenizer> {
  // tokenizer.bin first; a folder without one may also be unreachable for it (an offline page whose
  // service worker holds only the folder's own files): then tokenizer.json decides.
  let bin: Uint8Array | undefined;
  let unreachable: unknown;
  try {
    bin = await source.read('tokenizer.bin');
  } catch (e) {
    unreachable = e;
  }
  if (bin) return Llama2cTokenizer.parse(bin, config.vocab_size, `${source.label}/tokenizer.bin`);
  const json = await readJson(source, 'tokenizer.json').catch((e: unknown) => {
    throw unreachable ?? e;
  });
  if (json === undefined && unreachable !== undefined) throw unreachable;
  if (json !== undefined) {
    const tokenizerConfig = await readJson(source, 'tokenizer_config.json');
    return HfTokenizer.fromJson(
      json as object,
      tokenizerConfig as object | undefined,
      `${source.label}/tokenizer.json`,
    );
  }
  throw new ModelFormatError(
    `${source.label}/tokenizer.json`,
    undefined,
    'missing: a model folder needs tokenizer.json or tokenizer.bin',
  );
}

function readGenerationDefaults(json: unknown, config: LlamaConfig): GenerationDefaults {
  const g = (json ?? {}) as Record<string, unknown>;
  const eos = g.eos_token_id ?? config.eos_token_id;
  const defaults: GenerationDefaults = {};
  if (typeof eos === 'number') defaults.eosTokenIds = [eos];
  else if (Array.isArray(eos)) defaults.eosTokenIds = eos.filter((e): e is number => typeof e === 'number');
  if (g.do_sample === true) {
    defaults.temperature = typeof g.temperature === 'number' ? g.temperature : 1;
    defaults.topK = typeof g.top_k === 'number' ? g.top_k : 50;
    defaults.topP = typeof g.top_p === 'number' ? g.top_p : 1;
  }
  if (typeof g.repetition_penalty === 'number') defaults.repetitionPenalty = g.repetition_penalty;
  return defaults;
}
