/**
 * Model folder -> quantized model folder: the linear layers of the graph quantized in TypeScript
 * (int4 for MatMulNBits, NF4 for MatMulBnb4, int8 per channel), everything else copied.
 */
import type { FileSource } from './formats/files.js';
import { decodeModel, encodeModel, externalizeData, internalizeData } from './formats/onnx/index.js';
import { readModelFolder } from './formats/model-folder.js';
import { quantizeLinears, type GraphQuantizeOptions } from './graph/quantized-linear.js';

const COPIED = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.bin',
];

export async function quantizeModelFolder(
  source: FileSource,
  options: GraphQuantizeOptions & { externalData?: boolean },
): Promise<Map<string, Uint8Array>> {
  const folder = await readModelFolder(source);
  const file = `${folder.label}/${folder.onnxFile}`;
  const external = new Map(folder.externalData.map((f) => [f.path, f.data]));
  let graph = decodeModel(folder.onnx, file);
  if (external.size) graph = internalizeData(graph, (location) => external.get(location), file);
  const { model } = quantizeLinears(graph, options);

  const files = new Map<string, Uint8Array>();
  for (const name of COPIED) {
    const bytes = await source.read(name);
    if (bytes) files.set(name, bytes);
  }
  if (options.externalData ?? external.size > 0) {
    const { model: onnx, data, location } = externalizeData(model);
    files.set('model.onnx', onnx);
    files.set(location, data);
  } else {
    files.set('model.onnx', encodeModel(model));
  }
  return files;
}
