/**
 * The float64 oracle with Hugging Face PEFT semantics: the reference forward pass of ./llama.ts with
 * PEFT adapters applied as PEFT applies them at inference (`model.eval()`: no dropout). It reads the
 * files users bring (src/formats/peft-adapter.ts) and which modules PEFT wraps and with what scaling
 * (src/methods/targets.ts); it shares nothing else with the ONNX path.
 *
 * The math of each method is one function below, citing the PEFT code it follows:
 *   LoRA     y = W x + s · B A x                    s = lora_alpha / r  (/ sqrt(r) with use_rslora)
 *   DoRA     y = g ⊙ (W x + s · B A x)              g = magnitude / ||W + s · B A||, one per output row
 *   AdaLoRA  y = W x + s · B (A ⊙ E) x              s = lora_alpha / (init_r + 1e-5)
 *   IA3      y = W (x ⊙ l) on feedforward modules, (W x) ⊙ l on the others
 *   prompt tuning, P-tuning: the saved prompt_embeddings [P, hidden] go first, as P virtual tokens
 *   prefix tuning: the saved prompt_embeddings are P keys and values per layer, put in the cache
 *
 * Positions, as PEFT (peft_model.py PeftModelForCausalLM.forward / prepare_inputs_for_generation
 * drop any position_ids) and transformers (LlamaModel.forward: cache_position = arange(past, past + n),
 * position_ids = cache_position) give them: the P virtual tokens are at positions 0..P-1 and the real
 * tokens follow at P, P+1, ... For prefix tuning the P cached keys are used as saved (no rotation)
 * and the real tokens also start at P. A session therefore starts with P entries in its cache (see
 * `numVirtualTokens`), and `forward` / `step` return the logits of the real tokens only: what
 * PEFT's forward returns after its first P rows (prompt tuning) or all of it (prefix tuning).
 *
 * Several active adapters run as PEFT runs the active adapters of a layer (lora/layer.py
 * Linear.forward: one after the other on the running result), each with its scaling multiplied by
 * its blend weight (LoraLayer.scale_layer / set_scale, which diffusers' set_adapters(weights) uses).
 * For LoRA and AdaLoRA that is Σ w_i s_i B_i A_i x, what add_weighted_adapter(combination_type="cat")
 * builds (it concatenates w_i s_i A_i and B_i and sets the new scaling to 1). For DoRA,
 * add_weighted_adapter keeps no trained magnitude (PEFT issue #3761), so the oracle follows the
 * multi-adapter forward instead: y ← g_i ⊙ (y + w_i s_i B_i A_i x), in the given order, g_i taken
 * against the unmerged base weight (PEFT's forward, and its merge since PR #3609). Note that a DoRA
 * adapter with weight 0 still applies magnitude / ||W||. IA3 adapters blend as
 * IA3Model.add_weighted_adapter does: l = Σ w_i l_i. IA3 cannot join LoRA or AdaLoRA (PEFT's
 * PeftMixedModel mixes only LoRA, LoHa, LoKr, AdaLoRA, OFT). One prompt-learning adapter may join
 * the others: its virtual tokens run through the adapted model; its prefix keys and values stay as saved.
 */
import { IncompatibleAdapterError, InvalidInputError } from '../errors.js';
import type { Checkpoint, Float32Tensor, LlamaConfig } from '../formats/checkpoint.js';
import {
  type LoraModuleTensors,
  type PeftAdapter,
  adapterTensor,
  checkAdapterAgainstBase,
  ia3Modules,
  loraModules,
  promptLearningDims,
  savedBaseWeights,
} from '../formats/peft-adapter.js';
import { type PromptLearningConfig, isPromptLearning } from '../formats/peft-config.js';
import { loraScaling } from '../methods/targets.js';
import { ReferenceSession } from './llama.js';

/** An adapter to apply, with its blend weight (default 1). */
export interface ActiveAdapter {
  adapter: PeftAdapter;
  weight?: number;
}

/** The logits of every real token (not of the virtual ones) with the adapters applied. */
export function referenceLogitsWithAdapters(
  ckpt: Checkpoint,
  adapters: readonly ActiveAdapter[],
  tokens: readonly number[],
): Float64Array[] {
  return new PeftReferenceSession(ckpt, adapters).forward(tokens);
}

/** A low-rank branch on one module: y ← y + s · B (A x), and for DoRA y ← g ⊙ (y + s · B (A x)). */
export interface LowRank {
  /** [r, in], row-major (AdaLoRA: A ⊙ E). */
  a: Float64Array;
  /** [out, r], row-major. */
  b: Float64Array;
  r: number;
  scaling: number;
  /** DoRA: magnitude / ||W + s · B A|| per output row. */
  dora?: Float64Array;
}

/** What the active adapters do to one linear module. */
interface ModuleAdapters {
  branches: LowRank[];
  /** IA3 on a feedforward module: scales the input. */
  ia3Input?: Float64Array;
  /** IA3 on another module: scales the output. */
  ia3Output?: Float64Array;
}

/**
 * The reference forward pass with PEFT adapters. `forward(tokens)` and `step(token)` append real
 * tokens after those already fed (the virtual tokens first) and return their logits.
 */
export class PeftReferenceSession extends ReferenceSession {
  /** Virtual tokens (prompt tuning, P-tuning, prefix tuning) at the start of the cache. */
  readonly numVirtualTokens: number;
  private readonly modules = new Map<string, ModuleAdapters>();
  /** LoRA on model.embed_tokens: a [r, vocab], b [hidden, r]. */
  private readonly embedding: LowRank[] = [];

  constructor(ckpt: Checkpoint, adapters: readonly ActiveAdapter[]) {
    super(checkedBase(ckpt, adapters));
    adapters.forEach(({ adapter, weight = 1 }) => {
      const type = adapter.config.peft_type;
      if (type === 'LORA' || type === 'ADALORA') {
        for (const [module, t] of loraModules(adapter)) {
          if (t.kind === 'embedding') this.embedding.push(lowRank(adapter, t, weight));
          else this.module(module).branches.push(lowRank(adapter, t, weight, this.weight(module)));
        }
      } else if (type === 'IA3') {
        for (const [module, t] of ia3Modules(adapter)) {
          const m = this.module(module);
          const sum = t.feedforward
            ? (m.ia3Input ??= zeros(t.features))
            : (m.ia3Output ??= zeros(t.features));
          if (m.ia3Input !== undefined && m.ia3Output !== undefined)
            throw new IncompatibleAdapterError(
              `${adapter.label}/adapter_config.json`,
              'feedforward_modules',
              `IA3 scales the input of ${module} in one adapter and its output in another: they cannot be blended`,
            );
          addScaled(sum, adapterTensor(adapter, t.tensor), weight); // IA3Model.add_weighted_adapter
        }
      }
    });

    // The virtual tokens go first: through the (adapted) model, or straight into the cache.
    const prompt = adapters.find((a) => isPromptLearning(a.adapter.config))?.adapter;
    if (prompt === undefined) {
      this.numVirtualTokens = 0;
    } else if (prompt.config.peft_type === 'PREFIX_TUNING') {
      const { keys, values } = prefixKeyValues(prompt, this.config);
      this.prefill(keys, values);
      this.numVirtualTokens = keys[0].length;
    } else {
      const rows = promptEmbeddings(prompt, this.config);
      this.forwardEmbeddings(rows);
      this.numVirtualTokens = rows.length;
    }
  }

  /** IA3 around the base linear, the low-rank branches in order on its output. */
  protected override linear(x: Float64Array, module: string): Float64Array {
    const m = this.modules.get(module);
    if (m === undefined) return super.linear(x, module);
    const { ia3Input, ia3Output } = m;
    const input = ia3Input === undefined ? x : x.map((v, i) => v * ia3Input[i]);
    let y = super.linear(input, module);
    for (const branch of m.branches) y = applyLowRank(y, input, branch);
    return ia3Output === undefined ? y : y.map((v, o) => v * ia3Output[o]);
  }

  /**
   * lora/layer.py Embedding.forward: result = embed(x) + (embed(x, lora_embedding_A.T) @
   * lora_embedding_B.T) * scaling, i.e. column `token` of A through B.
   */
  protected override embed(token: number): Float64Array {
    const e = super.embed(token);
    const vocab = this.config.vocab_size;
    for (const { a, b, r, scaling } of this.embedding) {
      for (let o = 0; o < e.length; o++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += b[o * r + k] * a[k * vocab + token];
        e[o] += scaling * s;
      }
    }
    return e;
  }

  private module(name: string): ModuleAdapters {
    let m = this.modules.get(name);
    if (m === undefined) this.modules.set(name, (m = { branches: [] }));
    return m;
  }
}

/**
 * One adapter's branch applied to the running output y of a module (x: the module's input):
 * lora/layer.py Linear.forward: result = result + lora_B(lora_A(dropout(x))) * scaling
 * (adalora/layer.py SVDLinear.forward the same with A ⊙ E); DoRA, lora/variants.py
 * DoraLinearVariant.forward with lora/dora.py DoraLinearLayer.forward in eval mode (base_result =
 * result, no bias): result + (g - 1) · result + g · scaling · B A x = g ⊙ (y + scaling · B A x).
 */
export function applyLowRank(
  y: Float64Array,
  x: Float64Array,
  { a, b, r, scaling, dora }: LowRank,
): Float64Array {
  const ax = new Float64Array(r);
  for (let k = 0; k < r; k++) {
    let s = 0;
    for (let i = 0; i < x.length; i++) s += a[k * x.length + i] * x[i];
    ax[k] = s;
  }
  return y.map((v, o) => {
    let bax = 0;
    for (let k = 0; k < r; k++) bax += b[o * r + k] * ax[k];
    const z = v + scaling * bax;
    return dora === undefined ? z : dora[o] * z;
  });
}

/**
 * The branch of one LoRA, DoRA or AdaLoRA module, its scaling times the blend weight.
 * LoRA (lora/layer.py LoraLayer.update_layer): A = lora_A [r, in], B = lora_B [out, r],
 * scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora, r and lora_alpha taken from
 * rank_pattern / alpha_pattern for this module (lora/model.py _create_and_replace). fan_in_fan_out
 * is ignored, as PEFT ignores it on torch.nn.Linear (lora/layer.py dispatch_default resets it).
 * DoRA (lora/dora.py DoraLinearLayer.get_weight_norm): weight_norm = ||W + scaling · B A|| along
 * dim 1 of the [out, in] weight, one norm per output row; forward: g = lora_magnitude_vector /
 * weight_norm (detached: a constant at inference).
 * AdaLoRA (adalora/layer.py SVDLinear.forward): (x @ (A * E).T @ B.T) * scaling / ranknum with
 * A = lora_A [r, in], E = lora_E [r, 1], B = lora_B [out, r], scaling = lora_alpha (the rank when
 * lora_alpha <= 0) and ranknum = init_r + 1e-5, init_r even for a pruned module: adalora/model.py
 * resize_modules_by_rank_pattern copies the old ranknum back ("the scaling is exactly as the
 * previous"). targets.ts loraScaling returns scaling / ranknum.
 */
export function lowRank(
  adapter: PeftAdapter,
  t: LoraModuleTensors,
  weight: number,
  w?: Float32Array,
): LowRank {
  const cfg = adapter.config;
  if (cfg.peft_type !== 'LORA' && cfg.peft_type !== 'ADALORA') throw new TypeError('not a LoRA adapter');
  const { rank: r, in: n, out } = t;
  const a = Float64Array.from(adapterTensor(adapter, t.a));
  const b = Float64Array.from(adapterTensor(adapter, t.b));
  if (t.e !== undefined) {
    const e = adapterTensor(adapter, t.e);
    for (let k = 0; k < r; k++) for (let i = 0; i < n; i++) a[k * n + i] *= e[k];
  }
  const scaling = weight * loraScaling(cfg, t.module);
  if (t.magnitude === undefined) return { a, b, r, scaling };
  if (w === undefined) throw new TypeError(`DoRA on ${t.module} needs its base weight`);
  const magnitude = adapterTensor(adapter, t.magnitude);
  const dora = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let ss = 0;
    for (let i = 0; i < n; i++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += b[o * r + k] * a[k * n + i];
      const v = w[o * n + i] + scaling * ba;
      ss += v * v;
    }
    dora[o] = magnitude[o] / Math.sqrt(ss);
  }
  return { a, b, r, scaling, dora };
}

/**
 * Prompt tuning and P-tuning: peft_model.py PeftModel.get_prompt, in inference mode, returns
 * prompt_encoder.embedding.weight, which holds the saved prompt_embeddings [P, hidden]
 * (utils/save_and_load.py get_peft_model_state_dict saves get_prompt_embedding_to_save: the prompt
 * encoder's output, so P-tuning's MLP / LSTM is already applied). PeftModelForCausalLM.forward then
 * feeds cat(prompts, embed_tokens(input_ids)) as inputs_embeds.
 */
function promptEmbeddings(adapter: PeftAdapter, base: LlamaConfig): Float64Array[] {
  const { rows, cols } = promptLearningDims(adapter.config as PromptLearningConfig, base);
  const e = adapterTensor(adapter, 'prompt_embeddings');
  return Array.from({ length: rows }, (_, p) => Float64Array.from(e.subarray(p * cols, (p + 1) * cols)));
}

/**
 * Prefix tuning: peft_model.py PeftModel.get_prompt views the saved prompt_embeddings
 * [P, num_layers * 2 * token_dim] as [batch, P, num_layers * 2, heads, token_dim / heads], permutes
 * it with [2, 0, 3, 1, 4] and splits it in pairs: layer l's key is slice 2l, its value slice 2l + 1,
 * each [batch, heads, P, head_dim]. utils/other.py _prepare_prompt_learning_config sets heads =
 * num_key_value_heads and token_dim = head_dim * num_key_value_heads for grouped-query models (PEFT
 * #1901). So the key of layer l, virtual token p is row p, columns [2l · D, (2l + 1) · D), its value
 * the next D, D = num_key_value_heads · head_dim, head after head: one cache entry as is.
 */
function prefixKeyValues(
  adapter: PeftAdapter,
  base: LlamaConfig,
): { keys: Float64Array[][]; values: Float64Array[][] } {
  const { rows, cols, tokenDim: d } = promptLearningDims(adapter.config as PromptLearningConfig, base);
  const e = adapterTensor(adapter, 'prompt_embeddings');
  const slice = (p: number, j: number) =>
    Float64Array.from(e.subarray(p * cols + j * d, p * cols + (j + 1) * d));
  const perLayer = (kv: 0 | 1) =>
    Array.from({ length: base.num_hidden_layers }, (_, l) =>
      Array.from({ length: rows }, (_, p) => slice(p, 2 * l + kv)),
    );
  return { keys: perLayer(0), values: perLayer(1) };
}

/**
 * Checks the adapters against the base and each other, and returns the base with the weights PEFT
 * saved alongside an adapter (embed_tokens / lm_head, when targeted or resized): PEFT's
 * load_state_dict(strict=False) copies them into the base layers. A tied lm_head is the embedding.
 */
function checkedBase(ckpt: Checkpoint, adapters: readonly ActiveAdapter[]): Checkpoint {
  checkCombination(adapters);
  for (const { adapter } of adapters) checkAdapterAgainstBase(adapter, ckpt.config);
  const saved = adapters.flatMap(({ adapter }) => savedBaseWeights(adapter).map((w) => ({ adapter, ...w })));
  if (saved.length === 0) return ckpt;
  const tensors = new Map<string, Float32Tensor>(ckpt.tensors);
  for (const { adapter, module, tensor } of saved) {
    const tied = module === 'lm_head' && ckpt.config.tie_word_embeddings;
    const name = tied ? 'model.embed_tokens.weight' : `${module}.weight`;
    const shape = adapter.tensors.get(tensor)?.shape ?? [];
    tensors.set(name, { shape: [...shape], data: adapterTensor(adapter, tensor) });
  }
  return { config: ckpt.config, tensors };
}

/** The combinations PEFT can run (module comment) and finite weights, or a typed error. */
function checkCombination(adapters: readonly ActiveAdapter[]): void {
  const types = adapters.map((a) => a.adapter.config.peft_type);
  const prompts = types.filter((t) => t === 'PROMPT_TUNING' || t === 'P_TUNING' || t === 'PREFIX_TUNING');
  if (prompts.length > 1)
    throw new IncompatibleAdapterError(
      'adapters',
      undefined,
      `${prompts.length} prompt-learning adapters: PEFT runs one at a time`,
    );
  if (types.includes('IA3') && (types.includes('LORA') || types.includes('ADALORA')))
    throw new IncompatibleAdapterError(
      'adapters',
      undefined,
      'IA3 cannot be combined with LoRA or AdaLoRA (PEFT mixes only LoRA, LoHa, LoKr, AdaLoRA and OFT)',
    );
  adapters.forEach(({ adapter, weight }, i) => {
    if (weight === undefined) return;
    if (!Number.isFinite(weight))
      throw new InvalidInputError(
        'adapters',
        `adapters[${i}].weight`,
        `must be a finite number, got ${weight}`,
      );
    if (isPromptLearning(adapter.config) && weight !== 1)
      throw new InvalidInputError(
        'adapters',
        `adapters[${i}].weight`,
        `${adapter.label} is ${adapter.config.peft_type}, which has no blend weight (got ${weight})`,
      );
  });
}

const zeros = (n: number) => new Float64Array(n);

function addScaled(sum: Float64Array, v: Float32Array, w: number): void {
  for (let i = 0; i < sum.length; i++) sum[i] += w * v[i];
}
