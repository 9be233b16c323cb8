/**
 * The data contract between methods/ and the engine: what an active set of adapters feeds to the
 * adapter slots of the patched base graph (src/graph/adapter-slots.ts). Plain typed arrays, no
 * onnxruntime: per linear module m
 *
 *   y = ((x ⊙ scaleIn) · Wᵀ) ⊙ scaleOut + (x · a) · b        a [in, rank], b [rank, out], row-major
 *
 * with LoRA scalings and blend weights already folded into `b`; virtual tokens (prompt tuning,
 * P-tuning) as rows of the prompt-embedding slot; a prefix (prefix tuning) as the start of the KV cache.
 */
import { ModelFormatError } from '../errors.js';
import type { Checkpoint, LlamaConfig } from '../formats/checkpoint.js';
import type { PeftAdapter } from '../formats/peft-adapter.js';
import type { PeftType } from '../formats/peft-config.js';

/** The slot inputs of one linear module. */
export interface ModuleFeed {
  rank: number;
  /** lora_A.{module}: [in, rank], row-major. */
  a: Float32Array;
  /** lora_B.{module}: [rank, out], row-major, scaling and blend weight included. */
  b: Float32Array;
  /** scale_in.{module}: [in]; absent = ones. */
  scaleIn?: Float32Array;
  /** scale_out.{module}: [out]; absent = ones. */
  scaleOut?: Float32Array;
}

export interface AdapterFeeds {
  /** Only the modules that differ from the base (an absent module runs the exact base: rank 0, ones). */
  modules: Map<string, ModuleFeed>;
  /** Prompt tuning / P-tuning: virtual token k (id vocab_size + k) is row k of `embeddings` [tokens, hidden]. */
  prompt?: { tokens: number; embeddings: Float32Array };
  /**
   * Prefix tuning: the first `tokens` entries of the KV cache, used as saved (no rotation); one
   * array per layer, each [num_key_value_heads, tokens, head_dim] row-major.
   */
  prefix?: { tokens: number; keys: Float32Array[]; values: Float32Array[] };
  /**
   * Token-level routing over experts (graph/expert-router.ts): every module's a / b hold `experts`
   * blocks of equal rank side by side, and `weights` the router R [in, experts] of each module
   * (row-major; an absent module's router is zeros). Needs a graph loaded with a router slot.
   */
  router?: {
    experts: number;
    topK: number;
    temperature: number;
    weights: Map<string, Float32Array>;
    /** 'given' router: every coefficient when none is fed for the call (default 1). */
    constant?: number;
  };
  /** UniPELT's gated parts (graph/unipelt-slots.ts); its LoRA branches are in `modules`. */
  unipelt?: UniPeltFeeds;
}

/** A gate [in + 1]: the weights, then the bias. */
export type GateFeed = Float32Array;

export interface UniPeltFeeds {
  /** The gate of each gated LoRA module (q_proj, v_proj). */
  loraGates: Map<string, GateFeed>;
  layers: {
    /** Keys and values [heads, P, head_dim] row-major. */
    prefix?: { length: number; keys: Float32Array; values: Float32Array; gate: GateFeed };
    /** down [hidden + 1, m], up [m + 1, hidden]: the last row of each is its bias. */
    bottleneck?: { size: number; down: Float32Array; up: Float32Array; gate: GateFeed };
  }[];
}

/** The base model as methods/ needs it: its config, and the weights DoRA and checks read. */
export interface BaseModel {
  config: LlamaConfig;
  /**
   * W [out, in] row-major, Hugging Face layout, of a linear module (`model.layers.0.self_attn.q_proj`,
   * ..., `lm_head`, the embedding table when tied); `model.embed_tokens` gives the embedding table
   * [vocab, hidden] (read only to compare a base weight PEFT saved with an adapter).
   */
  weight(module: string): Float32Array;
}

/** A BaseModel over an in-memory checkpoint. */
export function checkpointBase(ckpt: Checkpoint): BaseModel {
  return {
    config: ckpt.config,
    weight(module: string): Float32Array {
      const tied = module === 'lm_head' && ckpt.config.tie_word_embeddings;
      const name = tied ? 'model.embed_tokens.weight' : `${module}.weight`;
      const t = ckpt.tensors.get(name);
      if (t === undefined) throw new ModelFormatError('checkpoint', name, 'missing');
      return t.data;
    },
  };
}

/**
 * One adapter method, registered by its PEFT `peft_type` (src/methods/registry.ts), like PEFT's
 * tuners/<method>. `feeds` turns one adapter with its blend weight into slot feeds; it expects an
 * adapter already checked against the base (combine.ts adapterFeeds does that).
 */
export interface AdapterMethod {
  peftType: PeftType;
  /**
   * How the module feeds of several adapters meet on one module:
   * 'sequential': PEFT's multi-adapter forward, one adapter after the other on the running output,
   *   each feed read as y ← scaleOut ⊙ y + (x · a) · b (LoRA, DoRA, AdaLoRA);
   * 'sum': the scales add (IA3Model.add_weighted_adapter);
   * 'none': the method feeds no module (prompt learning).
   */
  blend: 'sequential' | 'sum' | 'none';
  feeds(adapter: PeftAdapter, weight: number, base: BaseModel): AdapterFeeds;
}

/** A TypeError for a method handed an adapter of another type (a programming error, not a file's). */
export function wrongType(adapter: PeftAdapter, expected: PeftType): TypeError {
  return new TypeError(`${adapter.label} is ${adapter.config.peft_type}, not ${expected}`);
}
