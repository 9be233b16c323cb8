/** The adapter methods by PEFT peft_type: adding a method is its file, its test and one line here. */
import type { PeftType } from '../formats/peft-config.js';
import { adalora } from './adalora.js';
import type { AdapterMethod } from './feeds.js';
import { ia3 } from './ia3.js';
import { lora } from './lora.js';
import { pTuning } from './p-tuning.js';
import { prefixTuning } from './prefix-tuning.js';
import { promptTuning } from './prompt-tuning.js';

export const METHODS: ReadonlyMap<PeftType, AdapterMethod> = new Map(
  [lora, adalora, ia3, promptTuning, pTuning, prefixTuning].map((m) => [m.peftType, m]),
);
