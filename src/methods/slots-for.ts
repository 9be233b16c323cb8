/**
 * The adapter slots a set of adapters needs, so that an app which declares its adapters up front
 * (a manifest, a fixed set of task adapters) loads a graph with nothing else: every slot costs decode
 * time whether an adapter uses it or not (README, "Decode overhead of adapters").
 *
 *   LoRA, AdaLoRA   a LoRA branch on each targeted module; DoRA also a scale_out there
 *   IA3             scale_in on its feedforward modules, scale_out on the others; no branch
 *   prompt tuning, P-tuning   the prompt-embedding slot
 *   prefix tuning   nothing (its keys and values start the KV cache)
 *
 * The modules are PEFT's own choice for each config on this base (./targets.ts).
 */
import type { LlamaConfig } from '../formats/checkpoint.js';
import type { PeftConfig } from '../formats/peft-config.js';
import type { SlotOptions } from '../graph/adapter-slots.js';
import { isFeedforward, matchTargets } from './targets.js';

export function slotsFor(configs: readonly PeftConfig[], base: LlamaConfig): SlotOptions {
  const modules = new Set<string>();
  const outputScales = new Set<string>();
  const inputScales = new Set<string>();
  let prompt = false;
  for (const config of configs) {
    if (config.peft_type === 'PROMPT_TUNING' || config.peft_type === 'P_TUNING') prompt = true;
    if (config.peft_type !== 'LORA' && config.peft_type !== 'ADALORA' && config.peft_type !== 'IA3') continue;
    for (const module of matchTargets(config, base)) {
      if (module === 'model.embed_tokens') continue; // not a linear slot; activation names the problem
      modules.add(module);
      if (config.peft_type === 'IA3') {
        (isFeedforward(config, module) ? inputScales : outputScales).add(module);
      } else if (config.peft_type === 'LORA' && config.use_dora) {
        outputScales.add(module);
      }
    }
  }
  return { modules: [...modules], outputScales: [...outputScales], inputScales: [...inputScales], prompt };
}
