/**
 * The Llama-family decoder (Hugging Face `LlamaForCausalLM`, float32) as an ONNX graph with the
 * Hugging Face / optimum I/O layout:
 *
 *   inputs   input_ids        int64 [batch_size, sequence_length]
 *            attention_mask   int64 [batch_size, total_sequence_length]   (past + current; 0 = padding)
 *            position_ids     int64 [batch_size, sequence_length]         (absolute positions)
 *            past_key_values.{i}.key|value  float32 [batch_size, kv_heads, past_sequence_length, head_dim]
 *   outputs  logits           float32 [batch_size, sequence_length, vocab_size]
 *            present.{i}.key|value          float32 [batch_size, kv_heads, total_sequence_length, head_dim]
 *
 * `present` is `past` with the new positions appended; a past of length 0 is a prefill.
 * Query position s sits at absolute cache index past_sequence_length + s; it attends to the cache
 * indices j <= that index whose attention_mask is 1. Rotary positions come from `position_ids`
 * alone, so left padding works as in transformers (position_ids = cumsum(mask) - 1).
 *
 * Every linear layer is exactly one MatMul node named after its Hugging Face module, whose first
 * input is the activation and whose second input is an initializer holding W transposed, [in, out]:
 *
 *   /model/layers.{i}/self_attn/{q,k,v,o}_proj/MatMul   /model/layers.{i}/mlp/{gate,up,down}_proj/MatMul
 *   /lm_head/MatMul
 *
 * Their outputs are `{node name}_output_0` (e.g. `/model/layers.0/self_attn/q_proj/MatMul_output_0`),
 * except lm_head, whose output is the graph output `logits` (as in optimum exports). `linearNodes()`
 * lists them with their module names, for adapter patching.
 *
 * Profiles:
 * - 'standard': portable ai.onnx ops only (RMSNorm from Pow/ReduceMean/Sqrt/Div, RoPE from
 *   cos/sin tables gathered by position_ids, attention from MatMul/Softmax with an additive mask).
 *   GQA does not copy the cache: queries are grouped [batch, kv_heads, n_rep, seq, head_dim] and
 *   MatMul broadcasts each kv head over its n_rep query heads.
 * - 'contrib': onnxruntime contrib ops. SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization
 *   (residual adds fused into the norms), RotaryEmbedding (com.microsoft) on q and k with
 *   position_ids, and GroupQueryAttention (com.microsoft) without its own rotary.
 *
 *   Why not GroupQueryAttention's do_rotary: its kernel derives the rotary positions from seqlens_k
 *   (past = seqlens_k + 1 - sequence_length, position = past + s); the optional position_ids input
 *   is read as a single offset during a first prompt (position_ids[0] + s for every row). Either way a
 *   left-padded row gets the positions of the padded layout, not transformers' cumsum(mask) - 1, and
 *   seqlens_k = ReduceSum(attention_mask) - 1 (onnxruntime-genai's recipe) tells the kernel the row is
 *   right-padded, so with left padding it would attend to the pad keys and drop real ones. do_rotary
 *   also requires head_dim % 16 == 0 (stories260K has head_dim 8). So here seqlens_k is
 *   total_sequence_length - 1 for every row (every cache slot is a real slot), RotaryEmbedding applies
 *   the given position_ids, and the padding part of attention_mask reaches the kernel through
 *   GroupQueryAttention's attention_bias input. Both padding sides then behave as in 'standard'.
 *
 *   Limits (from the kernel): head_dim % 8 == 0; a step with sequence_length > 1 *and* a non-empty
 *   past (chunked prefill, speculative decoding) needs batch size 1. 'standard' has neither limit.
 */
import { ModelFormatError } from '../errors.js';
import {
  expectedShapes,
  headDim,
  type Checkpoint,
  type Float32Tensor,
  type LlamaConfig,
} from '../formats/checkpoint.js';
import type { ModelProto, NodeProto } from '../formats/onnx/onnx_pb.js';
import { FLOAT32_LOWEST, GraphBuilder, MS_DOMAIN } from './builder.js';
import { quantizeLinears, type GraphQuantizeOptions } from './quantized-linear.js';

export type DecoderProfile = 'standard' | 'contrib';

/**
 * The profile used when none is asked for. On onnxruntime-web wasm (bench/graph-profiles.ts,
 * SmolLM2-135M shape) both profiles decode at the same speed (decode is bound by reading the MatMul
 * weights), but GroupQueryAttention's prompt kernel is slow and grows quadratically: 'contrib'
 * prefills 128 tokens ~25% slower and 512 tokens 2-3x slower. 'standard' also runs on every
 * execution provider, so it is the default.
 */
export const DEFAULT_PROFILE: DecoderProfile = 'standard';

export interface DecoderOptions {
  profile?: DecoderProfile;
  /**
   * Quantized base linears (QLoRA): each linear's MatMul becomes MatMulNBits (int4), MatMulBnb4 (nf4)
   * or DequantizeLinear + MatMul (int8); see ./quantized-linear.ts.
   */
  quantize?: GraphQuantizeOptions;
  /**
   * 'inputs': every weight is a graph input of the same name instead of an initializer (the
   * embedding, the norms, each linear's `{module}.weight.T` [in, out]), for training all of them
   * (src/train/pretrain.ts); a tied lm_head is then the Transpose of the embedding input. Default
   * 'initializers'.
   */
  weights?: 'initializers' | 'inputs';
}

/** The weight inputs of a decoder built with `weights: 'inputs'`, each with its value in the checkpoint. */
export function weightInputs(ckpt: Checkpoint): { name: string; data: Float32Array; dims: number[] }[] {
  const c = ckpt.config;
  const out: { name: string; data: Float32Array; dims: number[] }[] = [];
  const t = (name: string) => ckpt.tensors.get(name) as Float32Tensor;
  for (const name of expectedShapes(c).keys()) {
    const w = t(name);
    if (name === 'model.embed_tokens.weight') {
      out.push({ name, data: w.data, dims: w.shape });
      continue;
    }
    if (w.shape.length === 1) out.push({ name, data: w.data, dims: w.shape });
    else out.push({ name: `${name}.T`, data: transpose(w), dims: [w.shape[1], w.shape[0]] });
  }
  return out;
}

/** Metadata key (`metadata_props`) that records the profile a graph was built with. */
export const PROFILE_METADATA_KEY = 'edge_adapters.profile';

const FILE = 'checkpoint';

export function buildLlamaDecoder(ckpt: Checkpoint, opts: DecoderOptions = {}): ModelProto {
  const profile = opts.profile ?? DEFAULT_PROFILE;
  const c = ckpt.config;
  validate(ckpt, profile);
  const hd = headDim(c);
  const nLayers = c.num_hidden_layers;
  const g = new GraphBuilder();
  g.meta(PROFILE_METADATA_KEY, profile);

  const ids = g.input('input_ids', 'int64', ['batch_size', 'sequence_length']);
  const mask = g.input('attention_mask', 'int64', ['batch_size', 'total_sequence_length']);
  const positions = g.input('position_ids', 'int64', ['batch_size', 'sequence_length']);
  const kvShape = (len: string) => ['batch_size', c.num_key_value_heads, len, hd];
  const past: { key: string; value: string }[] = [];
  for (let i = 0; i < nLayers; i++) {
    past.push({
      key: g.input(`past_key_values.${i}.key`, 'float32', kvShape('past_sequence_length')),
      value: g.input(`past_key_values.${i}.value`, 'float32', kvShape('past_sequence_length')),
    });
  }

  const weight = (name: string) => ckpt.tensors.get(name) as Float32Tensor;
  const asInputs = opts.weights === 'inputs';
  const param = (name: string, data: Float32Array, dims: number[]) =>
    asInputs ? g.input(name, 'float32', dims) : g.initializer(name, data, dims);
  const embed = weight('model.embed_tokens.weight');
  param('model.embed_tokens.weight', embed.data, embed.shape);
  let hidden = g.node('Gather', ['model.embed_tokens.weight', ids], {
    name: '/model/embed_tokens/Gather',
  })[0];

  const linear = (module: string, x: string, w: Float32Tensor, outputs?: string[]): string => {
    const dims = [w.shape[1], w.shape[0]];
    const wt =
      asInputs && module === 'lm_head' && c.tie_word_embeddings
        ? g.node('Transpose', ['model.embed_tokens.weight'], {
            name: '/lm_head/tied/Transpose',
            attrs: { perm: [1, 0] },
          })[0]
        : asInputs
          ? g.input(`${module}.weight.T`, 'float32', dims)
          : g.initializer(`${module}.weight.T`, transpose(w), dims);
    return g.node('MatMul', [x, wt], { name: linearNodeName(module), outputs })[0];
  };

  const bias = attentionBias(g, ids, mask);
  const ctx: LayerContext = { g, c, hd, positions, bias, linear, weight, param };
  const attention = profile === 'standard' ? matmulAttention(ctx) : gqaAttention(ctx);
  const norm = profile === 'standard' ? standardNorm(ctx) : contribNorm(ctx);

  // The residual stream is carried as (hidden, residual): the sum is formed by the next norm, so the
  // contrib profile can fuse it (SkipSimplifiedLayerNormalization).
  let residual: string | undefined;
  for (let i = 0; i < nLayers; i++) {
    const p = `/model/layers.${i}`;
    const n1 = norm(
      `${p}/input_layernorm`,
      `model.layers.${i}.input_layernorm.weight`,
      hidden,
      residual,
      `/model/layers.${i - 1}/Add_1`,
    );
    const attn = attention(i, n1.normed, past[i]);
    const n2 = norm(
      `${p}/post_attention_layernorm`,
      `model.layers.${i}.post_attention_layernorm.weight`,
      attn,
      n1.residual,
      `${p}/Add`,
    );
    hidden = mlp(ctx, i, n2.normed);
    residual = n2.residual;
  }
  const final = norm(
    '/model/norm',
    'model.norm.weight',
    hidden,
    residual,
    `/model/layers.${nLayers - 1}/Add_1`,
  );
  const head = c.tie_word_embeddings ? embed : weight('lm_head.weight');
  linear('lm_head', final.normed, head, ['logits']);

  g.output('logits', 'float32', ['batch_size', 'sequence_length', c.vocab_size]);
  for (let i = 0; i < nLayers; i++) {
    g.output(`present.${i}.key`, 'float32', kvShape('total_sequence_length'));
    g.output(`present.${i}.value`, 'float32', kvShape('total_sequence_length'));
  }
  // Quantized base: the float graph's linears rewritten in place (names stay discoverable).
  if (opts.quantize) return quantizeLinears(g.build(), opts.quantize).model;
  return g.build();
}

/** The MatMul node of a linear module: `model.layers.0.self_attn.q_proj` -> `/model/layers.0/self_attn/q_proj/MatMul`. */
export function linearNodeName(module: string): string {
  return `/${module.replace(/\.(?!\d)/g, '/')}/MatMul`;
}

/**
 * Every linear layer's node with its Hugging Face module name (`model.layers.0.self_attn.q_proj`):
 * a MatMul, or on a quantized base a MatMulNBits / MatMulBnb4 (named `/.../MatMulNBits`, ...) or the
 * MatMul after a DequantizeLinear. The node's first input is always the activation.
 */
export function linearNodes(model: ModelProto): { module: string; node: NodeProto }[] {
  // Quantized linears (./quantized-linear.ts) end in the op's own name.
  const pattern =
    /^\/(model\/layers\.\d+\/(?:self_attn|mlp)\/[a-z_]+_proj|lm_head)\/(MatMul|MatMulNBits|MatMulBnb4)$/;
  const out: { module: string; node: NodeProto }[] = [];
  for (const node of model.graph?.node ?? []) {
    const found = pattern.exec(node.name);
    const m = found && found[2] === node.opType ? found : null;
    if (m) out.push({ module: m[1].replaceAll('/', '.'), node });
  }
  return out;
}

interface LayerContext {
  g: GraphBuilder;
  c: LlamaConfig;
  hd: number;
  positions: string;
  /** Additive attention mask [batch, seq, total]: 0 where allowed, float32 lowest where not. */
  bias: string;
  linear: (module: string, x: string, w: Float32Tensor, outputs?: string[]) => string;
  weight: (name: string) => Float32Tensor;
  /** A weight as an initializer, or a graph input (`weights: 'inputs'`). */
  param: (name: string, data: Float32Array, dims: number[]) => string;
}

type Norm = (
  prefix: string,
  weightName: string,
  x: string,
  residual: string | undefined,
  addName: string,
) => { normed: string; residual: string };

type Attention = (layer: number, x: string, past: { key: string; value: string }) => string;

/**
 * RMSNorm(residual + x) in plain ops: x / sqrt(mean(x^2) + eps) * w, written as
 * Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul, the pattern onnxruntime's optimizer fuses into
 * SimplifiedLayerNormalization on the providers that have it.
 */
function standardNorm({ g, c, weight, param }: LayerContext): Norm {
  return (prefix, weightName, x, residual, addName) => {
    const sum = residual === undefined ? x : g.node('Add', [residual, x], { name: addName })[0];
    const w = param(weightName, weight(weightName).data, [c.hidden_size]);
    const [sq] = g.node('Pow', [sum, g.floats(2, [])], { name: `${prefix}/Pow` });
    const [mean] = g.node('ReduceMean', [sq], {
      name: `${prefix}/ReduceMean`,
      attrs: { axes: [-1], keepdims: 1 },
    });
    const [plusEps] = g.node('Add', [mean, g.floats(c.rms_norm_eps, [])], { name: `${prefix}/Add` });
    const [rms] = g.node('Sqrt', [plusEps], { name: `${prefix}/Sqrt` });
    const [scaled] = g.node('Div', [sum, rms], { name: `${prefix}/Div` });
    const [normed] = g.node('Mul', [scaled, w], { name: `${prefix}/Mul` });
    return { normed, residual: sum };
  };
}

/** SimplifiedLayerNormalization, or SkipSimplifiedLayerNormalization when a residual is pending. */
function contribNorm({ g, c, weight, param }: LayerContext): Norm {
  const epsilon = { float: c.rms_norm_eps };
  return (prefix, weightName, x, residual) => {
    const w = param(weightName, weight(weightName).data, [c.hidden_size]);
    if (residual === undefined) {
      const [normed] = g.node('SimplifiedLayerNormalization', [x, w], {
        name: `${prefix}/LayerNorm`,
        attrs: { axis: -1, epsilon, stash_type: 1 },
      });
      return { normed, residual: x };
    }
    const name = `${prefix}/SkipLayerNorm`;
    const [normed, , , sum] = g.node('SkipSimplifiedLayerNormalization', [x, residual, w], {
      name,
      domain: MS_DOMAIN,
      attrs: { epsilon },
      outputs: [`${name}_output_0`, '', '', `${name}_output_3`],
    });
    return { normed, residual: sum };
  };
}

/** down(silu(gate(x)) * up(x)). */
function mlp({ g, linear, weight }: LayerContext, i: number, x: string): string {
  const m = `model.layers.${i}.mlp`;
  const p = `/model/layers.${i}/mlp`;
  const gate = linear(`${m}.gate_proj`, x, weight(`${m}.gate_proj.weight`));
  const up = linear(`${m}.up_proj`, x, weight(`${m}.up_proj.weight`));
  const [sig] = g.node('Sigmoid', [gate], { name: `${p}/act_fn/Sigmoid` });
  const [silu] = g.node('Mul', [gate, sig], { name: `${p}/act_fn/Mul` });
  const [prod] = g.node('Mul', [silu, up], { name: `${p}/Mul` });
  return linear(`${m}.down_proj`, prod, weight(`${m}.down_proj.weight`));
}

/**
 * The additive mask [batch, seq, total] shared by every layer: query s (absolute index past + s)
 * may attend to key j when j <= past + s and attention_mask[b, j] == 1.
 */
function attentionBias(g: GraphBuilder, ids: string, mask: string): string {
  const p = '/model/attn_mask';
  const [maskShape] = g.node('Shape', [mask], { name: `${p}/Shape` });
  const [idsShape] = g.node('Shape', [ids], { name: `${p}/Shape_1` });
  const [total] = g.node('Gather', [maskShape, g.ints(1, [])], { name: `${p}/Gather`, attrs: { axis: 0 } });
  const [seq] = g.node('Gather', [idsShape, g.ints(1, [])], { name: `${p}/Gather_1`, attrs: { axis: 0 } });
  const [pastLen] = g.node('Sub', [total, seq], { name: `${p}/Sub` });
  const [keyIdx] = g.node('Range', [g.ints(0, []), total, g.ints(1, [])], { name: `${p}/Range` });
  const [queryIdx] = g.node('Range', [pastLen, total, g.ints(1, [])], { name: `${p}/Range_1` });
  const [queryCol] = g.node('Unsqueeze', [queryIdx, g.ints([1])], { name: `${p}/Unsqueeze` });
  const [causal] = g.node('LessOrEqual', [keyIdx, queryCol], { name: `${p}/LessOrEqual` });
  const [keep] = g.node('Cast', [mask], { name: `${p}/Cast`, attrs: { to: 9 /* BOOL */ } });
  const [keepRow] = g.node('Unsqueeze', [keep, g.ints([1])], { name: `${p}/Unsqueeze_1` });
  const [allowed] = g.node('And', [causal, keepRow], { name: `${p}/And` });
  return g.node('Where', [allowed, g.floats(0, []), g.floats(FLOAT32_LOWEST, [])], { name: `${p}/Where` })[0];
}

/** Attention from MatMul/Softmax, RoPE from tables: ai.onnx ops only. */
function matmulAttention(ctx: LayerContext): Attention {
  const { g, c, hd, linear, weight } = ctx;
  const nKv = c.num_key_value_heads;
  const nRep = c.num_attention_heads / nKv;
  const rope = tableRotary(ctx);
  const [bias5] = g.node('Unsqueeze', [ctx.bias, g.ints([1, 2])], { name: '/model/attn_mask/Unsqueeze_2' });
  const scale = g.floats(1 / Math.sqrt(hd), []);

  return (i, x, past) => {
    const m = `model.layers.${i}.self_attn`;
    const p = `/model/layers.${i}/self_attn`;
    const q = linear(`${m}.q_proj`, x, weight(`${m}.q_proj.weight`));
    const k = linear(`${m}.k_proj`, x, weight(`${m}.k_proj.weight`));
    const v = linear(`${m}.v_proj`, x, weight(`${m}.v_proj.weight`));

    // q: [b, s, kv, rep, hd] (rotated) -> [b, kv, rep, s, hd], scaled by 1/sqrt(hd).
    const q5 = rope(`${p}/q`, q, [0, 0, nKv, nRep, hd]);
    const [qT] = g.node('Transpose', [q5], { name: `${p}/q_Transpose`, attrs: { perm: [0, 2, 3, 1, 4] } });
    const [qS] = g.node('Mul', [qT, scale], { name: `${p}/q_Scale` });
    // k, v: [b, s, kv, hd] -> [b, kv, s, hd], appended to the cache.
    const k4 = rope(`${p}/k`, k, [0, 0, nKv, hd]);
    const [kT] = g.node('Transpose', [k4], { name: `${p}/k_Transpose`, attrs: { perm: [0, 2, 1, 3] } });
    const [v4] = g.node('Reshape', [v, g.ints([0, 0, nKv, hd])], { name: `${p}/v_Reshape` });
    const [vT] = g.node('Transpose', [v4], { name: `${p}/v_Transpose`, attrs: { perm: [0, 2, 1, 3] } });
    const [presentK] = g.node('Concat', [past.key, kT], {
      name: `${p}/k_Concat`,
      attrs: { axis: 2 },
      outputs: [`present.${i}.key`],
    });
    const [presentV] = g.node('Concat', [past.value, vT], {
      name: `${p}/v_Concat`,
      attrs: { axis: 2 },
      outputs: [`present.${i}.value`],
    });

    // scores [b, kv, rep, s, t] = q [b, kv, rep, s, hd] @ k^T [b, kv, 1, hd, t] (broadcast over rep).
    const [kCols] = g.node('Transpose', [presentK], {
      name: `${p}/k_Transpose_1`,
      attrs: { perm: [0, 1, 3, 2] },
    });
    const [kCols5] = g.node('Unsqueeze', [kCols, g.ints([2])], { name: `${p}/k_Unsqueeze` });
    const [scores] = g.node('MatMul', [qS, kCols5], { name: `${p}/MatMul` });
    const [masked] = g.node('Add', [scores, bias5], { name: `${p}/Add` });
    const [probs] = g.node('Softmax', [masked], { name: `${p}/Softmax`, attrs: { axis: -1 } });
    const [v5] = g.node('Unsqueeze', [presentV, g.ints([2])], { name: `${p}/v_Unsqueeze` });
    const [attn] = g.node('MatMul', [probs, v5], { name: `${p}/MatMul_1` });
    // [b, kv, rep, s, hd] -> [b, s, kv, rep, hd] -> [b, s, heads * hd]
    const [attnT] = g.node('Transpose', [attn], { name: `${p}/Transpose`, attrs: { perm: [0, 3, 1, 2, 4] } });
    const [merged] = g.node('Reshape', [attnT, g.ints([0, 0, c.num_attention_heads * hd])], {
      name: `${p}/Reshape`,
    });
    return linear(`${m}.o_proj`, merged, weight(`${m}.o_proj.weight`));
  };
}

/** Reshapes a projection [b, s, heads * hd] to `shape` ([b, s, kv, (rep,) hd]) with RoPE applied. */
type Rotary = (prefix: string, x: string, shape: number[]) => string;

/**
 * RoPE from tables [max_position_embeddings, head_dim] gathered by position_ids, in ai.onnx ops.
 * sin carries rotate_half's sign: rotate_half(x) * sin = concat(x2, x1) * [-sin, sin].
 */
function tableRotary({ g, c, hd, positions }: LayerContext): Rotary {
  const half = hd / 2;
  const { cos, sin } = ropeTables(c, hd);
  const cosFull = new Float32Array(c.max_position_embeddings * hd);
  const sinSigned = new Float32Array(c.max_position_embeddings * hd);
  for (let p = 0; p < c.max_position_embeddings; p++) {
    for (let k = 0; k < half; k++) {
      const cv = cos[p * half + k];
      const sv = sin[p * half + k];
      cosFull[p * hd + k] = cosFull[p * hd + half + k] = cv;
      sinSigned[p * hd + k] = -sv;
      sinSigned[p * hd + half + k] = sv;
    }
  }
  const r = '/model/rotary_emb';
  g.initializer(`${r}/cos`, cosFull, [c.max_position_embeddings, hd]);
  g.initializer(`${r}/sin_signed`, sinSigned, [c.max_position_embeddings, hd]);
  const [cosB] = g.node('Gather', [`${r}/cos`, positions], { name: `${r}/Gather` });
  const [sinB] = g.node('Gather', [`${r}/sin_signed`, positions], { name: `${r}/Gather_1` });
  // [batch, seq, 1, head_dim] for k, [batch, seq, 1, 1, head_dim] for the grouped q.
  const tables = new Map<number, [string, string]>();
  const tablesFor = (rank: number): [string, string] => {
    const axes = rank === 4 ? [2] : [2, 3];
    const known = tables.get(rank);
    if (known) return known;
    const [cosT] = g.node('Unsqueeze', [cosB, g.ints(axes)], { name: `${r}/Unsqueeze_${rank}d` });
    const [sinT] = g.node('Unsqueeze', [sinB, g.ints(axes)], { name: `${r}/Unsqueeze_${rank}d_1` });
    tables.set(rank, [cosT, sinT]);
    return [cosT, sinT];
  };
  return (prefix, x, shape) => {
    const [cosT, sinT] = tablesFor(shape.length);
    const [xs] = g.node('Reshape', [x, g.ints(shape)], { name: `${prefix}_Reshape` });
    const p = `${prefix}_rotary`;
    const axes = g.ints([-1]);
    const [x1] = g.node('Slice', [xs, g.ints([0]), g.ints([half]), axes], { name: `${p}/Slice` });
    const [x2] = g.node('Slice', [xs, g.ints([half]), g.ints([hd]), axes], { name: `${p}/Slice_1` });
    const [swapped] = g.node('Concat', [x2, x1], { name: `${p}/Concat`, attrs: { axis: -1 } });
    const [a] = g.node('Mul', [xs, cosT], { name: `${p}/Mul` });
    const [b] = g.node('Mul', [swapped, sinT], { name: `${p}/Mul_1` });
    return g.node('Add', [a, b], { name: `${p}/Add` })[0];
  };
}

/** com.microsoft RotaryEmbedding (rotate-half) of [b, s, heads * hd] at position_ids. */
function rotaryEmbedding({ g, c, hd, positions }: LayerContext): (prefix: string, x: string) => string {
  const { cos, sin } = ropeTables(c, hd);
  const r = '/model/rotary_emb';
  const cosCache = g.initializer(`${r}/cos_cache`, cos, [c.max_position_embeddings, hd / 2]);
  const sinCache = g.initializer(`${r}/sin_cache`, sin, [c.max_position_embeddings, hd / 2]);
  return (prefix, x) =>
    g.node('RotaryEmbedding', [x, positions, cosCache, sinCache], {
      name: `${prefix}_rotary/RotaryEmbedding`,
      domain: MS_DOMAIN,
      attrs: { interleaved: 0 },
    })[0];
}

/**
 * com.microsoft GroupQueryAttention on RotaryEmbedding'd q and k, padding through attention_bias
 * (see the file header for why not its own rotary or seqlens_k = ReduceSum(attention_mask) - 1).
 */
function gqaAttention(ctx: LayerContext): Attention {
  const { g, c, linear, weight } = ctx;
  const rotate = rotaryEmbedding(ctx);

  // seqlens_k = total_sequence_length - 1 for every row (all cache slots are real; padding goes
  // through attention_bias), total_sequence_length as an int32 scalar.
  const a = '/model/attn_mask';
  const [maskShape] = g.node('Shape', ['attention_mask'], { name: `${a}/gqa/Shape` });
  const [total] = g.node('Gather', [maskShape, g.ints(1, [])], {
    name: `${a}/gqa/Gather`,
    attrs: { axis: 0 },
  });
  const [batch] = g.node('Slice', [maskShape, g.ints([0]), g.ints([1])], { name: `${a}/gqa/Slice` });
  const [last] = g.node('Sub', [total, g.ints(1, [])], { name: `${a}/gqa/Sub` });
  const [lastRows] = g.node('Expand', [last, batch], { name: `${a}/gqa/Expand` });
  const [seqlensK] = g.node('Cast', [lastRows], { name: `${a}/gqa/seqlens_k`, attrs: { to: 6 /* INT32 */ } });
  const [totalLen] = g.node('Cast', [total], {
    name: `${a}/gqa/total_seq_len`,
    attrs: { to: 6 /* INT32 */ },
  });
  const [bias4] = g.node('Unsqueeze', [ctx.bias, g.ints([1])], { name: `${a}/Unsqueeze_2` });

  return (i, x, past) => {
    const m = `model.layers.${i}.self_attn`;
    const p = `/model/layers.${i}/self_attn`;
    const q = rotate(`${p}/q`, linear(`${m}.q_proj`, x, weight(`${m}.q_proj.weight`)));
    const k = rotate(`${p}/k`, linear(`${m}.k_proj`, x, weight(`${m}.k_proj.weight`)));
    const v = linear(`${m}.v_proj`, x, weight(`${m}.v_proj.weight`));
    const name = `${p}/GroupQueryAttention`;
    const [attn] = g.node(
      'GroupQueryAttention',
      [q, k, v, past.key, past.value, seqlensK, totalLen, '', '', '', bias4],
      {
        name,
        domain: MS_DOMAIN,
        attrs: { num_heads: c.num_attention_heads, kv_num_heads: c.num_key_value_heads },
        outputs: [`${name}_output_0`, `present.${i}.key`, `present.${i}.value`],
      },
    );
    return linear(`${m}.o_proj`, attn, weight(`${m}.o_proj.weight`));
  };
}

/**
 * cos/sin of position * inv_freq, [max_position_embeddings, head_dim / 2], computed in float64
 * (transformers computes them in float32; float64 is closer to the float64 reference).
 */
function ropeTables(c: LlamaConfig, hd: number): { cos: Float32Array; sin: Float32Array } {
  const half = hd / 2;
  const cos = new Float32Array(c.max_position_embeddings * half);
  const sin = new Float32Array(c.max_position_embeddings * half);
  for (let k = 0; k < half; k++) {
    const invFreq = 1 / Math.pow(c.rope_theta, (2 * k) / hd);
    for (let p = 0; p < c.max_position_embeddings; p++) {
      cos[p * half + k] = Math.cos(p * invFreq);
      sin[p * half + k] = Math.sin(p * invFreq);
    }
  }
  return { cos, sin };
}

/** W [out, in] -> W^T [in, out], blocked for cache locality (the big matrices are 49152 x 576). */
function transpose(w: Float32Tensor): Float32Array {
  const [rows, cols] = w.shape;
  const src = w.data;
  const out = new Float32Array(rows * cols);
  const B = 32;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(r0 + B, rows);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(c0 + B, cols);
      for (let r = r0; r < r1; r++) {
        for (let col = c0; col < c1; col++) out[col * rows + r] = src[r * cols + col];
      }
    }
  }
  return out;
}

function validate(ckpt: Checkpoint, profile: DecoderProfile): void {
  const c = ckpt.config;
  const hd = headDim(c);
  if (c.hidden_act !== 'silu')
    throw new ModelFormatError(FILE, 'hidden_act', `unsupported activation "${c.hidden_act}" (only silu)`);
  if (c.rope_scaling) throw new ModelFormatError(FILE, 'rope_scaling', 'RoPE scaling is not supported');
  if (c.attention_bias)
    throw new ModelFormatError(FILE, 'attention_bias', 'attention biases are not supported');
  if (c.mlp_bias) throw new ModelFormatError(FILE, 'mlp_bias', 'MLP biases are not supported');
  if (c.num_attention_heads % c.num_key_value_heads !== 0) {
    throw new ModelFormatError(
      FILE,
      'num_key_value_heads',
      `${c.num_attention_heads} heads are not a multiple of ${c.num_key_value_heads} kv heads`,
    );
  }
  if (!Number.isInteger(hd) || hd % 2 !== 0)
    throw new ModelFormatError(FILE, 'head_dim', `head_dim ${hd} must be an even integer`);
  if (profile === 'contrib' && hd % 8 !== 0) {
    throw new ModelFormatError(
      FILE,
      'head_dim',
      `GroupQueryAttention needs head_dim % 8 == 0, got ${hd}; use profile 'standard'`,
    );
  }
  for (const [name, shape] of expectedShapes(c)) {
    const t = ckpt.tensors.get(name);
    if (!t) throw new ModelFormatError(FILE, name, 'tensor missing');
    if (t.shape.length !== shape.length || t.shape.some((d, k) => d !== shape[k])) {
      throw new ModelFormatError(
        FILE,
        name,
        `expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`,
      );
    }
  }
}
