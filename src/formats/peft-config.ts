/**
 * Hugging Face PEFT `adapter_config.json` for the methods this runtime runs: LORA, ADALORA, IA3,
 * PREFIX_TUNING, PROMPT_TUNING and P_TUNING.
 *
 * Reading validates what PEFT's config classes validate in `__post_init__` (peft/config.py,
 * tuners/<method>/config.py) and refuses, naming the field, every value that would make PEFT compute
 * something this runtime does not (Megatron layers, layer replication, aLoRA, trainable tokens, ...).
 * Fields that only matter while training (dropout, init schemes, AdaLoRA's schedule) are accepted.
 * Unknown keys with a default-like value (null, false, [], {}) are kept in `raw`, as PEFT drops
 * unknown keys of newer versions; an unknown key with any other value is refused, since it may change
 * inference.
 *
 * Writing produces what `PeftConfigMixin.save_pretrained` writes: `json.dumps(config, indent=2,
 * sort_keys=True)`, ASCII-escaped, Python float spelling, no trailing newline.
 *
 * Config regexes (target_modules, exclude_modules, layers_pattern, rank/alpha_pattern keys,
 * feedforward_modules) are Python `re` patterns; `pythonRegExp` translates them to JavaScript or
 * refuses the constructs it cannot honour.
 */
import { AdapterFormatError } from '../errors.js';
import { formatPeftJson } from './python-json.js';
import { layersRegExp, patternRegExp, pythonRegExp } from './python-regex.js';

export const PEFT_TYPES = ['LORA', 'ADALORA', 'IA3', 'PREFIX_TUNING', 'PROMPT_TUNING', 'P_TUNING'] as const;
export type PeftType = (typeof PEFT_TYPES)[number];

/** peft.utils.peft_types.TaskType. */
export const TASK_TYPES = [
  'SEQ_CLS',
  'SEQ_2_SEQ_LM',
  'CAUSAL_LM',
  'TOKEN_CLS',
  'QUESTION_ANS',
  'FEATURE_EXTRACTION',
] as const;
export type TaskType = (typeof TASK_TYPES)[number];

/** PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND, compared case-insensitively as PEFT does. */
export const ALL_LINEAR = 'all-linear';

interface PeftConfigBase {
  peft_type: PeftType;
  task_type: TaskType | null;
  base_model_name_or_path: string | null;
  revision: string | null;
  inference_mode: boolean;
  /**
   * The keys of the file that have no typed field above or below (auto_mapping, loftq_config,
   * megatron_core, unknown keys with default-like values, ...), values untouched. Written back as is.
   */
  raw: Record<string, unknown>;
}

/**
 * Module selection: a list (a module matches an entry exactly or ends with `.entry`), a string
 * (Python regex, full match) or `'all-linear'` (any case). `null`: PEFT's default for Llama models.
 */
export type ModuleSelector = string[] | string | null;

export interface LoraConfig extends PeftConfigBase {
  peft_type: 'LORA';
  r: number;
  lora_alpha: number;
  /** Training only. */
  lora_dropout: number;
  use_rslora: boolean;
  use_dora: boolean;
  target_modules: ModuleSelector;
  exclude_modules: ModuleSelector;
  /** PEFT also accepts a single int; it is normalised to a one-element list (same selection). */
  layers_to_transform: number[] | null;
  /** PEFT also accepts a single string; it is normalised to a one-element list ("" to []). */
  layers_pattern: string[] | null;
  /** Module regex -> rank, PEFT's get_pattern_key semantics (first matching key in file order). */
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  /** Ignored for nn.Linear bases: PEFT resets it to false with a warning (lora dispatch_default). */
  fan_in_fan_out: boolean;
  /**
   * 'all' / 'lora_only' also train the biases of the base; they are accepted here, and any bias
   * tensor in adapter_model.safetensors is refused (a bias-free Llama base saves none).
   */
  bias: 'none' | 'all' | 'lora_only';
  /** Always null or [] once parsed: whole-module replacement is refused. */
  modules_to_save: string[] | null;
  /** Initialisation only (true, false, 'gaussian', 'pissa', 'loftq', ...). */
  init_lora_weights: boolean | string;
}

/** AdaLoRA: per-module SVD triplets (lora_A, lora_E, lora_B), scaled by lora_alpha / init_r. */
export interface AdaLoraConfig extends Omit<LoraConfig, 'peft_type' | 'rank_pattern'> {
  peft_type: 'ADALORA';
  init_r: number;
  target_r: number;
  tinit: number;
  tfinal: number;
  deltaT: number;
  beta1: number;
  beta2: number;
  orth_reg_weight: number;
  total_step: number;
  /**
   * The RankAllocator's final masks: parameter name of a module's lora_E (as saved, e.g.
   * `model.layers.0.self_attn.q_proj.lora_E`) -> one boolean per initial rank (length init_r). The
   * saved tensors keep only the true rows (adalora model.py resize_state_dict_by_rank_pattern).
   * `r`, `alpha_pattern` and `use_rslora` are not used by AdaLoRA (PEFT ignores them too).
   */
  rank_pattern: Record<string, boolean[]> | null;
}

export interface IA3Config extends PeftConfigBase {
  peft_type: 'IA3';
  target_modules: ModuleSelector;
  exclude_modules: ModuleSelector;
  /** Modules whose input (not output) is scaled. A list matches by plain suffix (no '.' boundary). */
  feedforward_modules: ModuleSelector;
  fan_in_fan_out: boolean;
  modules_to_save: string[] | null;
  init_ia3_weights: boolean;
}

interface PromptLearningBase extends PeftConfigBase {
  num_virtual_tokens: number;
  /** null: the base's hidden size (PEFT fills it from the model config). */
  token_dim: number | null;
  /** Always 1 or null (= 1) here: a decoder-only base has one transformer stack. */
  num_transformer_submodules: number | null;
  num_attention_heads: number | null;
  num_layers: number | null;
}

export interface PromptTuningConfig extends PromptLearningBase {
  peft_type: 'PROMPT_TUNING';
  prompt_tuning_init: string;
  prompt_tuning_init_text: string | null;
  tokenizer_name_or_path: string | null;
  tokenizer_kwargs: Record<string, unknown> | null;
}

/** P-tuning: the saved prompt_embeddings are already the encoder's output (get_prompt_embedding_to_save). */
export interface PTuningConfig extends PromptLearningBase {
  peft_type: 'P_TUNING';
  encoder_reparameterization_type: string;
  encoder_hidden_size: number | null;
  encoder_num_layers: number;
  encoder_dropout: number;
}

/** Prefix tuning: saved prompt_embeddings are [num_virtual_tokens, num_layers * 2 * token_dim]. */
export interface PrefixTuningConfig extends PromptLearningBase {
  peft_type: 'PREFIX_TUNING';
  encoder_hidden_size: number | null;
  /** Training only: the saved prefix is the projection's output. */
  prefix_projection: boolean;
}

export type PromptLearningConfig = PromptTuningConfig | PTuningConfig | PrefixTuningConfig;
export type PeftConfig = LoraConfig | AdaLoraConfig | IA3Config | PromptLearningConfig;

export function isPromptLearning(config: PeftConfig): config is PromptLearningConfig {
  return (
    config.peft_type === 'PROMPT_TUNING' ||
    config.peft_type === 'P_TUNING' ||
    config.peft_type === 'PREFIX_TUNING'
  );
}

// ---------------------------------------------------------------------------------------------
// Reading

type Json = Record<string, unknown>;

const isRecord = (x: unknown): x is Json => typeof x === 'object' && x !== null && !Array.isArray(x);

/** A value in an error message: JSON, shortened. */
function show(v: unknown): string {
  const s = v === undefined ? 'nothing' : (JSON.stringify(v) ?? String(v));
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Values an unknown key may have without changing anything: PEFT's defaults for optional features. */
const isOff = (v: unknown): boolean =>
  v === null ||
  v === false ||
  (Array.isArray(v) && v.length === 0) ||
  (isRecord(v) && Object.keys(v).length === 0);

/** Keys every PEFT config has that change nothing at inference (PeftConfigMixin / PeftConfig). */
const COMMON_ACCEPTED = ['auto_mapping', 'peft_version'];

/** LoraConfig keys that only matter at initialisation or for training. */
const LORA_ACCEPTED = [
  'loftq_config',
  'eva_config',
  'corda_config',
  'lora_ga_config',
  'megatron_core',
  'qalora_group_size',
  'runtime_config',
];

/** LoraConfig keys that must keep their default (null / false / []): the runtime cannot honour them. */
const LORA_UNSUPPORTED: Readonly<Record<string, string>> = {
  megatron_config: 'Megatron parallel linear layers are not supported',
  layer_replication: 'layer replication builds a deeper model from repeated base layers; not supported',
  target_parameters:
    'LoRA on raw parameters (e.g. MoE expert weights) is not supported, only nn.Linear modules',
  use_qalora: 'QA-LoRA pools the inputs of GPTQ-quantized layers; not supported',
  alora_invocation_tokens: 'activated LoRA (applied only after the invocation tokens) is not supported',
  trainable_token_indices: 'trainable tokens would replace rows of the base embedding; not supported',
  lora_bias: 'a bias on lora_B is not supported',
  use_bdlora: 'block-diagonal LoRA is not supported',
  arrow_config: 'Arrow routing between LoRA experts is not supported',
  ensure_weight_tying: 'tied embedding / lm_head adapters are not supported',
};

const PROMPT_UNSUPPORTED: Readonly<Record<string, string>> = {
  modules_to_save: 'modules_to_save would replace whole base modules; not supported',
};

class Reader {
  private readonly used = new Set<string>(['peft_type']);

  constructor(
    readonly json: Json,
    readonly file: string,
  ) {}

  fail(field: string | undefined, message: string): never {
    throw new AdapterFormatError(this.file, field, message);
  }

  /** The value of `key`, or `fallback` when the key is absent (a missing required key fails). */
  take(key: string, fallback: unknown): unknown {
    this.used.add(key);
    if (!Object.hasOwn(this.json, key)) {
      if (fallback === undefined) this.fail(key, 'missing');
      return fallback;
    }
    return this.json[key];
  }

  int(key: string, fallback?: number, min = 1): number {
    const v = this.take(key, fallback);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      this.fail(key, `expected ${min > 0 ? 'a positive' : 'a non-negative'} integer, got ${show(v)}`);
    }
    return v;
  }

  optInt(key: string, min = 1): number | null {
    const v = this.take(key, null);
    return v === null ? null : this.int(key, undefined, min);
  }

  num(key: string, fallback?: number): number {
    const v = this.take(key, fallback);
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, `expected a number, got ${show(v)}`);
    return v;
  }

  bool(key: string, fallback?: boolean): boolean {
    const v = this.take(key, fallback);
    if (typeof v !== 'boolean') this.fail(key, `expected true or false, got ${show(v)}`);
    return v;
  }

  str(key: string, fallback?: string): string {
    const v = this.take(key, fallback);
    if (typeof v !== 'string') this.fail(key, `expected a string, got ${show(v)}`);
    return v;
  }

  optStr(key: string): string | null {
    const v = this.take(key, null);
    if (v !== null && typeof v !== 'string') this.fail(key, `expected a string or null, got ${show(v)}`);
    return v;
  }

  oneOf<T extends string>(key: string, values: readonly T[], fallback?: T): T {
    const v = this.take(key, fallback);
    if (!values.includes(v as T)) {
      this.fail(key, `expected one of ${values.map((x) => JSON.stringify(x)).join(', ')}, got ${show(v)}`);
    }
    return v as T;
  }

  optOneOf<T extends string>(key: string, values: readonly T[]): T | null {
    const v = this.take(key, null);
    return v === null ? null : this.oneOf(key, values);
  }

  optRecord(key: string): Record<string, unknown> | null {
    const v = this.take(key, null);
    if (v !== null && !isRecord(v)) this.fail(key, `expected an object or null, got ${show(v)}`);
    return v;
  }

  strList(key: string): string[] | null {
    const v = this.take(key, null);
    if (v === null) return null;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
      this.fail(key, `expected a list of strings or null, got ${show(v)}`);
    }
    return [...(v as string[])];
  }

  /** A list of module names, a regex string, or null. Regexes are checked here. */
  selector(key: string): ModuleSelector {
    const v = this.take(key, null);
    if (typeof v === 'string') {
      if (v.toLowerCase() !== ALL_LINEAR) pythonRegExp(v, 'full', this.file, key);
      return v;
    }
    return this.strList(key);
  }

  /** A dict of pattern -> number (rank_pattern / alpha_pattern). */
  patterns(key: string, integer: boolean): Record<string, number> {
    const v = this.take(key, {});
    if (v === null) return {};
    if (!isRecord(v)) this.fail(key, `expected an object, got ${show(v)}`);
    const out: [string, number][] = [];
    for (const [k, x] of Object.entries(v)) {
      const ok = typeof x === 'number' && (integer ? Number.isSafeInteger(x) && x > 0 : Number.isFinite(x));
      if (!ok)
        this.fail(`${key}.${k}`, `expected ${integer ? 'a positive integer' : 'a number'}, got ${show(x)}`);
      patternRegExp(k, this.file, `${key}.${k}`);
      out.push([k, x]);
    }
    return Object.fromEntries(out);
  }

  /** Keys not read as typed fields: accepted, refused, or kept in `raw` by the rules above. */
  rest(accepted: readonly string[], unsupported: Readonly<Record<string, string>>): Record<string, unknown> {
    const raw: [string, unknown][] = [];
    for (const [k, v] of Object.entries(this.json)) {
      if (this.used.has(k)) continue;
      if (Object.hasOwn(unsupported, k)) {
        if (!isOff(v)) this.fail(k, `${unsupported[k]} (got ${show(v)})`);
      } else if (!accepted.includes(k) && !isOff(v)) {
        this.fail(
          k,
          `unknown field with a non-default value ${show(v)}: it may come from a newer PEFT and change ` +
            'inference, so the adapter is refused',
        );
      }
      raw.push([k, v]);
    }
    return Object.fromEntries(raw);
  }
}

function readBase(f: Reader) {
  return {
    task_type: f.optOneOf('task_type', TASK_TYPES),
    base_model_name_or_path: f.optStr('base_model_name_or_path'),
    revision: f.optStr('revision'),
    inference_mode: f.bool('inference_mode', false),
  };
}

/** layers_to_transform: null, an int, or a list of ints (non-negative). */
function readLayers(f: Reader): number[] | null {
  const v = f.take('layers_to_transform', null);
  if (v === null) return null;
  const isIndex = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (isIndex(v)) return [v as number];
  if (Array.isArray(v) && v.every(isIndex)) return [...(v as number[])];
  return f.fail('layers_to_transform', `expected a layer index or a list of them, got ${show(v)}`);
}

/** layers_pattern: null, a string or a list of strings; each becomes part of a regex. */
function readLayersPattern(f: Reader): string[] | null {
  const v = f.take('layers_pattern', null);
  let list: string[] | null;
  if (typeof v === 'string') list = v === '' ? [] : [v];
  else list = f.strList('layers_pattern');
  for (const p of list ?? []) layersRegExp(p, f.file, 'layers_pattern');
  return list;
}

function readModulesToSave(f: Reader): string[] | null {
  const v = f.strList('modules_to_save');
  if (v !== null && v.length > 0) {
    f.fail(
      'modules_to_save',
      `${show(v)} would replace whole base modules with trained copies; not supported (train them as LoRA targets instead)`,
    );
  }
  return v;
}

/** The fields LoraConfig and AdaLoraConfig share, with LoraConfig.__post_init__'s checks. */
function readLoraFields(f: Reader) {
  const target_modules = f.selector('target_modules');
  const rawLayers = f.json.layers_to_transform;
  const layers_to_transform = readLayers(f);
  const layers_pattern = readLayersPattern(f);
  if (typeof target_modules === 'string' && layers_to_transform !== null) {
    f.fail('layers_to_transform', 'cannot be used when target_modules is a string (PEFT refuses it)');
  }
  if (typeof target_modules === 'string' && layers_pattern !== null) {
    f.fail('layers_pattern', 'cannot be used when target_modules is a string (PEFT refuses it)');
  }
  // PEFT: `if self.layers_pattern and not self.layers_to_transform` (so an int 0 is refused too).
  const noLayers = layers_to_transform === null || layers_to_transform.length === 0 || rawLayers === 0;
  if (layers_pattern !== null && layers_pattern.length > 0 && noLayers) {
    f.fail('layers_pattern', 'needs layers_to_transform to be set as well (PEFT refuses it)');
  }
  const init = f.take('init_lora_weights', true);
  if (typeof init !== 'boolean' && typeof init !== 'string') {
    f.fail('init_lora_weights', `expected true, false or the name of an init scheme, got ${show(init)}`);
  }
  if (init === 'loftq' && isOff(f.json.loftq_config ?? null)) {
    f.fail('loftq_config', "must be set when init_lora_weights is 'loftq' (PEFT refuses it)");
  }
  return {
    r: f.int('r', 8),
    lora_alpha: f.num('lora_alpha', 8),
    lora_dropout: f.num('lora_dropout', 0),
    use_rslora: f.bool('use_rslora', false),
    use_dora: f.bool('use_dora', false),
    target_modules,
    exclude_modules: f.selector('exclude_modules'),
    layers_to_transform,
    layers_pattern,
    alpha_pattern: f.patterns('alpha_pattern', false),
    fan_in_fan_out: f.bool('fan_in_fan_out', false),
    bias: f.oneOf('bias', ['none', 'all', 'lora_only'] as const, 'none'),
    modules_to_save: readModulesToSave(f),
    init_lora_weights: init as boolean | string,
  };
}

function readLora(f: Reader): LoraConfig {
  const base = readBase(f);
  const fields = readLoraFields(f);
  const rank_pattern = f.patterns('rank_pattern', true);
  const raw = f.rest([...COMMON_ACCEPTED, ...LORA_ACCEPTED], LORA_UNSUPPORTED);
  return { peft_type: 'LORA', ...base, ...fields, rank_pattern, raw };
}

/** AdaLoRA's rank_pattern: lora_E parameter name -> boolean mask of length init_r. */
function readRankMasks(f: Reader, initR: number): Record<string, boolean[]> | null {
  const v = f.take('rank_pattern', null);
  if (v === null) return null;
  if (!isRecord(v)) return f.fail('rank_pattern', `expected an object of boolean masks, got ${show(v)}`);
  for (const [k, mask] of Object.entries(v)) {
    if (!Array.isArray(mask) || !mask.every((b) => typeof b === 'boolean')) {
      f.fail(`rank_pattern.${k}`, `expected a list of true/false (one per initial rank), got ${show(mask)}`);
    }
    if (mask.length !== initR) {
      f.fail(`rank_pattern.${k}`, `has ${mask.length} entries but init_r is ${initR}`);
    }
    if (!mask.includes(true)) {
      f.fail(`rank_pattern.${k}`, 'keeps no rank at all (PEFT cannot load a rank-0 AdaLoRA layer)');
    }
  }
  return Object.fromEntries(Object.entries(v).map(([k, m]) => [k, [...(m as boolean[])]]));
}

function readAdaLora(f: Reader): AdaLoraConfig {
  const base = readBase(f);
  const fields = readLoraFields(f);
  if (fields.use_dora) f.fail('use_dora', 'AdaLoRA does not support DoRA (PEFT refuses it)');
  if (!isOff(f.json.loftq_config ?? null))
    f.fail('loftq_config', 'AdaLoRA does not support LoftQ (PEFT refuses it)');
  const init_r = f.int('init_r', 12);
  const total_step = f.int('total_step');
  const tinit = f.int('tinit', 0, 0);
  const tfinal = f.int('tfinal', 0, 0);
  if (tinit >= total_step - tfinal) {
    f.fail(
      'tinit',
      `tinit ${tinit} leaves no budgeting phase before total_step ${total_step} - tfinal ${tfinal}`,
    );
  }
  const ada = {
    init_r,
    target_r: f.int('target_r', 8),
    tinit,
    tfinal,
    deltaT: f.int('deltaT', 1),
    beta1: f.num('beta1', 0.85),
    beta2: f.num('beta2', 0.85),
    orth_reg_weight: f.num('orth_reg_weight', 0.5),
    total_step,
  };
  const rank_pattern = readRankMasks(f, init_r);
  const raw = f.rest([...COMMON_ACCEPTED, ...LORA_ACCEPTED], LORA_UNSUPPORTED);
  return { peft_type: 'ADALORA', ...base, ...fields, ...ada, rank_pattern, raw };
}

function readIa3(f: Reader): IA3Config {
  const base = readBase(f);
  const target_modules = f.selector('target_modules');
  const v = f.take('feedforward_modules', null);
  if (typeof v === 'string') pythonRegExp(v, 'full', f.file, 'feedforward_modules');
  const feedforward_modules = typeof v === 'string' ? v : f.strList('feedforward_modules');
  // IA3Config.__post_init__ checks the subset only when both are lists.
  if (Array.isArray(target_modules) && Array.isArray(feedforward_modules)) {
    const missing = feedforward_modules.filter((m) => !target_modules.includes(m));
    if (missing.length > 0) {
      f.fail('feedforward_modules', `must be a subset of target_modules; not targeted: ${show(missing)}`);
    }
  }
  const fields = {
    target_modules,
    exclude_modules: f.selector('exclude_modules'),
    feedforward_modules,
    fan_in_fan_out: f.bool('fan_in_fan_out', false),
    modules_to_save: readModulesToSave(f),
    init_ia3_weights: f.bool('init_ia3_weights', true),
  };
  const raw = f.rest(COMMON_ACCEPTED, {});
  return { peft_type: 'IA3', ...base, ...fields, raw };
}

function readPromptLearning(f: Reader, type: PromptLearningConfig['peft_type']): PromptLearningConfig {
  const base = readBase(f);
  if (base.task_type !== null && base.task_type !== 'CAUSAL_LM') {
    f.fail(
      'task_type',
      `${type} for ${base.task_type} is not supported: this runtime runs a decoder-only causal LM (CAUSAL_LM or null)`,
    );
  }
  const common = {
    num_virtual_tokens: f.int('num_virtual_tokens'),
    token_dim: f.optInt('token_dim'),
    num_transformer_submodules: f.optInt('num_transformer_submodules'),
    num_attention_heads: f.optInt('num_attention_heads'),
    num_layers: f.optInt('num_layers'),
  };
  if (common.num_transformer_submodules !== null && common.num_transformer_submodules !== 1) {
    f.fail(
      'num_transformer_submodules',
      `is ${common.num_transformer_submodules}; a decoder-only base has 1 (2 is for encoder-decoder models)`,
    );
  }
  if (type === 'PROMPT_TUNING') {
    const init = f.str('prompt_tuning_init', 'RANDOM');
    const text = f.optStr('prompt_tuning_init_text');
    const tokenizer = f.optStr('tokenizer_name_or_path');
    const kwargs = f.optRecord('tokenizer_kwargs');
    // PromptTuningConfig.__post_init__
    if (init === 'TEXT' && !tokenizer)
      f.fail('tokenizer_name_or_path', "is required when prompt_tuning_init is 'TEXT'");
    if (init === 'TEXT' && text === null)
      f.fail('prompt_tuning_init_text', "is required when prompt_tuning_init is 'TEXT'");
    if (kwargs !== null && Object.keys(kwargs).length > 0 && init !== 'TEXT') {
      f.fail('tokenizer_kwargs', "is only valid when prompt_tuning_init is 'TEXT'");
    }
    const raw = f.rest(COMMON_ACCEPTED, PROMPT_UNSUPPORTED);
    return {
      peft_type: type,
      ...base,
      ...common,
      prompt_tuning_init: init,
      prompt_tuning_init_text: text,
      tokenizer_name_or_path: tokenizer,
      tokenizer_kwargs: kwargs,
      raw,
    };
  }
  if (type === 'P_TUNING') {
    const fields = {
      encoder_reparameterization_type: f.oneOf('encoder_reparameterization_type', ['MLP', 'LSTM'], 'MLP'),
      encoder_hidden_size: f.optInt('encoder_hidden_size'),
      encoder_num_layers: f.int('encoder_num_layers', 2),
      encoder_dropout: f.num('encoder_dropout', 0),
    };
    const raw = f.rest(COMMON_ACCEPTED, PROMPT_UNSUPPORTED);
    return { peft_type: type, ...base, ...common, ...fields, raw };
  }
  const fields = {
    encoder_hidden_size: f.optInt('encoder_hidden_size'),
    prefix_projection: f.bool('prefix_projection', false),
  };
  const raw = f.rest([...COMMON_ACCEPTED, 'init_weights'], PROMPT_UNSUPPORTED);
  return { peft_type: type, ...base, ...common, ...fields, raw };
}

/**
 * Validate an adapter_config.json object (already JSON-parsed) as PEFT would load it. Throws
 * AdapterFormatError naming the file and the field (e.g. `adapter_config.json: lora_alpha: expected a
 * number, got "8"`).
 */
export function parsePeftConfig(json: unknown, file = 'adapter_config.json'): PeftConfig {
  if (!isRecord(json))
    throw new AdapterFormatError(file, undefined, `expected a JSON object, got ${show(json)}`);
  const f = new Reader(json, file);
  const type = json.peft_type;
  if (!PEFT_TYPES.includes(type as PeftType)) {
    const what = type === undefined ? 'missing' : `unsupported PEFT type ${show(type)}`;
    f.fail('peft_type', `${what}; supported: ${PEFT_TYPES.join(', ')}`);
  }
  switch (type as PeftType) {
    case 'LORA':
      return readLora(f);
    case 'ADALORA':
      return readAdaLora(f);
    case 'IA3':
      return readIa3(f);
    default:
      return readPromptLearning(f, type as PromptLearningConfig['peft_type']);
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/** The JSON object of a config: its typed fields (all of them, as PEFT writes) over `raw`. */
export function peftConfigJson(config: PeftConfig): Record<string, unknown> {
  const { raw, ...typed } = config;
  return { ...raw, ...(structuredClone(typed) as Record<string, unknown>) };
}

/**
 * adapter_config.json bytes for a config, as PEFT writes them. Every value round-trips; two forms are
 * normalised (an int layers_to_transform is written as a list, a string layers_pattern as a list) and
 * missing fields are written with PEFT's defaults, as PEFT itself does when it re-saves a config.
 */
export function serializePeftConfig(config: PeftConfig): Uint8Array {
  return new TextEncoder().encode(formatPeftJson(peftConfigJson(config)));
}
