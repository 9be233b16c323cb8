/**
 * Edge Adapters: PEFT adapters on a base language model, on the device, through onnxruntime-web.
 */
export {
  Runtime,
  AdapterRegistry,
  type RuntimeOptions,
  type AdapterSource,
  type AdapterInfo,
  type ActiveSpec,
} from './runtime.js';
export { loadModel, loadModelWithBase, type LoadModelOptions } from './load-model.js';
export { LanguageModel, type Completion, type Quantization } from './engine/language-model.js';
export type { GenerateOptions, GenerationChunk, FinishReason } from './engine/generate.js';
export type { SamplingOptions } from './engine/sampling.js';
export type { BackendName, BackendOptions } from './engine/backend.js';
export { urlSource, memorySource, type FileSource, type ReadFile } from './formats/files.js';
export { checkpointToModelFolder, type ConvertOptions } from './convert.js';
export type { SlotOptions } from './graph/adapter-slots.js';
export { slotsFor } from './methods/slots-for.js';
export { parsePeftAdapter, serializePeftAdapter, type PeftAdapter } from './formats/peft-adapter.js';
export { parsePeftConfig, type PeftConfig } from './formats/peft-config.js';
export * from './errors.js';
export * from './store/index.js';
export {
  AdapterCatalog,
  DEFAULT_BUDGET_BYTES,
  type CatalogEntry,
  type CatalogOptions,
  type InstallOptions,
  type InstalledAdapter,
  type RestoreReport,
} from './adapter-catalog.js';
