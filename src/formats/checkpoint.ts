/**
 * The in-memory form of a Llama-family base model, shared by every stage: converters produce it,
 * the graph builder and the float64 reference read it.
 *
 * Names and layouts are Hugging Face's (`LlamaForCausalLM.state_dict()`): linear weights are
 * `[out_features, in_features]`, RoPE is rotate-half, so PEFT adapters written for the HF model
 * apply unchanged.
 */

/** The fields of a Hugging Face `LlamaConfig` that change the computation. */
export interface LlamaConfig {
  architectures?: string[];
  model_type: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  /** Defaults to hidden_size / num_attention_heads. */
  head_dim?: number;
  vocab_size: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  tie_word_embeddings: boolean;
  hidden_act: string;
  bos_token_id?: number;
  eos_token_id?: number | number[];
  attention_bias?: boolean;
  mlp_bias?: boolean;
  torch_dtype?: string;
  rope_scaling?: null;
}

/** A float32 tensor in row-major order. */
export interface Float32Tensor {
  shape: number[];
  data: Float32Array;
}

export interface Checkpoint {
  config: LlamaConfig;
  /**
   * Hugging Face parameter names: `model.embed_tokens.weight`, `model.layers.{i}.input_layernorm.weight`,
   * `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `model.layers.{i}.post_attention_layernorm.weight`,
   * `model.layers.{i}.mlp.{gate,up,down}_proj.weight`, `model.norm.weight`, and `lm_head.weight`
   * unless `tie_word_embeddings`.
   */
  tensors: Map<string, Float32Tensor>;
}

export function headDim(config: LlamaConfig): number {
  return config.head_dim ?? config.hidden_size / config.num_attention_heads;
}

/** The expected shape of every parameter of a Llama model with this config, in state_dict order. */
export function expectedShapes(config: LlamaConfig): Map<string, number[]> {
  const d = config.hidden_size;
  const hd = headDim(config);
  const q = config.num_attention_heads * hd;
  const kv = config.num_key_value_heads * hd;
  const ff = config.intermediate_size;
  const shapes = new Map<string, number[]>();
  shapes.set('model.embed_tokens.weight', [config.vocab_size, d]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    shapes.set(`${p}.self_attn.q_proj.weight`, [q, d]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [kv, d]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [kv, d]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [d, q]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [ff, d]);
    shapes.set(`${p}.mlp.up_proj.weight`, [ff, d]);
    shapes.set(`${p}.mlp.down_proj.weight`, [d, ff]);
    shapes.set(`${p}.input_layernorm.weight`, [d]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [d]);
  }
  shapes.set('model.norm.weight', [d]);
  if (!config.tie_word_embeddings) shapes.set('lm_head.weight', [config.vocab_size, d]);
  return shapes;
}
