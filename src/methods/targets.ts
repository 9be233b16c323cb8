/**
 * Which modules of a Llama-family base an adapter wraps, with PEFT's exact semantics
 * (tuners/tuners_utils.py check_target_module_exists and _maybe_include_all_linear_layers,
 * utils/other.py get_pattern_key, tuners/ia3/model.py _check_target_module_feedforward), and the rank
 * and scaling of each wrapped module (tuners/lora/model.py _create_and_replace, lora/layer.py
 * update_layer, adalora/layer.py).
 *
 * Module names are those of transformers' LlamaForCausalLM.named_modules().
 */
import { AdapterFormatError, IncompatibleAdapterError } from '../errors.js';
import { type LlamaConfig, headDim } from '../formats/checkpoint.js';
import {
  ALL_LINEAR,
  type AdaLoraConfig,
  type IA3Config,
  type LoraConfig,
  type ModuleSelector,
} from '../formats/peft-config.js';
import { layersRegExp, patternRegExp, pythonRegExp } from '../formats/python-regex.js';

export interface LinearModule {
  module: string;
  /** The decoder layer index, or null for lm_head. */
  layer: number | null;
  in: number;
  out: number;
}

export type ModuleKind = 'linear' | 'embedding' | 'other';

export interface BaseModule {
  module: string;
  kind: ModuleKind;
}

const ATTENTION = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;
const MLP = ['gate_proj', 'up_proj', 'down_proj'] as const;

/** Every nn.Linear of LlamaForCausalLM in named_modules order, with its features. */
export function linearModules(config: LlamaConfig): LinearModule[] {
  const d = config.hidden_size;
  const q = config.num_attention_heads * headDim(config);
  const kv = config.num_key_value_heads * headDim(config);
  const ff = config.intermediate_size;
  const size: Record<string, [number, number]> = {
    q_proj: [d, q],
    k_proj: [d, kv],
    v_proj: [d, kv],
    o_proj: [q, d],
    gate_proj: [d, ff],
    up_proj: [d, ff],
    down_proj: [ff, d],
  };
  const out: LinearModule[] = [];
  for (let layer = 0; layer < config.num_hidden_layers; layer++) {
    for (const name of ATTENTION) {
      out.push({
        module: `model.layers.${layer}.self_attn.${name}`,
        layer,
        in: size[name][0],
        out: size[name][1],
      });
    }
    for (const name of MLP) {
      out.push({ module: `model.layers.${layer}.mlp.${name}`, layer, in: size[name][0], out: size[name][1] });
    }
  }
  // lm_head exists even when its weight is tied to the embedding.
  out.push({ module: 'lm_head', layer: null, in: d, out: config.vocab_size });
  return out;
}

/** LlamaForCausalLM.named_modules() without the root '', in order, with what PEFT can wrap. */
export function baseModules(config: LlamaConfig): BaseModule[] {
  const other = (module: string): BaseModule => ({ module, kind: 'other' });
  const linear = (module: string): BaseModule => ({ module, kind: 'linear' });
  const out: BaseModule[] = [
    other('model'),
    { module: 'model.embed_tokens', kind: 'embedding' },
    other('model.layers'),
  ];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push(other(p), other(`${p}.self_attn`), ...ATTENTION.map((n) => linear(`${p}.self_attn.${n}`)));
    out.push(other(`${p}.mlp`), ...MLP.map((n) => linear(`${p}.mlp.${n}`)), other(`${p}.mlp.act_fn`));
    out.push(other(`${p}.input_layernorm`), other(`${p}.post_attention_layernorm`));
  }
  out.push(other('model.norm'), other('model.rotary_emb'), linear('lm_head'));
  return out;
}

/**
 * PEFT's default targets when target_modules / feedforward_modules is null, for the Llama-family
 * model types this runtime loads (utils/constants.py TRANSFORMERS_MODELS_TO_*_MAPPING, identical for
 * "llama" and "mistral").
 */
export const DEFAULT_TARGETS = {
  LORA: ['q_proj', 'v_proj'],
  ADALORA: ['q_proj', 'v_proj'],
  IA3: ['k_proj', 'v_proj', 'down_proj'],
  IA3_FEEDFORWARD: ['down_proj'],
} as const;

type TargetConfig = LoraConfig | AdaLoraConfig | IA3Config;

const matches = (selector: string[] | string, key: string, file: string, field: string): boolean =>
  typeof selector === 'string'
    ? pythonRegExp(selector, 'full', file, field).test(key)
    : selector.includes(key) || selector.some((t) => key.endsWith(`.${t}`));

/** check_target_module_exists for one module name, `targets` already resolved ('all-linear' expanded). */
function targetModuleExists(
  config: TargetConfig,
  key: string,
  targets: string[] | string,
  file: string,
): boolean {
  if (config.exclude_modules !== null && config.exclude_modules.length > 0) {
    if (matches(config.exclude_modules, key, file, 'exclude_modules')) return false;
  }
  if (typeof targets === 'string') return pythonRegExp(targets, 'full', file, 'target_modules').test(key);
  if (targets.includes(key)) return true; // named exactly: layers_to_transform does not apply
  if (!targets.some((t) => key.endsWith(`.${t}`))) return false;
  const layers = config.peft_type === 'IA3' ? null : config.layers_to_transform;
  if (layers === null || layers.length === 0) return true;
  const patterns = config.peft_type === 'IA3' ? null : config.layers_pattern;
  let index: string | undefined;
  let found = false;
  for (const p of patterns === null || patterns.length === 0 ? [null] : patterns) {
    const m = layersRegExp(p, file, 'layers_pattern').exec(key);
    if (m !== null) {
      index = m[1];
      found = true;
      break;
    }
  }
  if (!found) return false;
  // int(match.group(1)): group 1 is the first group of the whole regex, a user group if the pattern has one.
  if (index === undefined || !/^\d+$/.test(index)) {
    throw new AdapterFormatError(
      file,
      'layers_pattern',
      `on ${key} the layer index group captures ${JSON.stringify(index ?? null)}, not a number (PEFT fails the same way)`,
    );
  }
  return layers.includes(Number(index));
}

function resolveTargets(config: TargetConfig, base: LlamaConfig): string[] | string {
  const t: ModuleSelector = config.target_modules;
  if (t === null) return [...DEFAULT_TARGETS[config.peft_type]];
  if (typeof t === 'string' && t.toLowerCase() === ALL_LINEAR) {
    // every nn.Linear except the output embedding (get_output_embeddings() = lm_head)
    return linearModules(base)
      .map((m) => m.module)
      .filter((m) => m !== 'lm_head');
  }
  return t;
}

/**
 * The modules PEFT wraps with this adapter on this base, in named_modules order. Throws
 * IncompatibleAdapterError (naming `file` and target_modules) when a selected module cannot carry
 * the method (a norm, a decoder layer, the embedding for anything but LoRA) or when nothing is
 * selected, as PEFT raises; AdapterFormatError for a pattern PEFT itself fails on.
 */
export function matchTargets(
  config: TargetConfig,
  base: LlamaConfig,
  file = 'adapter_config.json',
): string[] {
  const targets = resolveTargets(config, base);
  const out: string[] = [];
  for (const { module, kind } of baseModules(base)) {
    if (!targetModuleExists(config, module, targets, file)) continue;
    const embeddingOk = kind === 'embedding' && config.peft_type === 'LORA' && !config.use_dora;
    if (kind === 'embedding' && !embeddingOk) {
      const method = config.peft_type === 'LORA' ? 'DoRA' : config.peft_type;
      throw new IncompatibleAdapterError(
        file,
        'target_modules',
        `selects ${module}: ${method} on an embedding is not supported`,
      );
    }
    if (kind === 'other') {
      throw new IncompatibleAdapterError(
        file,
        'target_modules',
        `selects ${module}, which is not a linear layer (PEFT refuses it too)`,
      );
    }
    out.push(module);
  }
  if (out.length === 0) {
    throw new IncompatibleAdapterError(
      file,
      'target_modules',
      `${JSON.stringify(config.target_modules)} selects no module of the base model (PEFT raises "Target modules not found")`,
    );
  }
  return out;
}

/**
 * PEFT's get_pattern_key: the value of the first key (in dict order) whose regex `(.*\.)?(key)$`
 * matches the start of `module`, else an exact key, else `fallback`. Keys that look like integers
 * ("0") come first in a JavaScript object; PEFT keeps file order.
 */
export function patternValue(
  pattern: Record<string, number>,
  module: string,
  fallback: number,
  file = 'adapter_config.json',
  field = 'rank_pattern',
): number {
  for (const [key, value] of Object.entries(pattern)) {
    if (patternRegExp(key, file, `${field}.${key}`).test(module)) return value;
  }
  return Object.hasOwn(pattern, module) ? pattern[module] : fallback;
}

/**
 * AdaLoRA's rank masks by module: adalora/model.py resize_modules_by_rank_pattern takes the module
 * from a key by dropping its last segment (`lora_E`), or the last two when the key still holds the
 * adapter name ("default", the name PEFT loads an adapter under).
 */
export function adaloraRankMasks(config: AdaLoraConfig, adapterName = 'default'): Map<string, boolean[]> {
  const out = new Map<string, boolean[]>();
  for (const [key, mask] of Object.entries(config.rank_pattern ?? {})) {
    const parts = key.split('.');
    out.set(parts.slice(0, key.includes(adapterName) ? -2 : -1).join('.'), mask);
  }
  return out;
}

/** The rank of a module: rank_pattern / r for LoRA, the kept rows of its mask / init_r for AdaLoRA. */
export function loraRank(config: LoraConfig | AdaLoraConfig, module: string): number {
  if (config.peft_type === 'LORA') return patternValue(config.rank_pattern, module, config.r);
  const mask = adaloraRankMasks(config).get(module);
  return mask === undefined ? config.init_r : mask.filter(Boolean).length;
}

/**
 * The factor on B·A (LoRA) or B·(A⊙E) (AdaLoRA) of a module:
 * LoRA (lora/layer.py update_layer): alpha / r, or alpha / sqrt(r) with use_rslora, with r and alpha
 * from rank_pattern / alpha_pattern.
 * AdaLoRA (adalora/layer.py): scaling / (ranknum + 1e-5) with scaling = lora_alpha (the module's rank
 * when lora_alpha <= 0) and ranknum = init_r even for a pruned module (resize_modules_by_rank_pattern
 * copies the old ranknum back). Computed in float64; torch adds 1e-5 in float32.
 */
export function loraScaling(config: LoraConfig | AdaLoraConfig, module: string): number {
  const r = loraRank(config, module);
  if (config.peft_type === 'ADALORA')
    return (config.lora_alpha > 0 ? config.lora_alpha : r) / (config.init_r + 1e-5);
  const alpha = patternValue(
    config.alpha_pattern,
    module,
    config.lora_alpha,
    'adapter_config.json',
    'alpha_pattern',
  );
  return config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
}

/**
 * Whether IA3 scales the input of this module (ia3/model.py _check_target_module_feedforward): a
 * string is a full-match regex, a list matches by plain suffix (`key.endswith(target)`, no '.'
 * boundary, unlike target_modules). null: PEFT's default for Llama models (down_proj).
 */
export function isFeedforward(config: IA3Config, module: string): boolean {
  const ff = config.feedforward_modules ?? [...DEFAULT_TARGETS.IA3_FEEDFORWARD];
  if (typeof ff === 'string')
    return pythonRegExp(ff, 'full', 'adapter_config.json', 'feedforward_modules').test(module);
  return ff.some((t) => module.endsWith(t));
}
