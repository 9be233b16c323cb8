/**
 * Loading a model folder into a ready LanguageModel: read and validate the files (formats/), patch
 * the graph with adapter slots once (graph/), create the onnxruntime session (engine/).
 */
import { loadBackend, type BackendOptions } from './engine/backend.js';
import { DecoderSession } from './engine/decoder-session.js';
import { LanguageModel, type Quantization } from './engine/language-model.js';
import { urlSource, type FileSource } from './formats/files.js';
import { readModelFolder } from './formats/model-folder.js';
import { decodeModel, encodeModel, externalizeData, internalizeData } from './formats/onnx/index.js';
import { addAdapterSlots, WEBGPU_SPLIT_OUTPUTS, type SlotOptions } from './graph/adapter-slots.js';
import { graphBaseModel } from './graph/base-weights.js';
import { exposeHiddenState } from './graph/hidden-state.js';
import { addUniPeltSlots, uniPeltDims } from './graph/unipelt-slots.js';
import {
  dequantizeWeights,
  dequantizedFormats,
  quantizedFormats,
  type Kernels,
} from './graph/dequantize-weights.js';
import type { BaseModel } from './methods/feeds.js';
import { slotsFor } from './methods/slots-for.js';
import type { PeftConfig } from './formats/peft-config.js';
import type { ModelProto } from './formats/onnx/onnx_pb.js';

export interface LoadModelOptions extends BackendOptions {
  /**
   * Adapter slots to patch into the graph: all of them (default); only those the given PEFT configs
   * need (`{ adapters: [config, ...] }`, methods/slots-for.ts: the cheapest graph for a known set of
   * adapters); explicit SlotOptions; or `false` for the bare base.
   */
  slots?: SlotOptions | { adapters: readonly PeftConfig[] } | false;
  /**
   * A quantized base: run its quantized ops ('native') or float32 weights dequantized once at load
   * ('dequantize': the files stay small, the session holds float32). 'auto' (default) takes the
   * faster per backend and format (src/graph/dequantize-weights.ts).
   */
  kernels?: Kernels;
}

export interface LoadedModel {
  model: LanguageModel;
  /** The base weights, for adapter methods that read them (DoRA). */
  base: BaseModel;
  /** The base decoder graph as read (weights in memory), from which training graphs are built. */
  graph: ModelProto;
}

/** `source` is a FileSource, a URL (http:, https:, file: in browsers) or, in Node, a folder path. */
export async function loadModel(
  source: string | URL | FileSource,
  options: LoadModelOptions = {},
): Promise<LanguageModel> {
  return (await loadModelWithBase(source, options)).model;
}

export async function loadModelWithBase(
  source: string | URL | FileSource,
  options: LoadModelOptions = {},
): Promise<LoadedModel> {
  const files = typeof source === 'object' && 'read' in source ? source : await resolveSource(source);
  const folder = await readModelFolder(files);
  const file = `${folder.label}/${folder.onnxFile}`;
  const graph = decodeModel(folder.onnx, file);
  const external = new Map(folder.externalData.map((f) => [f.path, f.data]));
  const weights = external.size ? internalizeData(graph, (location) => external.get(location), file) : graph;
  const slots = options.slots;
  // A quantized base's weights dequantized at load, per `kernels`; the prompt slot patches a float
  // embedding Gather, so a quantized embedding is dequantized whenever that slot may be patched.
  const promptSlot = slots !== false && !(slots && 'prompt' in slots && slots.prompt === false);
  const formats = dequantizedFormats(options.kernels, options.backend ?? 'wasm');
  const present = quantizedFormats(weights);
  const dequantized = dequantizeWeights(weights, {
    formats,
    embedding: options.kernels === 'dequantize' || promptSlot,
  });
  const runnable = dequantized ?? graph;
  const slotted =
    slots === false
      ? undefined
      : addAdapterSlots(runnable, {
          ...(slots && 'adapters' in slots ? slotsFor(slots.adapters, folder.config) : slots),
          // WebGPU binds a Split's outputs as storage buffers: 8 per shader is all a device must allow.
          ...(options.backend === 'webgpu' ? { maxSplitOutputs: WEBGPU_SPLIT_OUTPUTS } : {}),
        });
  // UniPELT's gated parts, when asked for, go on top of the slots.
  const c = folder.config;
  const unipelt =
    slotted && slots && 'unipelt' in slots && slots.unipelt
      ? addUniPeltSlots(slotted.model, uniPeltDims(c), file)
      : undefined;
  // A patched graph also outputs its last hidden state (prompt routing reads it).
  const patched = slotted && {
    model: exposeHiddenState(unipelt?.model ?? slotted.model, c.hidden_size, file),
    layout: unipelt ? { ...slotted.layout, unipelt: unipelt.layout } : slotted.layout,
  };
  const backend = await loadBackend(options);
  // Dequantized weights reach onnxruntime as external data: no second copy inside one protobuf.
  const unpacked =
    dequantized && externalizeData(patched?.model ?? dequantized, { location: 'dequantized.onnx_data' });
  const session = await DecoderSession.create(
    backend,
    unpacked ? unpacked.model : patched ? encodeModel(patched.model) : folder.onnx,
    folder.config,
    {
      externalData: unpacked ? [{ path: unpacked.location, data: unpacked.data }] : folder.externalData,
      file,
      slots: patched?.layout,
    },
  );
  const quantization: Quantization | undefined = present.length
    ? { formats: present, kernels: present.every((f) => formats.includes(f)) ? 'dequantize' : 'native' }
    : undefined;
  const model = new LanguageModel(
    folder.config,
    folder.tokenizer,
    session,
    backend.name,
    folder.generation,
    quantization,
  );
  return { model, base: graphBaseModel(weights, folder.config, file), graph: weights };
}

async function resolveSource(source: string | URL): Promise<FileSource> {
  const text = String(source);
  if (source instanceof URL || /^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return urlSource(source);
  const { folderSource } = await import('./formats/files-node.js');
  return folderSource(text);
}
