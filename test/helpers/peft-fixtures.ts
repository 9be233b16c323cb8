/**
 * Real-format PEFT adapters for the stories260K-shaped Llama (hidden 64, 5 layers, 8 heads, 4 kv
 * heads, head_dim 8, intermediate 172, vocab 512), for every method this runtime runs.
 *
 * Each maker returns the two files of an adapter folder: `adapter_config.json` with the fields PEFT's
 * save_pretrained writes for that type (modelled on the real GPT-2 adapters in
 * ../shared/fixtures/peft and on PEFT's config classes; task_type CAUSAL_LM) and
 * `adapter_model.safetensors` with PEFT's tensor names, written as the safetensors library writes
 * them with metadata {"format": "pt"}. Weights are seeded and large enough to change a greedy
 * continuation (LoRA B ~ N(0, 0.3), not PEFT's zero init).
 */
import { type LlamaConfig } from '../../src/formats/checkpoint.js';
import { type PeftAdapter, parsePeftAdapter } from '../../src/formats/peft-adapter.js';
import { parsePeftConfig } from '../../src/formats/peft-config.js';
import { formatPeftJson } from '../../src/formats/python-json.js';
import {
  type SafetensorsEntry,
  bfloat16Entry,
  float16Entry,
  float32Entry,
  serializeSafetensors,
} from '../../src/formats/safetensors.js';
import { fillNormal, synthConfig } from '../../src/formats/synth.js';
import { type AdaLoraConfig, type IA3Config, type LoraConfig } from '../../src/formats/peft-config.js';
import { isFeedforward, linearModules, loraRank, matchTargets } from '../../src/methods/targets.js';

/** The base every fixture is written for: llama2.c stories260K's dimensions. */
export const STORIES_CONFIG: LlamaConfig = synthConfig('tiny');

export type AdapterFiles = Map<string, Uint8Array>;
export type Dtype = 'F32' | 'F16' | 'BF16';

const ALL_PROJ = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const BASE_NAME = 'stories260K';

/** FNV-1a of the name mixed with the seed: one independent stream per tensor. */
function streamSeed(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function normal(shape: number[], seed: number, name: string, mean: number, std: number): Float32Array {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  fillNormal(data, streamSeed(seed, name), mean, std);
  return data;
}

function entry(data: Float32Array, shape: number[], dtype: Dtype): SafetensorsEntry {
  if (dtype === 'F16') return float16Entry(data, shape);
  if (dtype === 'BF16') return bfloat16Entry(data, shape);
  return float32Entry(data, shape);
}

function files(config: Record<string, unknown>, tensors: [string, SafetensorsEntry][]): AdapterFiles {
  return new Map([
    ['adapter_config.json', new TextEncoder().encode(formatPeftJson(config))],
    ['adapter_model.safetensors', serializeSafetensors(tensors, { format: 'pt' })],
  ]);
}

/** Parse fixture files with the project's reader. */
export function loadAdapter(f: AdapterFiles, label = 'adapter'): PeftAdapter {
  const config = f.get('adapter_config.json');
  const weights = f.get('adapter_model.safetensors');
  if (config === undefined || weights === undefined) throw new Error('adapter fixture without its two files');
  return parsePeftAdapter({ config, weights }, label);
}

const features = (module: string, base: LlamaConfig) => {
  if (module === 'model.embed_tokens') return { in: base.vocab_size, out: base.hidden_size };
  const m = linearModules(base).find((x) => x.module === module);
  if (m === undefined) throw new Error(`no module ${module}`);
  return m;
};

/** The LoraConfig fields PEFT 0.15+ writes (as in the real gpt2-tigrinya-lora adapter_config.json). */
function loraFields(o: LoraOptions) {
  return {
    alpha_pattern: o.alphaPattern ?? {},
    auto_mapping: null,
    base_model_name_or_path: BASE_NAME,
    bias: 'none',
    corda_config: null,
    eva_config: null,
    exclude_modules: o.exclude ?? null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: o.layersToTransform ?? null,
    loftq_config: {},
    lora_alpha: o.alpha ?? 8,
    lora_bias: false,
    lora_dropout: 0.05,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    qalora_group_size: 16,
    r: o.r ?? 4,
    rank_pattern: o.rankPattern ?? {},
    revision: null,
    target_modules: o.targets ?? ALL_PROJ,
    target_parameters: null,
    task_type: 'CAUSAL_LM',
    trainable_token_indices: null,
    use_dora: o.dora ?? false,
    use_qalora: false,
    use_rslora: o.rslora ?? false,
  };
}

export interface LoraOptions {
  r?: number;
  alpha?: number;
  /** target_modules: a list, a regex or 'all-linear' (default: every projection). */
  targets?: string[] | string;
  exclude?: string[] | string;
  rslora?: boolean;
  dora?: boolean;
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  layersToTransform?: number[] | number;
  seed?: number;
  /** Standard deviation of lora_B (default 0.3). */
  scale?: number;
  dtype?: Dtype;
  base?: LlamaConfig;
}

/** A LoRA (or DoRA) adapter: lora_A ~ N(0, 1/sqrt(in)), lora_B ~ N(0, scale), magnitude ~ N(1, 0.2). */
export function makeLoraAdapter(o: LoraOptions = {}): AdapterFiles {
  const base = o.base ?? STORIES_CONFIG;
  const json = loraFields(o);
  const config = parsePeftConfig(json) as LoraConfig;
  const seed = o.seed ?? 0;
  const scale = o.scale ?? 0.3;
  const dtype = o.dtype ?? 'F32';
  const tensors: [string, SafetensorsEntry][] = [];
  for (const module of matchTargets(config, base)) {
    const { in: n, out } = features(module, base);
    const r = loraRank(config, module);
    const p = `base_model.model.${module}`;
    const embedding = module === 'model.embed_tokens';
    const [aName, bName] = embedding
      ? [`${p}.lora_embedding_A`, `${p}.lora_embedding_B`]
      : [`${p}.lora_A.weight`, `${p}.lora_B.weight`];
    tensors.push([
      aName,
      entry(normal([r, n], seed, aName, 0, embedding ? 1 : 1 / Math.sqrt(n)), [r, n], dtype),
    ]);
    tensors.push([bName, entry(normal([out, r], seed, bName, 0, scale), [out, r], dtype)]);
    if (config.use_dora) {
      const g = `${p}.lora_magnitude_vector`;
      tensors.push([g, entry(normal([out], seed, g, 1, 0.2), [out], dtype)]);
    }
  }
  return files(json, tensors);
}

export interface AdaloraOptions {
  initR?: number;
  targetR?: number;
  alpha?: number;
  targets?: string[] | string;
  /** Write a rank_pattern that prunes every module to a seeded subset of its init_r ranks (default true). */
  prune?: boolean;
  seed?: number;
  scale?: number;
  dtype?: Dtype;
}

/**
 * An AdaLoRA adapter after rank allocation: rank_pattern holds a boolean mask of length init_r per
 * module (keys `<module>.lora_E` as PEFT saves them), and the tensors keep only the true rows
 * (resize_state_dict_by_rank_pattern): lora_A [r, in], lora_E [r, 1], lora_B [out, r].
 */
export function makeAdaloraAdapter(o: AdaloraOptions = {}): AdapterFiles {
  const initR = o.initR ?? 6;
  const seed = o.seed ?? 0;
  const scale = o.scale ?? 0.3;
  const dtype = o.dtype ?? 'F32';
  const targets = o.targets ?? ['q_proj', 'v_proj', 'o_proj', 'down_proj'];
  const fields = {
    ...loraFields({ targets, alpha: o.alpha ?? 8 }),
    r: 8,
    lora_dropout: 0.0,
    peft_type: 'ADALORA',
  };
  const pre = parsePeftConfig({
    ...fields,
    init_r: initR,
    total_step: 100,
    rank_pattern: null,
  }) as AdaLoraConfig;
  const rankPattern: Record<string, boolean[]> = {};
  if (o.prune ?? true) {
    for (const module of matchTargets(pre, STORIES_CONFIG)) {
      const u = normal([initR], seed, `${module}.mask`, 0, 1);
      const mask = Array.from(u, (v) => v > 0);
      if (!mask.includes(true)) mask[0] = true;
      rankPattern[`${module}.lora_E`] = mask;
    }
  }
  const json = {
    ...fields,
    beta1: 0.85,
    beta2: 0.85,
    deltaT: 1,
    init_r: initR,
    orth_reg_weight: 0.5,
    rank_pattern: (o.prune ?? true) ? rankPattern : null,
    target_r: o.targetR ?? 4,
    tfinal: 0,
    tinit: 0,
    total_step: 100,
  };
  const config = parsePeftConfig(json) as AdaLoraConfig;
  const tensors: [string, SafetensorsEntry][] = [];
  for (const module of matchTargets(config, STORIES_CONFIG)) {
    const { in: n, out } = features(module, STORIES_CONFIG);
    const r = loraRank(config, module);
    const p = `base_model.model.${module}`;
    tensors.push([
      `${p}.lora_A`,
      entry(normal([r, n], seed, `${p}.lora_A`, 0, 1 / Math.sqrt(n)), [r, n], dtype),
    ]);
    tensors.push([`${p}.lora_E`, entry(normal([r, 1], seed, `${p}.lora_E`, 0, 1), [r, 1], dtype)]);
    tensors.push([`${p}.lora_B`, entry(normal([out, r], seed, `${p}.lora_B`, 0, scale), [out, r], dtype)]);
  }
  return files(json, tensors);
}

export interface Ia3Options {
  targets?: string[] | string;
  feedforward?: string[] | string;
  seed?: number;
  /** Standard deviation of the vectors around 1 (default 0.5). */
  scale?: number;
  dtype?: Dtype;
}

/** An IA3 adapter: ia3_l ~ N(1, scale), [1, in] on feedforward modules, [out, 1] elsewhere. */
export function makeIa3Adapter(o: Ia3Options = {}): AdapterFiles {
  const json = {
    auto_mapping: null,
    base_model_name_or_path: BASE_NAME,
    exclude_modules: null,
    fan_in_fan_out: false,
    feedforward_modules: o.feedforward ?? ['down_proj'],
    inference_mode: true,
    init_ia3_weights: true,
    modules_to_save: null,
    peft_type: 'IA3',
    revision: null,
    target_modules: o.targets ?? ['k_proj', 'v_proj', 'down_proj'],
    task_type: 'CAUSAL_LM',
  };
  const config = parsePeftConfig(json) as IA3Config;
  const tensors: [string, SafetensorsEntry][] = [];
  for (const module of matchTargets(config, STORIES_CONFIG)) {
    const { in: n, out } = features(module, STORIES_CONFIG);
    const shape = isFeedforward(config, module) ? [1, n] : [out, 1];
    const name = `base_model.model.${module}.ia3_l`;
    tensors.push([name, entry(normal(shape, o.seed ?? 0, name, 1, o.scale ?? 0.5), shape, o.dtype ?? 'F32')]);
  }
  return files(json, tensors);
}

export interface PromptOptions {
  numVirtualTokens?: number;
  seed?: number;
  /** Standard deviation of the virtual token vectors (default 1). */
  scale?: number;
  dtype?: Dtype;
}

/** PromptLearningConfig fields as PEFT saves them after _prepare_prompt_learning_config filled them. */
function promptFields(type: string, n: number, tokenDim: number, heads: number) {
  return {
    auto_mapping: null,
    base_model_name_or_path: BASE_NAME,
    inference_mode: true,
    modules_to_save: null,
    num_attention_heads: heads,
    num_layers: STORIES_CONFIG.num_hidden_layers,
    num_transformer_submodules: 1,
    num_virtual_tokens: n,
    peft_type: type,
    revision: null,
    task_type: 'CAUSAL_LM',
    token_dim: tokenDim,
  };
}

function promptFiles(
  json: Record<string, unknown>,
  rows: number,
  cols: number,
  o: PromptOptions,
): AdapterFiles {
  const data = normal([rows, cols], o.seed ?? 0, 'prompt_embeddings', 0, o.scale ?? 1);
  return files(json, [['prompt_embeddings', entry(data, [rows, cols], o.dtype ?? 'F32')]]);
}

/** Prompt tuning: prompt_embeddings [num_virtual_tokens, hidden]. */
export function makePromptTuningAdapter(o: PromptOptions = {}): AdapterFiles {
  const n = o.numVirtualTokens ?? 4;
  const c = STORIES_CONFIG;
  const json = {
    ...promptFields('PROMPT_TUNING', n, c.hidden_size, c.num_attention_heads),
    prompt_tuning_init: 'RANDOM',
    prompt_tuning_init_text: null,
    tokenizer_kwargs: null,
    tokenizer_name_or_path: null,
  };
  return promptFiles(json, n, c.hidden_size, o);
}

/** P-tuning: prompt_embeddings [num_virtual_tokens, hidden] (the MLP encoder's output, as PEFT saves). */
export function makePTuningAdapter(o: PromptOptions = {}): AdapterFiles {
  const n = o.numVirtualTokens ?? 4;
  const c = STORIES_CONFIG;
  const json = {
    ...promptFields('P_TUNING', n, c.hidden_size, c.num_attention_heads),
    encoder_dropout: 0.0,
    encoder_hidden_size: c.hidden_size,
    encoder_num_layers: 2,
    encoder_reparameterization_type: 'MLP',
  };
  return promptFiles(json, n, c.hidden_size, o);
}

/**
 * Prefix tuning: prompt_embeddings [num_virtual_tokens, num_layers * 2 * 32]. PEFT saves token_dim
 * and num_attention_heads rescaled to the grouped-query key/value width (4 heads * 8 = 32).
 */
export function makePrefixTuningAdapter(o: PromptOptions = {}): AdapterFiles {
  const n = o.numVirtualTokens ?? 4;
  const c = STORIES_CONFIG;
  const kv = c.num_key_value_heads * (c.hidden_size / c.num_attention_heads);
  const json = {
    ...promptFields('PREFIX_TUNING', n, kv, c.num_key_value_heads),
    encoder_hidden_size: kv,
    prefix_projection: false,
  };
  return promptFiles(json, n, c.num_hidden_layers * 2 * kv, o);
}
