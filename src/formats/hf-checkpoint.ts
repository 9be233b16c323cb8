/**
 * Hugging Face checkpoint folders: config.json + model.safetensors, or shards listed by
 * model.safetensors.index.json (as `save_pretrained` writes them).
 *
 * Reading keeps exactly the parameters of expectedShapes(config). It ignores what cannot change the
 * computation — rotary `inv_freq` buffers, and `lm_head.weight` when the embeddings are tied
 * (transformers ties it to the embedding) — and rejects every other tensor (biases, quantization
 * state, unknown layers), since silently dropping it would compute something else.
 */
import { ModelFormatError } from '../errors.js';
import { type Checkpoint, type Float32Tensor, type LlamaConfig, expectedShapes } from './checkpoint.js';
import { parseLlamaConfig } from './llama-config.js';
import {
  type SafetensorsEntry,
  bfloat16Entry,
  float16Entry,
  float32Entry,
  parseSafetensors,
  serializeSafetensors,
  tensorToFloat32,
} from './safetensors.js';

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

const HARMLESS = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

const sameShape = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

function parseJson(bytes: Uint8Array, file: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ModelFormatError(file, undefined, `not valid UTF-8 JSON (${(e as Error).message})`);
  }
}

/** The shard files of an index, each with the tensors the weight_map puts in it. */
function parseIndex(json: unknown): Map<string, Set<string>> {
  if (!isRecord(json) || !isRecord(json.weight_map)) {
    throw new ModelFormatError(INDEX_FILE, 'weight_map', 'missing or not an object');
  }
  const shards = new Map<string, Set<string>>();
  for (const [tensor, shard] of Object.entries(json.weight_map)) {
    if (typeof shard !== 'string' || shard === '' || /[/\\]/.test(shard) || shard === '.' || shard === '..') {
      throw new ModelFormatError(
        INDEX_FILE,
        `weight_map.${tensor}`,
        `invalid shard file name ${JSON.stringify(shard)}`,
      );
    }
    let names = shards.get(shard);
    if (names === undefined) shards.set(shard, (names = new Set()));
    names.add(tensor);
  }
  return shards;
}

/**
 * Read a Hugging Face Llama checkpoint through `read(name)` (undefined = file absent), converting
 * F32/F16/BF16 (and F64) weights to float32. Errors are ModelFormatError naming the file and the
 * tensor or field at fault; `label` names the folder when a file is missing.
 */
export async function readHfCheckpoint(
  read: (name: string) => Promise<Uint8Array | undefined>,
  label = 'model folder',
): Promise<Checkpoint> {
  const configBytes = await read(CONFIG_FILE);
  if (configBytes === undefined) throw new ModelFormatError(CONFIG_FILE, undefined, `not found in ${label}`);
  const config = parseLlamaConfig(parseJson(configBytes, CONFIG_FILE), CONFIG_FILE);
  const expected = expectedShapes(config);

  let shards: Map<string, Set<string> | undefined>;
  const single = await read(WEIGHTS_FILE);
  if (single !== undefined) {
    shards = new Map([[WEIGHTS_FILE, undefined]]);
  } else {
    const indexBytes = await read(INDEX_FILE);
    if (indexBytes === undefined) {
      throw new ModelFormatError(
        WEIGHTS_FILE,
        undefined,
        `neither ${WEIGHTS_FILE} nor ${INDEX_FILE} found in ${label}`,
      );
    }
    shards = parseIndex(parseJson(indexBytes, INDEX_FILE));
  }

  const tensors = new Map<string, Float32Tensor>();
  for (const [shard, listed] of shards) {
    const bytes = shard === WEIGHTS_FILE && single !== undefined ? single : await read(shard);
    if (bytes === undefined)
      throw new ModelFormatError(shard, undefined, `listed in ${INDEX_FILE} but not found in ${label}`);
    const file = parseSafetensors(bytes, shard);
    for (const name of listed ?? []) {
      if (!file.tensors.has(name))
        throw new ModelFormatError(shard, name, `missing tensor (${INDEX_FILE} places it here)`);
    }
    for (const [name, entry] of file.tensors) {
      const shape = expected.get(name);
      if (shape === undefined) {
        if (HARMLESS.test(name) || (name === 'lm_head.weight' && config.tie_word_embeddings)) continue;
        throw new ModelFormatError(
          shard,
          name,
          'unexpected tensor: not a parameter of a Llama model with this config.json',
        );
      }
      if (tensors.has(name)) throw new ModelFormatError(shard, name, 'tensor appears in more than one shard');
      if (!sameShape(entry.shape, shape)) {
        throw new ModelFormatError(
          shard,
          name,
          `expected shape [${shape.join(', ')}], got [${entry.shape.join(', ')}]`,
        );
      }
      tensors.set(name, { shape, data: tensorToFloat32(entry, shard, name) });
    }
  }
  for (const name of expected.keys()) {
    if (tensors.has(name)) continue;
    if (single !== undefined) throw new ModelFormatError(WEIGHTS_FILE, name, 'missing tensor');
    throw new ModelFormatError(INDEX_FILE, name, 'missing tensor: in no shard of weight_map');
  }
  return { config, tensors };
}

export interface WriteHfOptions {
  /** Storage dtype of the weights (default F32). */
  dtype?: 'F32' | 'F16' | 'BF16';
  /** Largest shard in bytes, split as huggingface_hub does; one model.safetensors when everything fits. */
  shardBytes?: number;
}

const TORCH_DTYPE = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' } as const;

/** JSON with sorted keys and 2-space indent, as transformers writes config.json and the index. */
function prettyJson(value: unknown): Uint8Array {
  const sort = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sort)
      : isRecord(v)
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, sort(v[k])]),
          )
        : v;
  return new TextEncoder().encode(`${JSON.stringify(sort(value), null, 2)}\n`);
}

/** Group tensors into shards the way huggingface_hub's split_state_dict_into_shards does. */
function splitShards(sizes: [string, number][], max: number): string[][] {
  const shards: string[][] = [];
  let current: string[] = [];
  let currentSize = 0;
  for (const [name, size] of sizes) {
    if (size > max) {
      shards.push([name]);
      continue;
    }
    if (currentSize + size > max) {
      shards.push(current);
      current = [];
      currentSize = 0;
    }
    current.push(name);
    currentSize += size;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

/**
 * The files of a Hugging Face checkpoint folder: config.json, and model.safetensors or the shards
 * `model-00001-of-0000N.safetensors` + model.safetensors.index.json. Tensor metadata {"format":"pt"}.
 */
export function writeHfCheckpoint(ckpt: Checkpoint, opts: WriteHfOptions = {}): Map<string, Uint8Array> {
  const dtype = opts.dtype ?? 'F32';
  const config: LlamaConfig = {
    architectures: ['LlamaForCausalLM'],
    ...ckpt.config,
    torch_dtype: TORCH_DTYPE[dtype],
  };
  const expected = expectedShapes(config);
  for (const name of ckpt.tensors.keys()) {
    if (!expected.has(name) && !(name === 'lm_head.weight' && config.tie_word_embeddings)) {
      throw new ModelFormatError('checkpoint', name, 'not a parameter of a Llama model with this config');
    }
  }
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, shape] of expected) {
    const t = ckpt.tensors.get(name);
    if (t === undefined) throw new ModelFormatError('checkpoint', name, 'missing tensor');
    if (!sameShape(t.shape, shape) || t.data.length !== shape.reduce((a, b) => a * b, 1)) {
      throw new ModelFormatError(
        'checkpoint',
        name,
        `expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`,
      );
    }
    const make = dtype === 'F16' ? float16Entry : dtype === 'BF16' ? bfloat16Entry : float32Entry;
    entries.set(name, make(t.data, shape));
  }

  const files = new Map<string, Uint8Array>([[CONFIG_FILE, prettyJson(config)]]);
  const metadata = { format: 'pt' };
  const sizes: [string, number][] = [...entries].map(([name, e]) => [name, e.bytes.length]);
  const shards = splitShards(sizes, opts.shardBytes ?? Infinity);
  if (shards.length <= 1) {
    files.set(WEIGHTS_FILE, serializeSafetensors(entries, metadata, WEIGHTS_FILE));
    return files;
  }
  const pad = (i: number) => String(i).padStart(5, '0');
  const weightMap: Record<string, string> = {};
  shards.forEach((names, i) => {
    const file = `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    for (const name of names) weightMap[name] = file;
    files.set(
      file,
      serializeSafetensors(
        names.map((n) => [n, entries.get(n) as SafetensorsEntry]),
        metadata,
        file,
      ),
    );
  });
  const totalSize = sizes.reduce((a, [, s]) => a + s, 0);
  files.set(INDEX_FILE, prettyJson({ metadata: { total_size: totalSize }, weight_map: weightMap }));
  return files;
}
