/**
 * onnxruntime's contrib ops rewritten into standard ai.onnx ops, for reverse-mode differentiation
 * (./autodiff), which has a rule per standard op only. These are the ops the decoder's 'contrib'
 * profile (./llama.ts) emits, each replaced by the math of onnxruntime's CPU (wasm) kernel:
 *
 *   SimplifiedLayerNormalization(x, γ)   (ai.onnx domain, onnxruntime's schema; axis, epsilon)
 *     rms = sqrt(mean(x², axes axis..-1) + ε)     y = x / rms · γ     output 1 = 1 / rms
 *   SkipSimplifiedLayerNormalization(x, skip, γ, bias?)                   (com.microsoft; epsilon)
 *     output 3 = sum = x + skip (+ bias)          output 0 = RMSNorm(sum) over the last axis · γ
 *     output 2 = 1 / rms                          (output 1, a mean, is refused: RMSNorm has none)
 *   RotaryEmbedding(x, position_ids, cos_cache, sin_cache)                 (com.microsoft)
 *     x is [b, s, n·hd] (viewed [b, s, n, hd]) or [b, n, s, hd]; cos, sin = the cache rows at
 *     position_ids [b, s] (a scalar or 1-element p means p + 0..s-1). The first rotary_embedding_dim
 *     (default hd = 2 · cache width) of each head form pairs (a, b): its two halves (interleaved 0)
 *     or adjacent elements (interleaved 1); each becomes (a·cos - b·sin, b·cos + a·sin), the rest
 *     of the head passes through. `scale` is ignored, as the kernel does when it is given the caches.
 *   GroupQueryAttention(q, k, v, past_key, past_value, seqlens_k, total_sequence_length, ...,
 *                       attention_bias)                                    (com.microsoft)
 *     present = concat(past, new k | v) along the sequence axis (P = past length, t = P + s);
 *     query i sits at P + i. For query head h and its kv head h / (num_heads / kv_num_heads):
 *       p = softmax_j(scale · q kᵀ + attention_bias + mask),  out = p v
 *     scale = 1/sqrt(hd) unless set; mask = 0 where j <= P + i and j <= seqlens_k[b], else -inf.
 *     The q heads of one kv group are stacked as rows ([b, kv, rep·s, hd]), so both products are
 *     plain batched MatMuls over the cache as it is (not repeated per query head).
 *
 * seqlens_k (total valid length - 1 per row): the decoder always feeds total - 1 (padding goes
 * through attention_bias), where the mask above is exactly the kernel's. For a row with a smaller
 * value onnxruntime also writes that row's new keys at seqlens_k + 1 - s (a right-padded cache);
 * this rewrite keeps them at the end, as the concatenation says, and masks the keys past seqlens_k.
 * A query row whose every key attention_bias masks (left padding's pad rows) is the kernel's own:
 * it returns zeros or uniform weights depending on the data; here the causal keys weigh the same.
 * No unmasked position reads such a row.
 *
 * Refused with a ModelFormatError naming the node: whatever the kernel would compute differently
 * and is not written here (GroupQueryAttention's do_rotary, softcap, local_window_size,
 * smooth_softmax, packed QKV, head_sink, quantized caches, qk_output; RotaryEmbedding's packed
 * batching; attributes not listed; non-float32 inputs). Every other node, initializer, input and
 * output is kept as it is (weights are shared, not copied); the replacement nodes take the replaced
 * node's place, are named `{node name}/{op}` and write its output names. Nodes inside subgraphs
 * (If / Loop bodies) are not visited. The result imports ai.onnx >= 17, and com.microsoft only when
 * a node of it is left (MatMulNBits, ...).
 */
import { create } from '@bufbuild/protobuf';
import { ModelFormatError } from '../errors.js';
import { withFields } from '../formats/onnx/index.js';
import {
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from '../formats/onnx/onnx_pb.js';
import { ValueTypes, attr, intAttr, type Dim } from './autodiff/value-types.js';
import { attribute, MS_DOMAIN, ONNX_OPSET, tensorProto, type AttrValue } from './builder.js';

/** The same function as `model`, with every contrib op above replaced by standard ai.onnx ops (opset >= 17). */
export function toStandardOps(model: ModelProto, file = 'model.onnx'): ModelProto {
  const graph = model.graph;
  if (!graph) throw new ModelFormatError(file, 'graph', 'the model has no graph');
  const onnx = model.opsetImport.find((o) => o.domain === '' || o.domain === 'ai.onnx');
  const opset = Math.max(Number(onnx?.version ?? 0), ONNX_OPSET);
  const out = new Rewrite(model, file, opset);
  let rewritten = 0;
  for (const node of graph.node) {
    const rule = RULES[`${node.domain === 'ai.onnx' ? '' : node.domain}:${node.opType}`];
    if (rule === undefined) {
      out.keep(node);
    } else {
      rule(node, out.scope(node));
      rewritten++;
    }
  }
  if (rewritten === 0 && opset === Number(onnx?.version)) return model;
  const usesMs = out.nodes.some((n) => n.domain === MS_DOMAIN);
  const opsetImport = [
    onnx && Number(onnx.version) === opset
      ? onnx
      : create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(opset) }),
    ...model.opsetImport.filter((o) => o !== onnx && (o.domain !== MS_DOMAIN || usesMs)),
  ];
  const initializer = [...graph.initializer, ...out.inits];
  return withFields(model, { opsetImport, graph: withFields(graph, { node: out.nodes, initializer }) });
}

type Rule = (node: NodeProto, s: Scope) => void;

const RULES: Record<string, Rule> = {
  ':SimplifiedLayerNormalization': simplifiedLayerNorm,
  [`${MS_DOMAIN}:SimplifiedLayerNormalization`]: simplifiedLayerNorm,
  [`${MS_DOMAIN}:SkipSimplifiedLayerNormalization`]: skipSimplifiedLayerNorm,
  [`${MS_DOMAIN}:RotaryEmbedding`]: rotaryEmbedding,
  [`${MS_DOMAIN}:GroupQueryAttention`]: groupQueryAttention,
};

// ---------------------------------------------------------------------------------------------
// The rules.

function simplifiedLayerNorm(node: NodeProto, s: Scope): void {
  const [x, gamma] = node.input;
  const axis = intAttr(node, 'axis', -1);
  const rank = s.dims(x)?.length;
  if (axis >= 0 && rank === undefined) s.fail('axis', `axis ${axis} on an input of unknown rank`);
  const from = axis < 0 ? axis : axis - (rank as number);
  const axes = Array.from({ length: -from }, (_, k) => from + k); // axis..-1
  rmsNorm(s, x, gamma, floatAttr(node, 'epsilon', 1e-5), axes, node.output[0], node.output[1]);
}

function skipSimplifiedLayerNorm(node: NodeProto, s: Scope): void {
  const [x, skip, gamma, bias] = node.input;
  const [y, mean, invStd, sumOut] = node.output;
  if (mean) s.fail('output 1', 'the mean output is not supported (RMSNorm computes no mean)');
  const xs = s.op('Add', [x, skip], {}, bias ? undefined : sumOut);
  const sum = bias ? s.op('Add', [xs, bias], {}, sumOut) : xs;
  rmsNorm(s, sum, gamma, floatAttr(node, 'epsilon', 1e-5), [-1], y, invStd);
}

/** y = x / sqrt(mean(x², axes) + ε) · γ, and optionally the inverse rms. */
function rmsNorm(
  s: Scope,
  x: string,
  gamma: string,
  eps: number,
  axes: number[],
  y: string,
  inv?: string,
): void {
  s.float32(x, 'input 0');
  const meanSquare = s.reduceMean(s.op('Mul', [x, x]), axes);
  const rms = s.op('Sqrt', [s.op('Add', [meanSquare, s.floats(eps)])]);
  if (inv) s.op('Reciprocal', [rms], {}, inv);
  if (y) s.op('Mul', [s.op('Div', [x, rms]), gamma], {}, y);
}

function rotaryEmbedding(node: NodeProto, s: Scope): void {
  s.allow(['interleaved', 'num_heads', 'rotary_embedding_dim', 'scale', 'is_packed_batching']);
  s.require('is_packed_batching', intAttr(node, 'is_packed_batching', 0) === 0, 'packed batching');
  const [x, positionIds, cosCache, sinCache] = node.input;
  s.float32(x, 'input');
  const rank = s.dims(x)?.length;
  if (rank !== 3 && rank !== 4)
    s.fail('input', `needs a 3-D or 4-D input of known rank, got ${rank ?? 'unknown'}`);
  const half = s.dims(cosCache)?.[1];
  if (typeof half !== 'number') s.fail('cos_cache', 'needs a known shape [max_position, rotary_dim / 2]');
  const numHeads = intAttr(node, 'num_heads', 0);
  const rotaryDim = intAttr(node, 'rotary_embedding_dim', 0);
  const interleaved = intAttr(node, 'interleaved', 0) === 1;
  const rot = rotaryDim || 2 * half;
  if (rot !== 2 * half) s.fail('rotary_embedding_dim', `${rot} does not match cos_cache's width ${half}`);
  if (rotaryDim && !numHeads) s.fail('num_heads', 'rotary_embedding_dim needs num_heads');

  // Per head: [b, s, n, hd] from a 3-D input (hd from the cache, or from num_heads), [b, n, s, hd] as given.
  const x4 =
    rank === 4 ? x : s.op('Reshape', [x, s.ints(rotaryDim ? [0, 0, numHeads, -1] : [0, 0, -1, rot])]);
  // Positions [b, s], or [s] from a scalar offset p: p + 0..s-1.
  const posRank = s.dims(positionIds)?.length;
  if (posRank === undefined || posRank > 2)
    s.fail('position_ids', 'needs a known rank: 0 or 1 (an offset) or 2');
  let positions = positionIds;
  if (posRank < 2) {
    const seq = s.op('Gather', [s.op('Shape', [x]), s.ints(rank - 2, [])], { axis: 0 });
    const offset = s.op('Gather', [s.op('Reshape', [positionIds, s.ints([-1])]), s.ints(0, [])], { axis: 0 });
    positions = s.op('Add', [offset, s.op('Range', [s.ints(0, []), seq, s.ints(1, [])])]);
  }
  // Tables [(b,) s, half] broadcast over heads: [.., s, 1, half] (3-D) or [b, 1, s, half] (4-D).
  const axes = rank === 3 ? [-2] : posRank === 2 ? [1] : [];
  const table = (cache: string) => {
    const rows = s.op('Gather', [cache, positions], { axis: 0 });
    const t = axes.length ? s.op('Unsqueeze', [rows, s.ints(axes)]) : rows;
    return interleaved ? s.op('Unsqueeze', [t, s.ints([-1])]) : t; // [.., half, 1] against pairs [.., half, 2]
  };
  const [cos, sin] = [table(cosCache), table(sinCache)];

  const last = s.ints([-1]);
  const slice = (v: string, from: number, to: number) =>
    s.op('Slice', [v, s.ints([from]), s.ints([to]), last]);
  const rotated = rotaryDim ? slice(x4, 0, rot) : x4;
  const pairs = interleaved ? s.op('Reshape', [rotated, s.ints([0, 0, 0, half, 2])]) : rotated;
  const [a, b] = interleaved
    ? [slice(pairs, 0, 1), slice(pairs, 1, 2)]
    : [slice(pairs, 0, half), slice(pairs, half, rot)];
  const ya = s.op('Sub', [s.op('Mul', [a, cos]), s.op('Mul', [b, sin])]);
  const yb = s.op('Add', [s.op('Mul', [b, cos]), s.op('Mul', [a, sin])]);
  const joined = s.op('Concat', [ya, yb], { axis: -1 });
  const y4 = interleaved ? s.op('Reshape', [joined, s.ints([0, 0, 0, rot])]) : joined;
  const full = rotaryDim ? s.op('Concat', [y4, slice(x4, rot, 2 ** 62)], { axis: -1 }) : y4;
  if (rank === 4) s.op('Identity', [full], {}, node.output[0]);
  else s.op('Reshape', [full, s.ints([0, 0, -1])], {}, node.output[0]);
}

function groupQueryAttention(node: NodeProto, s: Scope): void {
  s.allow([
    ...['num_heads', 'kv_num_heads', 'scale', 'do_rotary', 'rotary_interleaved', 'local_window_size'],
    ...['softcap', 'smooth_softmax', 'causal', 'qk_output', 'sliding_window_cache', 'qk_norm_epsilon'],
    ...['k_quant_type', 'v_quant_type', 'kv_cache_bit_width'],
  ]);
  const is = (name: string, fallback: number, want: number) => intAttr(node, name, fallback) === want;
  s.require(
    'do_rotary',
    is('do_rotary', 0, 0),
    'do_rotary=1 (apply RotaryEmbedding to q and k before the op)',
  );
  s.require('softcap', floatAttr(node, 'softcap', 0) === 0, 'softcap');
  s.require('local_window_size', is('local_window_size', -1, -1), 'local (sliding window) attention');
  s.require('smooth_softmax', is('smooth_softmax', 0, 0), 'smooth_softmax');
  s.require('causal', is('causal', 1, 1), 'non-causal attention');
  s.require('qk_output', is('qk_output', 0, 0), 'qk_output');
  s.require('sliding_window_cache', is('sliding_window_cache', 0, 0), 'a sliding window cache');
  for (const q of ['k_quant_type', 'v_quant_type'])
    s.require(q, ['', 'NONE'].includes(stringAttr(node, q)), 'a quantized KV cache');
  const [q, k, v, pastK, pastV, seqlensK, , , , , bias, ...rest] = node.input;
  if (!k || !v) s.fail('key', 'packed QKV (an empty key input) is not supported');
  if (!pastK !== !pastV) s.fail('past_key', 'past_key and past_value come together');
  const extra = rest.findIndex((name) => name !== '');
  if (extra >= 0) s.fail(`input ${11 + extra}`, 'head_sink, KV cache scales and q/k norms are not supported');
  if (node.output[3]) s.fail('output 3', 'output_qk is not supported');
  s.float32(q, 'query');

  const heads = intAttr(node, 'num_heads', 0);
  const kvHeads = intAttr(node, 'kv_num_heads', 0);
  if (heads <= 0 || kvHeads <= 0 || heads % kvHeads !== 0)
    s.fail('num_heads', `num_heads ${heads} must be a positive multiple of kv_num_heads ${kvHeads}`);
  const hidden = s.dims(q)?.[2];
  const hd = typeof hidden === 'number' ? hidden / heads : s.dims(pastK)?.[3];
  if (typeof hd !== 'number' || !Number.isInteger(hd))
    s.fail('query', 'the head size is unknown (give query or past_key a known last dimension)');
  const scale = floatAttr(node, 'scale', 0) || 1 / Math.sqrt(hd);

  // [b, s, n·hd] -> [b, n, s, hd]; the cache grows along axis 2.
  const perHead = (x: string, n: number) =>
    s.op('Transpose', [s.op('Reshape', [x, s.ints([0, 0, n, -1])])], { perm: [0, 2, 1, 3] });
  const cache = (past: string, x: string, output: string) =>
    past
      ? s.op('Concat', [past, perHead(x, kvHeads)], { axis: 2 }, output)
      : s.op('Identity', [perHead(x, kvHeads)], {}, output);
  const presentK = cache(pastK, k, node.output[1]);
  const presentV = cache(pastV, v, node.output[2]);

  // mask [b, 1, s, t]: 0 where key j <= P + i and j <= seqlens_k[b], -inf elsewhere.
  const dim = (x: string, i: number) => s.op('Gather', [s.op('Shape', [x]), s.ints(i, [])], { axis: 0 });
  const total = dim(presentK, 2);
  const keys = s.op('Range', [s.ints(0, []), total, s.ints(1, [])]);
  const queries = s.op('Range', [s.op('Sub', [total, dim(q, 1)]), total, s.ints(1, [])]);
  const causal = s.op('LessOrEqual', [keys, s.op('Unsqueeze', [queries, s.ints([1])])]);
  const lastKey = s.op('Reshape', [s.op('Cast', [seqlensK], { to: 7 /* INT64 */ }), s.ints([-1, 1, 1])]);
  const allowed = s.op('And', [causal, s.op('LessOrEqual', [keys, lastKey])]);
  const mask = s.op('Where', [s.op('Unsqueeze', [allowed, s.ints([1])]), s.floats(0), s.floats(-Infinity)]);

  // Query heads stacked by kv group: [b, n, s, hd] -> [b, kv, rep·s, hd] and back.
  const grouped = (x: string) => s.op('Reshape', [x, s.ints([0, kvHeads, -1, 0])]);
  const ungrouped = (x: string) => s.op('Reshape', [x, s.ints([0, heads, -1, 0])]);
  const keysT = s.op('Transpose', [presentK], { perm: [0, 1, 3, 2] });
  const scores = s.op('Mul', [
    ungrouped(s.op('MatMul', [grouped(perHead(q, heads)), keysT])),
    s.floats(scale),
  ]);
  const biased = bias ? s.op('Add', [scores, bias]) : scores;
  const probs = s.op('Softmax', [s.op('Add', [biased, mask])], { axis: -1 });
  const context = ungrouped(s.op('MatMul', [grouped(probs), presentV]));
  const merged = s.op('Transpose', [context], { perm: [0, 2, 1, 3] });
  s.op('Reshape', [merged, s.ints([0, 0, -1])], {}, node.output[0]);
}

// ---------------------------------------------------------------------------------------------
// Emitting nodes.

function floatAttr(node: NodeProto, name: string, fallback: number): number {
  const a = attr(node, name);
  return a ? a.f : fallback;
}

function stringAttr(node: NodeProto, name: string): string {
  const a = attr(node, name);
  return a ? new TextDecoder().decode(a.s) : '';
}

/** The new graph: kept and emitted nodes in order, new constants, value types as far as known. */
class Rewrite {
  readonly nodes: NodeProto[] = [];
  readonly inits: TensorProto[] = [];
  readonly types: ValueTypes;
  private readonly names = new Set<string>();
  private readonly nodeNames = new Set<string>();
  private readonly constants = new Map<string, string>();

  constructor(
    model: ModelProto,
    readonly file: string,
    readonly opset: number,
  ) {
    const graph = model.graph!;
    this.types = new ValueTypes(withFields(graph, { node: [] }), file);
    for (const v of [...graph.input, ...graph.initializer]) this.names.add(v.name);
    for (const n of graph.node) {
      this.nodeNames.add(n.name);
      for (const o of n.output) this.names.add(o);
    }
  }

  keep(node: NodeProto): void {
    this.nodes.push(node);
    this.types.infer(node, this.file);
  }

  scope(node: NodeProto): Scope {
    return new Scope(this, node);
  }

  unique(base: string, taken: Set<string>): string {
    let name = base;
    for (let k = 1; taken.has(name); k++) name = `${base}_${k}`;
    taken.add(name);
    return name;
  }

  add(
    name: string,
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue>,
    output?: string,
  ): string {
    const nodeName = this.unique(name, this.nodeNames);
    const out = output ?? this.unique(`${nodeName}_output_0`, this.names);
    this.keep(
      create(NodeProtoSchema, {
        name: nodeName,
        opType,
        input: inputs,
        output: [out],
        attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
      }),
    );
    return out;
  }

  constant(data: Float32Array | BigInt64Array, dims: number[]): string {
    const key = `${data.constructor.name}[${dims.join(',')}]${data.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      const kind = data instanceof Float32Array ? 'float32' : 'int64';
      name = this.unique(`/standard_ops/const/${kind}_${this.constants.size}`, this.names);
      const t = tensorProto(name, data, dims);
      this.inits.push(t);
      this.types.addTensor(name, t, this.file);
      this.constants.set(key, name);
    }
    return name;
  }
}

/** The rewrite of one node: emits nodes named after it, and names it in errors. */
class Scope {
  private readonly prefix: string;

  constructor(
    private readonly r: Rewrite,
    private readonly node: NodeProto,
  ) {
    this.prefix = node.name || `/${node.opType}`;
  }

  /** A node `{prefix}/{opType}` with one output: `output` (a name of the replaced node) or a new name. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, output?: string): string {
    return this.r.add(`${this.prefix}/${opType}`, opType, inputs, attrs, output || undefined);
  }

  ints(values: number | number[], dims?: number[]): string {
    const list = typeof values === 'number' ? [values] : values;
    return this.r.constant(BigInt64Array.from(list, BigInt), dims ?? [list.length]);
  }

  /** A float32 scalar. */
  floats(value: number): string {
    return this.r.constant(Float32Array.of(value), []);
  }

  /** ReduceMean over constant axes: an attribute up to opset 17, an input from 18. */
  reduceMean(x: string, axes: number[]): string {
    return this.r.opset >= 18
      ? this.op('ReduceMean', [x, this.ints(axes)], { keepdims: 1 })
      : this.op('ReduceMean', [x], { axes, keepdims: 1 });
  }

  /** The value's dims as far as they are known; undefined when even the rank is not. */
  dims(name: string): Dim[] | undefined {
    return (name && this.r.types.has(name) && this.r.types.get(name).dims) || undefined;
  }

  float32(name: string, field: string): void {
    const dtype = this.r.types.has(name) ? this.r.types.get(name).dtype : 'float32';
    if (dtype !== 'float32') this.fail(field, `${dtype} inputs are not supported (float32 only)`);
  }

  /** Refuses attributes other than `names`: their meaning would be lost. */
  allow(names: readonly string[]): void {
    const unknown = this.node.attribute.find((a) => !names.includes(a.name));
    if (unknown) this.fail(unknown.name, 'unknown attribute: not rewritten');
  }

  require(field: string, ok: boolean, what: string): void {
    if (!ok) this.fail(field, `${what} is not supported`);
  }

  fail(field: string, message: string): never {
    throw new ModelFormatError(
      this.r.file,
      `node ${this.node.name || this.node.opType} (${this.node.opType}) ${field}`,
      message,
    );
  }
}
