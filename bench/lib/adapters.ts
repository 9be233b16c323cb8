/**
 * Real-format PEFT adapters (adapter_config.json + adapter_model.safetensors, PEFT's names and
 * shapes) for any Llama-family base, for the adapter benchmarks. LoRA and DoRA come from the test
 * fixtures (test/helpers/peft-fixtures.ts, which take a `base`); the IA3, prompt-tuning and
 * prefix-tuning makers there are written for stories260K only, so the ones below take the base.
 */
import type { LlamaConfig } from '../../src/formats/checkpoint.js';
import { headDim } from '../../src/formats/checkpoint.js';
import { parsePeftConfig, type IA3Config } from '../../src/formats/peft-config.js';
import { formatPeftJson } from '../../src/formats/python-json.js';
import { float32Entry, serializeSafetensors, type SafetensorsEntry } from '../../src/formats/safetensors.js';
import { fillNormal } from '../../src/formats/synth.js';
import { isFeedforward, linearModules, matchTargets } from '../../src/methods/targets.js';
import { makeLoraAdapter, type AdapterFiles } from '../../test/helpers/peft-fixtures.js';

export type { AdapterFiles };

const BASE_NAME = 'HuggingFaceTB/SmolLM2-135M';

function normal(n: number, seed: number, mean: number, std: number): Float32Array {
  const data = new Float32Array(n);
  fillNormal(data, seed, mean, std);
  return data;
}

function files(config: Record<string, unknown>, tensors: [string, SafetensorsEntry][]): AdapterFiles {
  return new Map([
    ['adapter_config.json', new TextEncoder().encode(formatPeftJson(config))],
    ['adapter_model.safetensors', serializeSafetensors(tensors, { format: 'pt' })],
  ]);
}

/** LoRA (or DoRA) of rank `r` on every linear layer but lm_head (target_modules 'all-linear'), alpha 2r. */
export function loraAllLinear(base: LlamaConfig, r: number, seed: number, dora = false): AdapterFiles {
  return makeLoraAdapter({ base, r, alpha: 2 * r, targets: 'all-linear', seed, dora, scale: 0.02 });
}

/** LoRA of rank `r` on the given projections (e.g. PEFT's Llama default, q_proj and v_proj), alpha 2r. */
export function loraOn(base: LlamaConfig, targets: string[], r: number, seed: number): AdapterFiles {
  return makeLoraAdapter({ base, r, alpha: 2 * r, targets, seed, scale: 0.02 });
}

/** IA3 with PEFT's Llama defaults: k_proj, v_proj, down_proj; down_proj feedforward. */
export function ia3Adapter(base: LlamaConfig, seed = 0): AdapterFiles {
  const json = {
    auto_mapping: null,
    base_model_name_or_path: BASE_NAME,
    exclude_modules: null,
    fan_in_fan_out: false,
    feedforward_modules: ['down_proj'],
    inference_mode: true,
    init_ia3_weights: true,
    modules_to_save: null,
    peft_type: 'IA3',
    revision: null,
    target_modules: ['k_proj', 'v_proj', 'down_proj'],
    task_type: 'CAUSAL_LM',
  };
  const config = parsePeftConfig(json) as IA3Config;
  const linear = new Map(linearModules(base).map((m) => [m.module, m]));
  const tensors: [string, SafetensorsEntry][] = [];
  let k = 0;
  for (const module of matchTargets(config, base)) {
    const m = linear.get(module);
    if (!m) throw new Error(`no linear module ${module}`);
    const shape = isFeedforward(config, module) ? [1, m.in] : [m.out, 1];
    tensors.push([
      `base_model.model.${module}.ia3_l`,
      float32Entry(normal(shape[0] * shape[1], seed * 1000 + k++, 1, 0.1), shape),
    ]);
  }
  return files(json, tensors);
}

function promptFields(base: LlamaConfig, type: string, n: number, tokenDim: number, heads: number) {
  return {
    auto_mapping: null,
    base_model_name_or_path: BASE_NAME,
    inference_mode: true,
    modules_to_save: null,
    num_attention_heads: heads,
    num_layers: base.num_hidden_layers,
    num_transformer_submodules: 1,
    num_virtual_tokens: n,
    peft_type: type,
    revision: null,
    task_type: 'CAUSAL_LM',
    token_dim: tokenDim,
  };
}

/** Prompt tuning: prompt_embeddings [n, hidden]. */
export function promptTuningAdapter(base: LlamaConfig, n: number, seed = 0): AdapterFiles {
  const d = base.hidden_size;
  const json = {
    ...promptFields(base, 'PROMPT_TUNING', n, d, base.num_attention_heads),
    prompt_tuning_init: 'RANDOM',
    prompt_tuning_init_text: null,
    tokenizer_kwargs: null,
    tokenizer_name_or_path: null,
  };
  return files(json, [['prompt_embeddings', float32Entry(normal(n * d, seed, 0, 0.02), [n, d])]]);
}

/** Prefix tuning: prompt_embeddings [n, layers * 2 * kv_heads * head_dim], as PEFT saves it for GQA. */
export function prefixTuningAdapter(base: LlamaConfig, n: number, seed = 0): AdapterFiles {
  const kv = base.num_key_value_heads * headDim(base);
  const json = {
    ...promptFields(base, 'PREFIX_TUNING', n, kv, base.num_key_value_heads),
    encoder_hidden_size: kv,
    prefix_projection: false,
  };
  const cols = base.num_hidden_layers * 2 * kv;
  return files(json, [['prompt_embeddings', float32Entry(normal(n * cols, seed, 0, 0.5), [n, cols])]]);
}

/** The two files as Runtime.adapters.add takes them. */
export function adapterSource(f: AdapterFiles): { config: Uint8Array; weights: Uint8Array } {
  const config = f.get('adapter_config.json');
  const weights = f.get('adapter_model.safetensors');
  if (!config || !weights) throw new Error('adapter without its two files');
  return { config, weights };
}
