/**
 * The demo's adapters, made at build time as real Hugging Face PEFT files against the default model:
 * two prompt-tuning adapters initialized from a text (PEFT's `prompt_tuning_init="TEXT"`), served as
 * PEFT folders, and one seeded LoRA (r 4 on q_proj and v_proj), served as a zip bundle.
 */
import type { Runtime } from '../src/runtime.js';
import { createPeftAdapter, serializePeftAdapter } from '../src/formats/peft-adapter.js';
import { parsePeftConfig } from '../src/formats/peft-config.js';
import { float32Entry, type SafetensorsEntry } from '../src/formats/safetensors.js';
import { fillNormal } from '../src/formats/synth.js';
import { linearModules } from '../src/methods/targets.js';
import type { BundleFormat } from '../src/store/manifest.js';
import { promptTuningFromText } from '../models/prompt-adapter.js';

export interface DemoAdapter {
  id: string;
  method: string;
  description: string;
  format: BundleFormat;
  /** adapter_config.json and adapter_model.safetensors. */
  files: Map<string, Uint8Array>;
}

/** A LoRA with seeded random weights, small enough to keep the text readable: it changes the story. */
function seededLora(rt: Runtime, baseName: string, seed: number) {
  const r = 4;
  const targets = ['q_proj', 'v_proj'];
  const config = parsePeftConfig({
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: baseName,
    r,
    lora_alpha: 8,
    target_modules: targets,
    lora_dropout: 0,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
  });
  const tensors: [string, SafetensorsEntry][] = [];
  for (const m of linearModules(rt.model.config)) {
    if (!targets.some((t) => m.module.endsWith(`.${t}`))) continue;
    for (const [name, shape, std] of [
      ['lora_A', [r, m.in], 1 / Math.sqrt(m.in)],
      ['lora_B', [m.out, r], 0.05],
    ] as const) {
      const data = new Float32Array(shape[0] * shape[1]);
      fillNormal(data, seed + tensors.length, 0, std);
      tensors.push([`base_model.model.${m.module}.${name}.weight`, float32Entry(data, [...shape])]);
    }
  }
  return createPeftAdapter(config, tensors);
}

/** The demo's adapters for the model loaded in `rt` (named `baseName` in their configs). */
export function demoAdapters(rt: Runtime, baseName: string): DemoAdapter[] {
  return [
    {
      id: 'beach',
      method: 'PROMPT_TUNING',
      description: 'Prompt tuning from the text "Tom and his dog Max went to the beach."',
      format: 'peft-folder',
      files: serializePeftAdapter(
        promptTuningFromText(rt, 'Tom and his dog Max went to the beach.', baseName),
      ),
    },
    {
      id: 'sun',
      method: 'PROMPT_TUNING',
      description: 'Prompt tuning from the text "The sun was hot. The sea was blue."',
      format: 'peft-folder',
      files: serializePeftAdapter(promptTuningFromText(rt, 'The sun was hot. The sea was blue.', baseName)),
    },
    {
      id: 'noisy-lora',
      method: 'LORA',
      description: 'A LoRA with seeded random weights (r 4 on q_proj and v_proj): it changes the story.',
      format: 'zip',
      files: serializePeftAdapter(seededLora(rt, baseName, 11)),
    },
  ];
}
