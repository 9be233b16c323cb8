/**
 * Checkpoint -> model folder: builds the decoder graph and writes the files the engine loads
 * (see formats/model-folder.ts).
 */
import type { Checkpoint } from './formats/checkpoint.js';
import { buildLlamaDecoder, type DecoderProfile } from './graph/llama.js';
import { encodeModel, externalizeData } from './formats/onnx/index.js';

export interface ConvertOptions {
  profile?: DecoderProfile;
  /** Store the weights in model.onnx_data (ONNX external data). Default: only when model.onnx would pass 2 GB. */
  externalData?: boolean;
  /** Tokenizer files to copy into the folder (tokenizer.json, tokenizer_config.json, tokenizer.bin). */
  tokenizerFiles?: ReadonlyMap<string, Uint8Array>;
  /** generation_config.json fields. */
  generationConfig?: Record<string, unknown>;
}

const PROTOBUF_LIMIT = 2 ** 31 - 1;

export function checkpointToModelFolder(
  ckpt: Checkpoint,
  options: ConvertOptions = {},
): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  const json = (value: unknown) => new TextEncoder().encode(`${JSON.stringify(value, null, 2)}\n`);
  files.set('config.json', json(ckpt.config));

  const model = buildLlamaDecoder(ckpt, { profile: options.profile });
  let weightBytes = 0;
  for (const t of ckpt.tensors.values()) weightBytes += t.data.byteLength;
  const external = options.externalData ?? weightBytes > PROTOBUF_LIMIT - 64 * 2 ** 20;
  if (external) {
    const { model: graph, data, location } = externalizeData(model);
    files.set('model.onnx', graph);
    files.set(location, data);
  } else {
    files.set('model.onnx', encodeModel(model));
  }

  for (const [name, bytes] of options.tokenizerFiles ?? []) files.set(name, bytes);
  const eos = ckpt.config.eos_token_id;
  files.set(
    'generation_config.json',
    json({
      bos_token_id: ckpt.config.bos_token_id,
      eos_token_id: eos,
      ...options.generationConfig,
    }),
  );
  return files;
}
