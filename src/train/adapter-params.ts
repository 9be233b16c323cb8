/**
 * The trainable parameters of an adapter are its PEFT tensors (lora_A [r, in], lora_B [out, r],
 * ia3_l, prompt_embeddings), in float32: what PEFT's optimizer steps and what export writes. The
 * training graph computes gradients of the slot inputs it is fed (methods/ turns the tensors into
 * those feeds); this file takes them back to the tensors, the transpose of each method's feed:
 *
 *   LoRA     a = lora_Aᵀ, b = s · lora_Bᵀ    ->  ∂L/∂lora_A = (∂L/∂a)ᵀ,   ∂L/∂lora_B = s · (∂L/∂b)ᵀ
 *   IA3      scale_in or scale_out = ia3_l    ->  ∂L/∂ia3_l = ∂L/∂scale
 *   prompt   rows of prompt_embeddings        ->  the first P rows of ∂L/∂prompt_embeddings
 *   prefix   prompt_embeddings as the past keys / values of every layer (methods/prefix-tuning.ts)
 *            ->  ∂L/∂past_key_values summed over the batch, put back in prompt_embeddings' columns
 *
 * each read from its module's block of the packed slot inputs (../graph/adapter-slots.ts).
 */
import { InvalidInputError } from '../errors.js';
import type { LlamaConfig } from '../formats/checkpoint.js';
import {
  adapterTensor,
  createPeftAdapter,
  ia3Modules,
  loraModules,
  promptLearningDims,
  type PeftAdapter,
} from '../formats/peft-adapter.js';
import { isPromptLearning, type PeftConfig } from '../formats/peft-config.js';
import { float32Entry } from '../formats/safetensors.js';
import type { SlotGroup, SlotLayout } from '../graph/adapter-slots.js';
import { loraScaling } from '../methods/targets.js';

export type Params = Map<string, Float32Array>;

/** The adapter's tensors as float32 copies, in file order. */
export function paramsOf(adapter: PeftAdapter): Params {
  return new Map([...adapter.tensors.keys()].map((name) => [name, adapterTensor(adapter, name).slice()]));
}

/** An adapter with `params` as its tensors (float32, the shapes of `like`), validated as a loaded one. */
export function adapterWith(like: PeftAdapter, params: Params, label = like.label): PeftAdapter {
  const entries = [...like.tensors].map(([name, t]) => {
    const p = params.get(name);
    if (!p) throw new InvalidInputError('params', name, 'missing');
    return [name, float32Entry(p, t.shape)] as [string, ReturnType<typeof float32Entry>];
  });
  return createPeftAdapter(like.config, entries, like.metadata, label);
}

/** Which adapters can be trained, and why not the others. */
export function checkTrainable(config: PeftConfig, label = 'adapter'): void {
  const file = `${label}/adapter_config.json`;
  if (config.peft_type === 'LORA' && config.use_dora)
    throw new InvalidInputError(file, 'use_dora', 'training DoRA adapters is not supported yet; train LoRA');
  if (config.peft_type === 'ADALORA')
    throw new InvalidInputError(
      file,
      'peft_type',
      'training ADALORA is not supported; train LORA, IA3, PROMPT_TUNING or PREFIX_TUNING',
    );
}

/**
 * The gradient of every tensor of `adapter` from the slot-input gradients of one training run
 * (float32 from the runtime's graphs, float64 from a test's), in float64.
 */
export function tensorGradients(
  adapter: PeftAdapter,
  layout: SlotLayout,
  slotGrads: ReadonlyMap<string, Float32Array | Float64Array>,
  base: LlamaConfig,
): Map<string, Float64Array> {
  checkTrainable(adapter.config, adapter.label);
  const out = new Map<string, Float64Array>();
  const place = new Map<string, { group: SlotGroup; k: number }>();
  for (const group of layout.groups) group.modules.forEach((m, k) => place.set(m, { group, k }));
  const where = (module: string) => {
    const p = place.get(module);
    if (!p) throw new InvalidInputError('training graph', module, 'no slot for this module of the adapter');
    return p;
  };
  const grad = (input: string | undefined, module: string) => {
    const g = input === undefined ? undefined : slotGrads.get(input);
    if (!g)
      throw new InvalidInputError(
        'training graph',
        module,
        `no gradient for the slot input ${input ?? '(none)'}`,
      );
    return g;
  };
  const config = adapter.config;
  if (config.peft_type === 'LORA') {
    for (const [module, t] of loraModules(adapter)) {
      const { group, k } = where(module);
      const gA = grad(group.a, module);
      const gB = grad(group.b, module);
      const rank = gA.length / (group.modules.length * group.in); // the packed rank (>= t.rank)
      const s = loraScaling(config, module);
      const dA = new Float64Array(t.rank * t.in);
      for (let j = 0; j < t.rank; j++)
        for (let i = 0; i < t.in; i++) dA[j * t.in + i] = gA[(k * t.in + i) * rank + j];
      const dB = new Float64Array(t.out * t.rank);
      for (let o = 0; o < t.out; o++)
        for (let j = 0; j < t.rank; j++) dB[o * t.rank + j] = s * gB[(k * rank + j) * t.out + o];
      out.set(t.a, dA);
      out.set(t.b, dB);
    }
  } else if (config.peft_type === 'IA3') {
    for (const [module, t] of ia3Modules(adapter)) {
      const { group, k } = where(module);
      const g = grad(t.feedforward ? group.scaleIn : group.scaleOut, module);
      out.set(t.tensor, Float64Array.from(g.subarray(k * t.features, (k + 1) * t.features)));
    }
  } else if (config.peft_type === 'PREFIX_TUNING') {
    const { rows: p, cols, tokenDim: d, numLayers } = promptLearningDims(config, base);
    const heads = base.num_key_value_heads;
    const hd = d / heads;
    const g = new Float64Array(p * cols);
    for (let l = 0; l < numLayers; l++) {
      for (const [k, kind] of [
        [0, 'key'],
        [1, 'value'],
      ] as const) {
        const past = grad(`past_key_values.${l}.${kind}`, 'prompt_embeddings'); // [batch, heads, p, hd]
        const batch = past.length / (heads * p * hd);
        for (let b = 0; b < batch; b++)
          for (let h = 0; h < heads; h++)
            for (let t = 0; t < p; t++)
              for (let j = 0; j < hd; j++)
                g[t * cols + (2 * l + k) * d + h * hd + j] += past[((b * heads + h) * p + t) * hd + j];
      }
    }
    out.set('prompt_embeddings', g);
  } else if (isPromptLearning(config)) {
    const { rows, cols } = promptLearningDims(config, base);
    if (!layout.prompt) throw new InvalidInputError('training graph', 'prompt_embeddings', 'no prompt slot');
    out.set(
      'prompt_embeddings',
      Float64Array.from(grad(layout.prompt.input, 'prompt_embeddings').subarray(0, rows * cols)),
    );
  }
  return out;
}
