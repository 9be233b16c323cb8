/**
 * A new LoRA adapter as PEFT initializes one (init_lora_weights=True, lora/layer.py
 * reset_lora_parameters): lora_A ~ kaiming_uniform(a = √5), i.e. U(-1/√in, 1/√in), lora_B = 0, so
 * the adapter starts as the exact base model. Its adapter_config.json is what PEFT's LoraConfig
 * writes, so the trained adapter loads in PEFT unchanged.
 */
import { InvalidInputError } from '../errors.js';
import type { LlamaConfig } from '../formats/checkpoint.js';
import { createPeftAdapter, type PeftAdapter } from '../formats/peft-adapter.js';
import { parsePeftConfig, type LoraConfig } from '../formats/peft-config.js';
import { float32Entry, type SafetensorsEntry } from '../formats/safetensors.js';
import { linearModules, loraRank, matchTargets } from '../methods/targets.js';
import { seededRandom } from '../engine/sampling.js';

export interface LoraInit {
  /** Rank (default 8). */
  rank?: number;
  /** lora_alpha (default 2 · rank, a common choice; PEFT's own default is 8). */
  alpha?: number;
  /** Module names or suffixes (default q_proj, v_proj: PEFT's default for Llama), or 'all-linear'. */
  targets?: readonly string[] | 'all-linear';
  /** Only the last k decoder layers (layers_to_transform). */
  lastLayers?: number;
  /** Seed of lora_A's uniform draw. */
  seed?: number;
  /** base_model_name_or_path in the config. */
  baseName?: string;
}

export function initLora(base: LlamaConfig, o: LoraInit = {}): PeftAdapter {
  const rank = o.rank ?? 8;
  const layers = base.num_hidden_layers;
  if (!(Number.isInteger(rank) && rank >= 1))
    throw new InvalidInputError('lora', 'rank', `must be an integer >= 1, got ${rank}`);
  if (
    o.lastLayers !== undefined &&
    !(Number.isInteger(o.lastLayers) && o.lastLayers >= 1 && o.lastLayers <= layers)
  )
    throw new InvalidInputError(
      'lora',
      'lastLayers',
      `must be an integer in [1, ${layers}], got ${o.lastLayers}`,
    );
  const json = {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: o.baseName ?? null,
    bias: 'none',
    corda_config: null,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform:
      o.lastLayers === undefined
        ? null
        : Array.from({ length: o.lastLayers }, (_, i) => layers - o.lastLayers! + i),
    loftq_config: {},
    lora_alpha: o.alpha ?? 2 * rank,
    lora_bias: false,
    lora_dropout: 0.0,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: rank,
    rank_pattern: {},
    revision: null,
    target_modules: o.targets === 'all-linear' ? 'all-linear' : [...(o.targets ?? ['q_proj', 'v_proj'])],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
  };
  const config = parsePeftConfig(json, 'lora config') as LoraConfig;
  const random = seededRandom(o.seed ?? 0);
  const tensors: [string, SafetensorsEntry][] = [];
  const dims = new Map(linearModules(base).map((m) => [m.module, m]));
  for (const module of matchTargets(config, base, 'lora config')) {
    const m = dims.get(module);
    if (!m)
      throw new InvalidInputError(
        'lora',
        'targets',
        `${module} is not a linear layer; LoRA on it cannot be trained here`,
      );
    const r = loraRank(config, module);
    const bound = 1 / Math.sqrt(m.in);
    const a = Float32Array.from({ length: r * m.in }, () => (2 * random() - 1) * bound);
    const p = `base_model.model.${module}`;
    tensors.push([`${p}.lora_A.weight`, float32Entry(a, [r, m.in])]);
    tensors.push([`${p}.lora_B.weight`, float32Entry(new Float32Array(m.out * r), [m.out, r])]);
  }
  return createPeftAdapter(config, tensors, { format: 'pt' }, 'personal');
}
