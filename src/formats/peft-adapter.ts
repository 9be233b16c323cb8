/**
 * A Hugging Face PEFT adapter folder: `adapter_config.json` + `adapter_model.safetensors`.
 *
 * Tensor names are those PEFT's get_peft_model_state_dict writes (utils/save_and_load.py): the
 * PeftModel's state_dict keys (`base_model.model.` + the transformers module name) with the adapter
 * name removed, e.g.
 *   LoRA     base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   [r, in]
 *            ....lora_B.weight [out, r], ....lora_magnitude_vector [out] (DoRA),
 *            base_model.model.model.embed_tokens.lora_embedding_A [r, vocab], ....lora_embedding_B [hidden, r]
 *   AdaLoRA  ....lora_A [r, in], ....lora_E [r, 1], ....lora_B [out, r]   (ParameterDicts: no `.weight`)
 *   IA3      ....ia3_l  [out, 1], or [1, in] on feedforward modules
 *   prompt tuning / P-tuning   prompt_embeddings [num_virtual_tokens, token_dim]
 *   prefix tuning              prompt_embeddings [num_virtual_tokens, num_layers * 2 * token_dim]
 * plus, when an embedding or lm_head is targeted, the saved base weight of that module
 * (`....embed_tokens.base_layer.weight`, `base_model.model.lm_head.weight`, ...).
 *
 * Loading validates names, dtypes (F32 / F16 / BF16), shapes that depend only on the adapter, and
 * finiteness; `checkAdapterAgainstBase` checks the rest against a base config. Exporting writes the
 * tensors back byte for byte and the config values as loaded.
 */
import { AdapterFormatError, IncompatibleAdapterError } from '../errors.js';
import { type LlamaConfig, headDim } from './checkpoint.js';
import {
  type AdaLoraConfig,
  type LoraConfig,
  type PeftConfig,
  type PromptLearningConfig,
  isPromptLearning,
  parsePeftConfig,
  peftConfigJson,
} from './peft-config.js';
import { formatPeftJson } from './python-json.js';
import {
  type SafetensorsEntry,
  parseSafetensors,
  serializeSafetensors,
  tensorToFloat32,
} from './safetensors.js';
import {
  adaloraRankMasks,
  isFeedforward,
  linearModules,
  loraRank,
  matchTargets,
} from '../methods/targets.js';

export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';

export interface PeftAdapter {
  config: PeftConfig;
  /** In file (data offset) order; bytes as stored. */
  tensors: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
  /** adapter_config.json as read: what export writes back (edit `config` and re-create to change it). */
  rawConfig: Record<string, unknown>;
  /** Names the adapter in errors: `${label}/adapter_config.json`. */
  label: string;
}

/** The tensors of one LoRA / DoRA / AdaLoRA module. */
export interface LoraModuleTensors {
  module: string;
  /** 'embedding': lora_embedding_A [r, vocab] / lora_embedding_B [hidden, r] on an nn.Embedding. */
  kind: 'linear' | 'embedding';
  /** Tensor names. */
  a: string;
  b: string;
  /** AdaLoRA's singular values [r, 1]. */
  e?: string;
  /** DoRA's lora_magnitude_vector [out]. */
  magnitude?: string;
  rank: number;
  in: number;
  out: number;
}

export interface Ia3ModuleTensor {
  module: string;
  tensor: string;
  /** Scales the input ([1, in]) rather than the output ([out, 1]). */
  feedforward: boolean;
  features: number;
}

/** A base weight PEFT saved with the adapter (an embedding or lm_head it targeted or resized). */
export interface SavedBaseWeight {
  module: string;
  tensor: string;
}

const PREFIX = 'base_model.model.';
const PROMPT_TENSOR = 'prompt_embeddings';
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);

type Role = 'A' | 'B' | 'E' | 'magnitude' | 'embA' | 'embB' | 'ia3';

const SUFFIXES: Record<'LORA' | 'ADALORA' | 'IA3', [string, Role][]> = {
  LORA: [
    ['.lora_A.weight', 'A'],
    ['.lora_B.weight', 'B'],
    ['.lora_magnitude_vector', 'magnitude'],
    ['.lora_embedding_A', 'embA'],
    ['.lora_embedding_B', 'embB'],
  ],
  ADALORA: [
    ['.lora_A', 'A'],
    ['.lora_B', 'B'],
    ['.lora_E', 'E'],
  ],
  IA3: [['.ia3_l', 'ia3']],
};

interface Layout {
  lora: Map<string, LoraModuleTensors>;
  ia3: Map<string, Ia3ModuleTensor>;
  /** Every adapted module with the first of its tensors, in file order. */
  modules: Map<string, string>;
  base: SavedBaseWeight[];
}

const shapeText = (s: readonly number[]) => `[${s.join(', ')}]`;

/** Names, roles and shapes of the tensors; AdapterFormatError naming `file` and the tensor. */
function layoutOf(config: PeftConfig, tensors: Map<string, SafetensorsEntry>, file: string): Layout {
  const fail: (tensor: string, message: string) => never = (tensor, message) => {
    throw new AdapterFormatError(file, tensor, message);
  };
  const layout: Layout = { lora: new Map(), ia3: new Map(), modules: new Map(), base: [] };
  if (tensors.size === 0) fail('tensors', 'the file holds no tensors');
  for (const [name, t] of tensors) {
    if (!FLOAT_DTYPES.has(t.dtype))
      fail(name, `dtype ${t.dtype} is not supported: expected F32, F16 or BF16`);
  }
  if (isPromptLearning(config)) {
    for (const name of tensors.keys()) {
      if (name !== PROMPT_TENSOR)
        fail(name, `not a tensor PEFT writes for ${config.peft_type} (only ${PROMPT_TENSOR})`);
    }
    checkPromptShape(config, tensors.get(PROMPT_TENSOR) as SafetensorsEntry, file);
    return layout;
  }
  const type = config.peft_type;
  const roles = new Map<string, Map<Role, string>>();
  for (const name of tensors.keys()) {
    if (!name.startsWith(PREFIX))
      fail(name, `not a PEFT tensor name: expected ${PREFIX}<module>${SUFFIXES[type][0][0]}`);
    const rest = name.slice(PREFIX.length);
    const hit = SUFFIXES[type].find(([suffix]) => rest.endsWith(suffix) && rest.length > suffix.length);
    if (hit !== undefined) {
      const module = rest.slice(0, -hit[0].length);
      let m = roles.get(module);
      if (m === undefined) roles.set(module, (m = new Map()));
      m.set(hit[1], name);
      if (!layout.modules.has(module)) layout.modules.set(module, name);
      continue;
    }
    if (rest.endsWith('.lora_B.bias')) fail(name, 'a bias on lora_B (lora_bias) is not supported');
    if (rest.endsWith('.bias')) {
      fail(
        name,
        `a trained base bias (bias: ${JSON.stringify('bias' in config ? config.bias : null)}) is not supported`,
      );
    }
    const base = /^(.+?)(?:\.base_layer)?\.weight$/.exec(rest);
    if (base !== null && /(^|\.)(embed_tokens|lm_head)$/.test(base[1])) {
      layout.base.push({ module: base[1], tensor: name });
      continue;
    }
    fail(
      name,
      `not a tensor PEFT writes for ${type} (expected ${PREFIX}<module>{${SUFFIXES[type].map(([s]) => s).join(', ')}})`,
    );
  }
  for (const [module, m] of roles) {
    if (config.peft_type === 'IA3')
      layout.ia3.set(module, ia3Module(config, module, m.get('ia3') as string, tensors, fail));
    else layout.lora.set(module, loraModule(config, module, m, tensors, fail));
  }
  if (config.peft_type === 'ADALORA') {
    for (const [module] of adaloraRankMasks(config)) {
      if (!layout.lora.has(module)) {
        throw new AdapterFormatError(
          file.replace(WEIGHTS_FILE, CONFIG_FILE),
          'rank_pattern',
          `has a mask for ${module}, which has no tensors in ${WEIGHTS_FILE}`,
        );
      }
    }
  }
  if (layout.modules.size === 0) fail('tensors', `no ${type} module tensors (only saved base weights)`);
  return layout;
}

function loraModule(
  config: LoraConfig | AdaLoraConfig,
  module: string,
  m: Map<Role, string>,
  tensors: Map<string, SafetensorsEntry>,
  fail: (tensor: string, message: string) => never,
): LoraModuleTensors {
  const embedding = m.has('embA') || m.has('embB');
  const [aRole, bRole]: Role[] = embedding ? ['embA', 'embB'] : ['A', 'B'];
  const first = [...m.values()][0];
  const aName = m.get(aRole);
  const bName = m.get(bRole);
  if (aName === undefined || bName === undefined || (embedding && (m.has('A') || m.has('B')))) {
    fail(
      first,
      `module ${module} needs exactly one pair of lora_A / lora_B tensors (or lora_embedding_A / _B)`,
    );
  }
  const a = tensors.get(aName as string) as SafetensorsEntry;
  const b = tensors.get(bName as string) as SafetensorsEntry;
  if (a.shape.length !== 2) fail(aName as string, `expected 2 dimensions [r, in], got ${shapeText(a.shape)}`);
  if (b.shape.length !== 2)
    fail(bName as string, `expected 2 dimensions [out, r], got ${shapeText(b.shape)}`);
  const [rank, inF] = a.shape;
  const [outF, rankB] = b.shape;
  if (rankB !== rank) fail(bName as string, `rank ${rankB} does not match ${aName}'s rank ${rank}`);
  const expected = loraRank(config, module);
  if (rank !== expected) {
    const why = config.peft_type === 'LORA' ? 'r / rank_pattern give' : 'init_r / rank_pattern give';
    fail(aName as string, `has rank ${rank} but ${why} ${expected}`);
  }
  const out: LoraModuleTensors = {
    module,
    kind: embedding ? 'embedding' : 'linear',
    a: aName as string,
    b: bName as string,
    rank,
    in: inF,
    out: outF,
  };
  if (config.peft_type === 'ADALORA') {
    const eName = m.get('E');
    if (eName === undefined) return fail(first, `module ${module} has no lora_E (AdaLoRA's singular values)`);
    const e = tensors.get(eName) as SafetensorsEntry;
    if (e.shape.length !== 2 || e.shape[0] !== rank || e.shape[1] !== 1) {
      fail(eName, `expected shape [${rank}, 1], got ${shapeText(e.shape)}`);
    }
    out.e = eName;
  } else {
    const magName = m.get('magnitude');
    if (magName !== undefined && !config.use_dora) fail(magName, 'a DoRA magnitude, but use_dora is false');
    if (magName !== undefined && embedding) fail(magName, 'DoRA on an embedding is not supported');
    if (magName === undefined && config.use_dora && !embedding) {
      fail(first, `use_dora is true but module ${module} has no lora_magnitude_vector`);
    }
    if (magName !== undefined) {
      const g = tensors.get(magName) as SafetensorsEntry;
      if (g.shape.length !== 1 || g.shape[0] !== outF)
        fail(magName, `expected shape [${outF}], got ${shapeText(g.shape)}`);
      out.magnitude = magName;
    }
  }
  return out;
}

function ia3Module(
  config: PeftConfig,
  module: string,
  name: string,
  tensors: Map<string, SafetensorsEntry>,
  fail: (tensor: string, message: string) => never,
): Ia3ModuleTensor {
  if (config.peft_type !== 'IA3') throw new TypeError('unreachable');
  const feedforward = isFeedforward(config, module);
  const { shape } = tensors.get(name) as SafetensorsEntry;
  const ok = shape.length === 2 && (feedforward ? shape[0] === 1 : shape[1] === 1);
  if (!ok) {
    fail(
      name,
      `expected ${feedforward ? '[1, in] (a feedforward module)' : '[out, 1]'}, got ${shapeText(shape)}`,
    );
  }
  return { module, tensor: name, feedforward, features: feedforward ? shape[1] : shape[0] };
}

function checkPromptShape(config: PromptLearningConfig, t: SafetensorsEntry | undefined, file: string): void {
  if (t === undefined) throw new AdapterFormatError(file, PROMPT_TENSOR, 'missing');
  const fail = (message: string): never => {
    throw new AdapterFormatError(file, PROMPT_TENSOR, message);
  };
  if (t.shape.length !== 2) fail(`expected 2 dimensions, got ${shapeText(t.shape)}`);
  const [rows, cols] = t.shape;
  const prefix = config.peft_type === 'PREFIX_TUNING';
  const expectedRows = config.num_virtual_tokens * (prefix ? 1 : (config.num_transformer_submodules ?? 1));
  if (rows !== expectedRows) fail(`has ${rows} rows but num_virtual_tokens is ${config.num_virtual_tokens}`);
  if (!prefix && config.token_dim !== null && cols !== config.token_dim) {
    fail(`has ${cols} columns but token_dim is ${config.token_dim}`);
  }
  // The exact prefix width depends on the base (grouped-query heads): checkAdapterAgainstBase.
  if (prefix && config.num_layers !== null && cols % (2 * config.num_layers) !== 0) {
    fail(`has ${cols} columns, not a multiple of 2 * num_layers = ${2 * config.num_layers}`);
  }
}

/** Refuses a tensor with a NaN or an infinity, naming the file, the tensor and the index. */
export function checkFinite(name: string, t: SafetensorsEntry, file: string): void {
  const v = tensorToFloat32(t, file, name, AdapterFormatError);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) {
      throw new AdapterFormatError(
        file,
        name,
        `value at flat index ${i} is ${v[i]}; adapter weights must be finite`,
      );
    }
  }
}

function validate(config: PeftConfig, tensors: Map<string, SafetensorsEntry>, file: string): void {
  layoutOf(config, tensors, file);
  for (const [name, t] of tensors) checkFinite(name, t, file);
}

/** An adapter config as bytes (strict UTF-8 JSON) or parsed JSON, copied; AdapterFormatError naming `file` if not. */
export function readConfigJson(config: unknown, file: string): unknown {
  try {
    if (config instanceof Uint8Array) {
      return JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(config));
    }
    return JSON.parse(JSON.stringify(config)) as unknown; // a private copy of plain JSON data
  } catch (e) {
    throw new AdapterFormatError(file, undefined, `not valid UTF-8 JSON (${(e as Error).message})`);
  }
}

/**
 * Read an adapter from its two files (the config as bytes or as parsed JSON). Throws
 * AdapterFormatError naming `${label}/adapter_config.json` or `${label}/adapter_model.safetensors`
 * and the field or tensor at fault.
 */
export function parsePeftAdapter(
  files: { config: unknown; weights: Uint8Array },
  label = 'adapter',
): PeftAdapter {
  const configFile = `${label}/${CONFIG_FILE}`;
  const weightsFile = `${label}/${WEIGHTS_FILE}`;
  const json = readConfigJson(files.config, configFile);
  const config = parsePeftConfig(json, configFile);
  if (!(files.weights instanceof Uint8Array))
    throw new AdapterFormatError(weightsFile, undefined, 'expected bytes');
  const { metadata, tensors } = parseSafetensors(files.weights, {
    file: weightsFile,
    error: AdapterFormatError,
  });
  validate(config, tensors, weightsFile);
  return { config, tensors, metadata, rawConfig: json as Record<string, unknown>, label };
}

/**
 * An adapter made in code (e.g. trained on the device), validated as a loaded one. Its config is
 * written as PEFT writes it (peftConfigJson).
 */
export function createPeftAdapter(
  config: PeftConfig,
  tensors: Iterable<[string, SafetensorsEntry]>,
  metadata: Record<string, string> = { format: 'pt' },
  label = 'adapter',
): PeftAdapter {
  const rawConfig = peftConfigJson(config);
  const parsed = parsePeftConfig(rawConfig, `${label}/${CONFIG_FILE}`);
  const map = new Map(tensors);
  validate(parsed, map, `${label}/${WEIGHTS_FILE}`);
  return { config: parsed, tensors: map, metadata: { ...metadata }, rawConfig, label };
}

/** The two files of the adapter: tensors byte for byte as loaded, the config values as loaded. */
export function serializePeftAdapter(adapter: PeftAdapter): Map<string, Uint8Array> {
  const weightsFile = `${adapter.label}/${WEIGHTS_FILE}`;
  const metadata = Object.keys(adapter.metadata).length > 0 ? adapter.metadata : undefined;
  return new Map([
    [CONFIG_FILE, new TextEncoder().encode(formatPeftJson(adapter.rawConfig))],
    [
      WEIGHTS_FILE,
      serializeSafetensors(adapter.tensors, metadata, { file: weightsFile, error: AdapterFormatError }),
    ],
  ]);
}

/** A tensor's values as float32 (F16 / BF16 widened exactly). */
export function adapterTensor(adapter: PeftAdapter, name: string): Float32Array {
  const file = `${adapter.label}/${WEIGHTS_FILE}`;
  const t = adapter.tensors.get(name);
  if (t === undefined) throw new AdapterFormatError(file, name, 'no such tensor in the adapter');
  return tensorToFloat32(t, file, name, AdapterFormatError);
}

/** LoRA / DoRA / AdaLoRA tensors by module, in file order (empty for other methods). */
export function loraModules(adapter: PeftAdapter): Map<string, LoraModuleTensors> {
  return layoutOf(adapter.config, adapter.tensors, `${adapter.label}/${WEIGHTS_FILE}`).lora;
}

/** IA3 vectors by module, in file order (empty for other methods). */
export function ia3Modules(adapter: PeftAdapter): Map<string, Ia3ModuleTensor> {
  return layoutOf(adapter.config, adapter.tensors, `${adapter.label}/${WEIGHTS_FILE}`).ia3;
}

/** Base weights PEFT saved with the adapter (to compare with the base's own, or refuse). */
export function savedBaseWeights(adapter: PeftAdapter): SavedBaseWeight[] {
  return layoutOf(adapter.config, adapter.tensors, `${adapter.label}/${WEIGHTS_FILE}`).base;
}

/** The prompt-learning sizes PEFT uses on this base (utils/other.py _prepare_prompt_learning_config). */
export interface PromptLearningDims {
  numVirtualTokens: number;
  /** Rows of prompt_embeddings: num_virtual_tokens * num_transformer_submodules (prefix: num_virtual_tokens). */
  rows: number;
  /** Prefix tuning: num_key_value_heads * head_dim (PEFT #1901); otherwise hidden_size. */
  tokenDim: number;
  numAttentionHeads: number;
  numLayers: number;
  /** Columns of prompt_embeddings: tokenDim, or numLayers * 2 * tokenDim for prefix tuning. */
  cols: number;
}

/**
 * Missing sizes come from the base; for prefix tuning PEFT then rescales token_dim to the key/value
 * width of grouped-query attention: token_dim // num_attention_heads * num_key_value_heads.
 */
export function promptLearningDims(config: PromptLearningConfig, base: LlamaConfig): PromptLearningDims {
  const numLayers = config.num_layers ?? base.num_hidden_layers;
  let tokenDim = config.token_dim ?? base.hidden_size;
  let heads = config.num_attention_heads ?? base.num_attention_heads;
  const prefix = config.peft_type === 'PREFIX_TUNING';
  if (prefix) {
    tokenDim = Math.floor(tokenDim / heads) * base.num_key_value_heads;
    heads = base.num_key_value_heads;
  }
  const rows = prefix
    ? config.num_virtual_tokens
    : config.num_virtual_tokens * (config.num_transformer_submodules ?? 1);
  return {
    numVirtualTokens: config.num_virtual_tokens,
    rows,
    tokenDim,
    numAttentionHeads: heads,
    numLayers,
    cols: prefix ? numLayers * 2 * tokenDim : tokenDim,
  };
}

function describeBase(base: LlamaConfig): string {
  return `${base.model_type}, ${base.num_hidden_layers} layers, hidden ${base.hidden_size}`;
}

function checkPromptAgainstBase(
  adapter: PeftAdapter,
  base: LlamaConfig,
  configFile: string,
  weightsFile: string,
): void {
  const config = adapter.config as PromptLearningConfig;
  const dims = promptLearningDims(config, base);
  const [, cols] = (adapter.tensors.get(PROMPT_TENSOR) as SafetensorsEntry).shape;
  const incompatible = (file: string, field: string, message: string): never => {
    throw new IncompatibleAdapterError(file, field, `${message} (base: ${describeBase(base)})`);
  };
  if (config.peft_type !== 'PREFIX_TUNING') {
    if (config.token_dim !== null && config.token_dim !== base.hidden_size) {
      incompatible(
        configFile,
        'token_dim',
        `is ${config.token_dim} but the base's hidden_size is ${base.hidden_size}`,
      );
    }
    if (cols !== base.hidden_size) {
      incompatible(
        weightsFile,
        PROMPT_TENSOR,
        `has ${cols} columns but the base's hidden_size is ${base.hidden_size}`,
      );
    }
    return;
  }
  if (dims.numLayers !== base.num_hidden_layers) {
    incompatible(
      configFile,
      'num_layers',
      `is ${dims.numLayers} but the base has ${base.num_hidden_layers} layers`,
    );
  }
  const kvWidth = base.num_key_value_heads * headDim(base);
  if (dims.tokenDim !== kvWidth) {
    incompatible(
      configFile,
      'token_dim',
      `gives ${dims.tokenDim} key/value features per layer but the base has ${kvWidth} (num_key_value_heads * head_dim)`,
    );
  }
  if (cols !== dims.cols) {
    incompatible(
      weightsFile,
      PROMPT_TENSOR,
      `has ${cols} columns but num_layers * 2 * ${kvWidth} = ${dims.cols}`,
    );
  }
}

/**
 * Check a parsed adapter against a base config. Throws IncompatibleAdapterError naming the first
 * module (in file order) the base does not have, a size that does not fit (in / out features,
 * token_dim vs hidden_size, num_layers), or a mismatch between the modules target_modules selects
 * on this base and the modules the file holds.
 */
export function checkAdapterAgainstBase(
  adapter: PeftAdapter,
  base: LlamaConfig,
  label = adapter.label,
): void {
  const configFile = `${label}/${CONFIG_FILE}`;
  const weightsFile = `${label}/${WEIGHTS_FILE}`;
  const { config } = adapter;
  if (isPromptLearning(config)) return checkPromptAgainstBase(adapter, base, configFile, weightsFile);
  const layout = layoutOf(config, adapter.tensors, weightsFile);
  const linear = new Map(linearModules(base).map((m) => [m.module, m]));
  const incompatible = (tensor: string, message: string): never => {
    throw new IncompatibleAdapterError(weightsFile, tensor, message);
  };
  const missing = (module: string, tensor: string): never =>
    incompatible(
      tensor,
      `module ${module} does not exist in the base model (${describeBase(base)}: its linear modules are ` +
        'model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj and lm_head)',
    );
  const size = (tensor: string, what: string, got: number, want: number, module: string) => {
    if (got !== want) incompatible(tensor, `${what} is ${got} but ${module} of the base has ${want}`);
  };
  // One pass in file order, so the first foreign module is the one named.
  const baseWeights = new Map(layout.base.map((w) => [w.tensor, w]));
  const seen = new Set<string>();
  for (const name of adapter.tensors.keys()) {
    const saved = baseWeights.get(name);
    if (saved !== undefined) {
      const shape = adapter.tensors.get(name)?.shape ?? [];
      if (saved.module !== 'model.embed_tokens' && saved.module !== 'lm_head') missing(saved.module, name);
      if (shape.length !== 2 || shape[0] !== base.vocab_size || shape[1] !== base.hidden_size) {
        incompatible(
          name,
          `expected shape [${base.vocab_size}, ${base.hidden_size}], got ${shapeText(shape)}`,
        );
      }
      continue;
    }
    const module = [...layout.modules].find(([, first]) => first === name)?.[0];
    if (module === undefined || seen.has(module)) continue;
    seen.add(module);
    const lora = layout.lora.get(module);
    if (lora?.kind === 'embedding') {
      if (module !== 'model.embed_tokens') missing(module, name);
      size(lora.a, 'lora_embedding_A in (vocabulary)', lora.in, base.vocab_size, module);
      size(lora.b, 'lora_embedding_B out (hidden size)', lora.out, base.hidden_size, module);
      continue;
    }
    const m = linear.get(module);
    if (m === undefined) return missing(module, name);
    if (lora !== undefined) {
      size(lora.a, 'in_features', lora.in, m.in, module);
      size(lora.b, 'out_features', lora.out, m.out, module);
    }
    const ia3 = layout.ia3.get(module);
    if (ia3 !== undefined) {
      size(
        ia3.tensor,
        ia3.feedforward ? 'in_features' : 'out_features',
        ia3.features,
        ia3.feedforward ? m.in : m.out,
        module,
      );
    }
  }
  const selected = matchTargets(config, base, configFile);
  for (const [module, first] of layout.modules) {
    if (!selected.includes(module)) {
      incompatible(
        first,
        `holds weights for ${module}, which target_modules does not select on this base (PEFT would not load them)`,
      );
    }
  }
  for (const module of selected) {
    if (!layout.modules.has(module)) {
      throw new IncompatibleAdapterError(
        configFile,
        'target_modules',
        `selects ${module} but ${WEIGHTS_FILE} has no weights for it`,
      );
    }
  }
}
