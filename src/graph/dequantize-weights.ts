/**
 * Dequantize at load: a quantized base (./quantized-linear.ts, ./quantized-embedding.ts) rewritten
 * to the float32 graph that computes with the same values — every MatMulNBits, MatMulBnb4 and int8
 * DequantizeLinear + MatMul linear becomes one MatMul over a float32 `{module}.weight.T` [in, out],
 * named `/{module path}/MatMul` as in a float base, and GatherBlockQuantized becomes the float
 * `/model/embed_tokens/Gather`. The weights are the quantizers' own dequantization (../quant/), i.e.
 * exactly the values the quantized ops multiply by, so the logits do not change beyond float32
 * summation order. Adapter slots (./adapter-slots.ts) then patch plain MatMuls.
 *
 * The files stay 4-bit (download, disk, cache); the session holds float32 weights.
 *
 * Which execution runs a quantized base is a load option, `kernels`:
 *   'native'      the quantized ops as stored
 *   'dequantize'  this rewrite, linears and embedding
 *   'auto'        per backend and format, the faster execution that computes with the dequantized
 *                 weights (AUTO_DEQUANTIZE); the embedding stays quantized (it gathers a few rows)
 */
import { create } from '@bufbuild/protobuf';
import { InvalidInputError, ModelFormatError } from '../errors.js';
import {
  NodeProtoSchema,
  tensorProto,
  withFields,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from '../formats/onnx/index.js';
import { linearNodes, linearNodeName } from './llama.js';
import { EMBEDDING_GATHER, dequantizeEmbedding, quantizedEmbeddingNode } from './quantized-embedding.js';
import { linearShape, linearWeight } from './quantized-linear.js';
import { QUANT_FORMATS, type QuantFormat } from '../quant/index.js';

export type Kernels = 'auto' | 'dequantize' | 'native';

/**
 * The linear formats 'auto' dequantizes at load, per backend; the others run their quantized op.
 * Measured on synth SmolLM2-135M decode, one thread (bench/quant.ts; README "Quantized bases"):
 * - wasm (onnxruntime-web 1.30): MatMulNBits about 10x, MatMulBnb4 4x, int8 DequantizeLinear +
 *   MatMul 10-14x the time of float32 MatMuls (its CPU kernels dequantize the whole weight on every
 *   call); a base dequantized at load decodes at fp32 speed.
 * - node (onnxruntime-node): the whole model with MatMulNBits decodes as fast as fp32 (0.97x; a
 *   single linear is 1.4-1.8x, the lm_head 0.9x) at 60% of the dequantized base's memory; MatMulBnb4
 *   3x slower; int8 DequantizeLinear + MatMul is fused into an 8-bit-activation kernel whose logits
 *   are not those of the dequantized weights, so int8 is dequantized.
 * - webgpu: int4 and nf4 keep their 4-bit kernels, which hold a quarter of the GPU memory and read
 *   an eighth of the bytes per token; on SwiftShader (the only WebGPU here, a software adapter whose
 *   times do not rank kernels for a GPU) they decode 0.99x and 0.39x the time of fp32. int8's
 *   DequantizeLinear re-dequantizes every weight on every run (1.39x), so int8 is dequantized.
 */
export const AUTO_DEQUANTIZE: Readonly<Record<string, readonly QuantFormat[]>> = {
  wasm: ['int4', 'nf4', 'int8'],
  node: ['nf4', 'int8'],
  webgpu: ['int8'],
};

/** The linear formats to dequantize at load for `kernels` on `backend` (`wasm`, `webgpu`, `node`). */
export function dequantizedFormats(kernels: Kernels | undefined, backend: string): readonly QuantFormat[] {
  if (kernels === 'dequantize') return QUANT_FORMATS;
  if (kernels === 'native') return [];
  if (kernels !== undefined && kernels !== 'auto') {
    throw new InvalidInputError(
      'options',
      'kernels',
      `unknown kernels "${String(kernels)}"; expected "auto", "dequantize" or "native"`,
    );
  }
  return AUTO_DEQUANTIZE[backend] ?? [];
}

/** The format of a quantized linear node, or undefined for a float MatMul. */
function linearFormat(node: NodeProto, producers: ReadonlyMap<string, NodeProto>): QuantFormat | undefined {
  if (node.opType === 'MatMulNBits') return 'int4';
  if (node.opType === 'MatMulBnb4') return 'nf4';
  return producers.get(node.input[1])?.opType === 'DequantizeLinear' ? 'int8' : undefined;
}

/** The formats of the model's quantized linears (empty for a float base). */
export function quantizedFormats(model: ModelProto): QuantFormat[] {
  const producers = new Map((model.graph?.node ?? []).flatMap((n) => n.output.map((o) => [o, n] as const)));
  const formats = new Set<QuantFormat>();
  for (const { node } of linearNodes(model)) {
    const format = linearFormat(node, producers);
    if (format) formats.add(format);
  }
  return QUANT_FORMATS.filter((f) => formats.has(f));
}

/**
 * `model` (its weights in memory: internalizeData first) with its quantized linears of `formats`
 * and, with `embedding`, its quantized embedding dequantized to float32; undefined when nothing
 * changes.
 */
export function dequantizeWeights(
  model: ModelProto,
  opts: { formats: readonly QuantFormat[]; embedding: boolean },
): ModelProto | undefined {
  const graph = model.graph;
  if (!graph) throw new ModelFormatError('model.onnx', 'graph', 'the model has no graph');
  const inits = new Map(graph.initializer.map((t) => [t.name, t]));
  const replaced = new Map<NodeProto, NodeProto[]>();
  const added: TensorProto[] = [];
  const producers = new Map(graph.node.flatMap((n) => n.output.map((o) => [o, n] as const)));
  for (const { module, node } of linearNodes(model)) {
    const format = linearFormat(node, producers);
    if (!format || !opts.formats.includes(format)) continue;
    const [k, n] = linearShape(node, inits);
    const name = `${module}.weight.T`;
    added.push(tensorProto(name, 'float32', [k, n], transpose(linearWeight(model, module, node), n, k)));
    const matmul = create(NodeProtoSchema, {
      name: linearNodeName(module),
      opType: 'MatMul',
      input: [node.input[0], name],
      output: node.output,
    });
    replaced.set(node, [matmul]);
    if (format === 'int8') replaced.set(producers.get(node.input[1]) as NodeProto, []); // its DequantizeLinear
  }
  const gbq = opts.embedding ? quantizedEmbeddingNode(model) : undefined;
  if (gbq) {
    const table = dequantizeEmbedding(model, gbq);
    const [vocab] = inits.get(gbq.input[2])?.dims.map(Number) ?? [];
    const name = 'model.embed_tokens.weight';
    added.push(tensorProto(name, 'float32', [vocab, table.length / vocab], table));
    const gather = create(NodeProtoSchema, {
      name: EMBEDDING_GATHER,
      opType: 'Gather',
      input: [name, gbq.input[1]],
      output: gbq.output,
    });
    replaced.set(gbq, [gather]);
  }
  if (replaced.size === 0) return undefined;

  const node = graph.node.flatMap((n) => replaced.get(n) ?? [n]);
  const used = new Set(node.flatMap((n) => n.input));
  const freed = new Set([...replaced.keys()].flatMap((n) => n.input).filter((name) => !used.has(name)));
  const initializer = [...graph.initializer.filter((t) => !freed.has(t.name)), ...added];
  return withFields(model, { graph: withFields(graph, { node, initializer }) });
}

/** W [n, k] (row-major) -> W^T [k, n], in 32 x 32 tiles for cache locality. */
function transpose(w: Float32Array, n: number, k: number): Float32Array {
  const out = new Float32Array(n * k);
  const T = 32;
  for (let o0 = 0; o0 < n; o0 += T) {
    for (let i0 = 0; i0 < k; i0 += T) {
      for (let o = o0; o < Math.min(o0 + T, n); o++) {
        for (let i = i0; i < Math.min(i0 + T, k); i++) out[i * n + o] = w[o * k + i];
      }
    }
  }
  return out;
}
