/**
 * PEFT X-LoRA files for the stories260K-shaped Llama over three LoRA experts named e0, e1, e2 (each
 * targeting some of the 35 linear modules of its 5 layers): adapter_config.json as XLoraConfig saves
 * it, and the classifier's weights (seeded) under PEFT's `internal_xlora_classifier` names.
 */
import { float32Entry, serializeSafetensors, type SafetensorsEntry } from '../../src/formats/safetensors.js';
import { fillNormal } from '../../src/formats/synth.js';
import type { XLoraAdapter, XLoraClassifier } from '../../src/mixtures/xlora.js';
import { STORIES_CONFIG } from './peft-fixtures.js';

const d = STORIES_CONFIG.hidden_size;
/** Modules the experts target together: 7 per layer, 5 layers. */
const MODULES = 35;

export function xloraFiles(
  o: { depth: number; layerwise?: boolean; relu?: boolean; extra?: Record<string, unknown> },
  seed = 1,
) {
  const E = 3;
  const tensors: [string, SafetensorsEntry][] = [];
  const values = new Map<string, Float32Array>();
  let s = seed;
  const put = (name: string, shape: number[], std: number) => {
    const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
    fillNormal(a, s++, 0, std);
    values.set(name, a);
    tensors.push([`base_model.model.internal_xlora_classifier.${name}`, float32Entry(a, shape)]);
  };
  const size = 16;
  const outputs = o.layerwise ? MODULES * E : E;
  let width = d;
  const layers: XLoraClassifier['layers'] = [];
  for (let i = 0; i < o.depth - 1; i++) {
    const index = o.relu ? 3 * i : i; // ReLU and Dropout take module indices in nn.ModuleList
    put(`inner.${index}.weight`, [size, width], 0.5);
    put(`inner.${index}.bias`, [size], 0.1);
    layers.push({
      w: values.get(`inner.${index}.weight`)!,
      b: values.get(`inner.${index}.bias`),
      in: width,
      out: size,
    });
    width = size;
  }
  put('last.weight', [outputs, width], 0.5);
  put('last.bias', [outputs], 0.1);
  layers.push({ w: values.get('last.weight')!, b: values.get('last.bias'), in: width, out: outputs });
  const config = {
    peft_type: 'XLORA',
    task_type: 'CAUSAL_LM',
    hidden_size: d,
    adapters: { e0: './e0', e1: './e1', e2: './e2' },
    enable_softmax: true,
    enable_softmax_topk: false,
    layerwise_scalings: o.layerwise ?? false,
    xlora_depth: o.depth,
    xlora_size: size,
    enable_relu_and_dropout: o.relu ?? false,
    use_bias: true,
    xlora_dropout_p: 0.2,
    use_trainable_adapters: false,
    softmax_temperature: 1.0,
    top_k_lora: null,
    scaling_pass_value: 0.0,
    global_scaling_weight: 1.0,
    ...o.extra,
  };
  /** What the files mean, built here from the same numbers, not read back by the project's parser: the oracle's input. */
  const oracle: XLoraAdapter = {
    label: 'oracle',
    config: {
      hidden_size: d,
      adapters: config.adapters,
      enable_softmax: config.enable_softmax as boolean,
      layerwise_scalings: config.layerwise_scalings as boolean,
      xlora_depth: config.xlora_depth as number,
      enable_relu_and_dropout: config.enable_relu_and_dropout as boolean,
      softmax_temperature: config.softmax_temperature as number,
      top_k_lora: config.top_k_lora as number | null,
      scaling_pass_value: config.scaling_pass_value as number,
      global_scaling_weight: config.global_scaling_weight as number,
    },
    classifier: { layers, relu: config.enable_relu_and_dropout as boolean },
  };
  return { config, weights: serializeSafetensors(tensors, { format: 'pt' }), oracle };
}
