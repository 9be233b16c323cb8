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
  type MixtureSpec,
  type RequestOptions,
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
export {
  PersonalAdapter,
  type PersonalOptions,
  type TrainEvent,
  type TrainMethod,
  type TrainReport,
  type TrainRequest,
} from './personal-adapter.js';
export {
  parseFeedback,
  parseFeedbackJsonl,
  feedbackKind,
  type FeedbackEvent,
  type FeedbackKind,
} from './train/feedback.js';
export {
  memoryFeedbackLog,
  indexedDbFeedbackLog,
  type FeedbackLog,
  type StoredFeedback,
} from './train/feedback-log.js';
export {
  memoryPersonalVersions,
  indexedDbPersonalVersions,
  type PersonalVersion,
  type PersonalVersionStore,
} from './train/personal-versions.js';
export { Trainer, type TrainOptions, type TrainProgress, type TrainResult } from './train/trainer.js';
export { initLora, type LoraInit } from './train/init-lora.js';
export { trainingExamples, type Examples } from './train/examples.js';
export { rlaifPreferences, logProbJudge, type Judge } from './train/rlaif.js';
export { buildTrainingGraph, type TrainingGraph, type TrainingGraphOptions } from './train/training-graph.js';
export { differentiate, type DifferentiateOptions } from './graph/autodiff/differentiate.js';
export { toStandardOps } from './graph/standard-ops.js';
export {
  PromptRouter,
  promptEmbedding,
  type RouteChoice,
  type RouteOptions,
} from './mixtures/prompt-router.js';
export { mixtureFeeds, type MixtureRouter } from './mixtures/expert-feeds.js';
export { arrowPrototype } from './mixtures/arrow.js';
export { GateTrainer, type GateTrainOptions, type GateTrainResult } from './mixtures/train-gates.js';
export { parseXLora, type XLoraAdapter, type XLoraConfig } from './mixtures/xlora.js';
export {
  parseAdapterHubUniPelt,
  serializeAdapterHubUniPelt,
  type UniPeltAdapter,
} from './formats/adapterhub-unipelt.js';
export { initUniPelt, UniPeltTrainer, type UniPeltInit } from './train/train-unipelt.js';
export { loadBackend } from './engine/backend.js';
