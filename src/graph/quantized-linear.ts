/**
 * Quantized base linears: rewrites every linear layer of a decoder graph (one MatMul over an
 * initializer `{module}.weight.T` [in, out], see ./llama.ts) into its quantized form, keeping the
 * activation input, the output name and a node name `linearNodes()` finds:
 *
 *   int4  /{module path}/MatMulNBits  (com.microsoft) x, B uint8 [N, ceil(K/bs), bs/2], scales [N*blocks]
 *                                     (+ zero_points when asymmetric); attrs K, N, bits=4, block_size
 *   nf4   /{module path}/MatMulBnb4   (com.microsoft) x, B uint8 [ceil(N*K/2)], absmax [blocks];
 *                                     attrs K, N, block_size, quant_type=1 (NF4). With double
 *                                     quantization the restored float32 absmax is stored (the op has
 *                                     no nested statistics; these are bitsandbytes' dequantized values).
 *   int8  /{module path}/DequantizeLinear (int8 [K, N], scale [N], axis 1) -> /{module path}/MatMul
 *
 * With `embeddings`, the token embedding becomes GatherBlockQuantized (./quantized-embedding.ts).
 * How these run is chosen at load, per backend (./dequantize-weights.ts).
 *
 * The first input of the linear node is always the activation, so the adapter-slot patch wraps a
 * quantized linear exactly like a float one; `linearShape` and `linearWeight` read a linear's
 * [in, out] and its (dequantized) W [out, in] whatever its form.
 */
import { create } from '@bufbuild/protobuf';
import { ModelFormatError } from '../errors.js';
import {
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  tensorData,
  tensorProto,
  withFields,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from '../formats/onnx/index.js';
import {
  dequantizeWeight,
  quantizeWeight,
  type QuantFormat,
  type QuantizedWeight,
  type QuantizeOptions,
} from '../quant/index.js';
import { attribute, MS_DOMAIN, MS_OPSET } from './builder.js';
import { linearNodes } from './llama.js';
import { quantizeEmbedding } from './quantized-embedding.js';

export interface GraphQuantizeOptions {
  format: QuantFormat;
  /** int4: default 32; nf4: default 64. */
  blockSize?: number;
  doubleQuant?: boolean;
  /** int4: symmetric (default true). */
  symmetric?: boolean;
  /** Quantize the token embedding too (GatherBlockQuantized, ./quantized-embedding.ts). Default false. */
  embeddings?: boolean;
  /** Quantize lm_head (default true); false keeps it float32. */
  lmHead?: boolean;
  /** Linear modules to quantize (HF names); default all (lm_head as `lmHead` says). */
  modules?: readonly string[];
}

const FILE = 'model.onnx';

/** The module path prefix of a linear node: `/model/layers.0/self_attn/q_proj`. */
export function linearPrefix(node: NodeProto): string {
  return node.name.replace(/\/(MatMul|MatMulNBits|MatMulBnb4)$/, '');
}

/** Returns a copy of `model` with its linears quantized, and the quantized weights by module. */
export function quantizeLinears(
  model: ModelProto,
  opts: GraphQuantizeOptions,
): { model: ModelProto; weights: Map<string, QuantizedWeight> } {
  const graph = model.graph;
  if (!graph) throw new ModelFormatError(FILE, 'graph', 'the model has no graph');
  const inits = new Map(graph.initializer.map((t) => [t.name, t]));
  const wanted = opts.modules ? new Set(opts.modules) : undefined;
  const replaced = new Map<NodeProto, NodeProto[]>();
  const dropped = new Set<string>();
  const added: TensorProto[] = [];
  const weights = new Map<string, QuantizedWeight>();
  const qopts: QuantizeOptions = {
    format: opts.format,
    blockSize: opts.blockSize,
    doubleQuant: opts.doubleQuant,
    symmetric: opts.symmetric,
  };

  for (const { module, node } of linearNodes(model)) {
    if (node.opType !== 'MatMul' || (wanted && !wanted.has(module))) continue;
    if (module === 'lm_head' && opts.lmHead === false) continue;
    const init = inits.get(node.input[1]);
    if (!init) continue; // already quantized (int8 pattern) or not a weight
    const t = tensorData(init, FILE);
    if (t.dtype !== 'float32' || t.dims.length !== 2) {
      throw new ModelFormatError(FILE, init.name, `expected a 2-D float32 weight, got ${t.dtype}`);
    }
    const [k, n] = t.dims;
    const w = new Float32Array(n * k); // W [out, in] from W^T [in, out]
    for (let i = 0; i < k; i++) for (let o = 0; o < n; o++) w[o * k + i] = t.data[i * n + o];
    const q = quantizeWeight(w, n, k, qopts);
    weights.set(module, q);
    dropped.add(init.name);
    const p = linearPrefix(node);
    const x = node.input[0];
    const out = node.output[0];
    const ms = (name: string, opType: string, input: string[], attrs: Record<string, number>) =>
      create(NodeProtoSchema, {
        name,
        opType,
        domain: MS_DOMAIN,
        input,
        output: [out],
        attribute: Object.entries(attrs).map(([key, v]) => attribute(key, v)),
      });
    const base = `${module}.weight`;
    if (q.format === 'int4') {
      const inputs = [x, `${base}.q4`, `${base}.scales`];
      added.push(
        tensorProto(`${base}.q4`, 'uint8', [n, q.blocks, q.blockSize / 2], q.data),
        tensorProto(`${base}.scales`, 'float32', [n * q.blocks], q.scales),
      );
      if (q.zeroPoints) {
        inputs.push(`${base}.zero_points`);
        added.push(tensorProto(`${base}.zero_points`, 'uint8', [q.zeroPoints.length], q.zeroPoints));
      }
      replaced.set(node, [
        ms(`${p}/MatMulNBits`, 'MatMulNBits', inputs, { K: k, N: n, bits: 4, block_size: q.blockSize }),
      ]);
    } else if (q.format === 'nf4') {
      added.push(
        tensorProto(`${base}.nf4`, 'uint8', [q.data.length], q.data),
        tensorProto(`${base}.absmax`, 'float32', [q.absmax.length], q.absmax),
      );
      replaced.set(node, [
        ms(`${p}/MatMulBnb4`, 'MatMulBnb4', [x, `${base}.nf4`, `${base}.absmax`], {
          K: k,
          N: n,
          block_size: q.blockSize,
          quant_type: 1,
        }),
      ]);
    } else {
      const qt = new Int8Array(k * n); // [in, out], like the float MatMul weight
      for (let o = 0; o < n; o++) for (let i = 0; i < k; i++) qt[i * n + o] = q.data[o * k + i];
      added.push(
        tensorProto(`${base}.T.int8`, 'int8', [k, n], qt),
        tensorProto(`${base}.T.scale`, 'float32', [n], q.scales),
      );
      const dqName = `${p}/DequantizeLinear`;
      const dq = create(NodeProtoSchema, {
        name: dqName,
        opType: 'DequantizeLinear',
        input: [`${base}.T.int8`, `${base}.T.scale`],
        output: [`${dqName}_output_0`],
        attribute: [attribute('axis', 1)],
      });
      replaced.set(node, [dq, withFields(node, { input: [x, `${dqName}_output_0`] })]);
    }
  }

  if (opts.embeddings) {
    const e = quantizeEmbedding(model, opts);
    replaced.set(e.drop.node, [e.node]);
    dropped.add(e.drop.table);
    added.push(...e.initializers);
  }

  const initializer = [...graph.initializer.filter((t) => !dropped.has(t.name)), ...added];
  const node = graph.node.flatMap((nd) => replaced.get(nd) ?? [nd]);
  let opsetImport = model.opsetImport;
  const contrib = node.some((nd) => nd.domain === MS_DOMAIN);
  if (contrib && !opsetImport.some((o) => o.domain === MS_DOMAIN)) {
    opsetImport = [
      ...opsetImport,
      create(OperatorSetIdProtoSchema, { domain: MS_DOMAIN, version: BigInt(MS_OPSET) }),
    ];
  }
  return {
    model: withFields(model, { opsetImport, graph: withFields(graph, { initializer, node }) }),
    weights,
  };
}

function intAttr(node: NodeProto, name: string): number {
  const a = node.attribute.find((x) => x.name === name);
  if (!a) throw new ModelFormatError(FILE, node.name, `no attribute ${name}`);
  return Number(a.i);
}

/** [in, out] of a linear node (float, int8 pattern, MatMulNBits or MatMulBnb4). */
export function linearShape(node: NodeProto, initializers: Map<string, TensorProto>): [number, number] {
  if (node.opType === 'MatMulNBits' || node.opType === 'MatMulBnb4')
    return [intAttr(node, 'K'), intAttr(node, 'N')];
  const t = initializers.get(node.input[1]) ?? findInt8(node, initializers);
  if (!t || t.dims.length !== 2) {
    throw new ModelFormatError(FILE, node.name, `linear ${node.name} has no 2-D weight initializer`);
  }
  return [Number(t.dims[0]), Number(t.dims[1])];
}

/** The int8 initializer behind a MatMul fed by its DequantizeLinear (named after the module). */
function findInt8(node: NodeProto, initializers: Map<string, TensorProto>): TensorProto | undefined {
  for (const t of initializers.values()) {
    if (t.name.endsWith('.weight.T.int8') && linearPrefixOf(t.name) === linearPrefix(node)) return t;
  }
  return undefined;
}

/** `model.layers.0.self_attn.q_proj.weight.T.int8` -> `/model/layers.0/self_attn/q_proj`. */
function linearPrefixOf(initName: string): string {
  const module = initName.replace(/\.weight\.T\.int8$/, '');
  return `/${module.replace(/\.(?!\d)/g, '/')}`;
}

/**
 * W [out, in] of a linear node, dequantized exactly as its op computes it (the float32 values a
 * quantized base multiplies by). `module` is the linear's Hugging Face module name.
 */
export function linearWeight(model: ModelProto, module: string, node: NodeProto): Float32Array {
  const inits = new Map((model.graph?.initializer ?? []).map((t) => [t.name, t]));
  const base = `${module}.weight`;
  const f32 = (name: string) => {
    const t = inits.get(name);
    if (!t) throw new ModelFormatError(FILE, name, 'no initializer holds this weight');
    const d = tensorData(t, FILE);
    if (d.dtype !== 'float32') throw new ModelFormatError(FILE, name, `expected float32, got ${d.dtype}`);
    return d;
  };
  const u8 = (name: string) => {
    const t = inits.get(name);
    if (!t) throw new ModelFormatError(FILE, name, 'no initializer holds this weight');
    const d = tensorData(t, FILE);
    if (d.dtype !== 'uint8') throw new ModelFormatError(FILE, name, `expected uint8, got ${d.dtype}`);
    return d.data;
  };
  const [k, n] = linearShape(node, inits);
  let q: QuantizedWeight;
  if (node.opType === 'MatMulNBits') {
    const bs = intAttr(node, 'block_size');
    const zp = node.input[3] ? u8(node.input[3]) : undefined;
    q = {
      format: 'int4',
      n,
      k,
      blockSize: bs,
      blocks: Math.ceil(k / bs),
      data: u8(node.input[1]),
      scales: f32(node.input[2]).data,
      zeroPoints: zp,
    };
  } else if (node.opType === 'MatMulBnb4') {
    q = {
      format: 'nf4',
      n,
      k,
      blockSize: intAttr(node, 'block_size'),
      data: u8(node.input[1]),
      absmax: f32(node.input[2]).data,
    };
  } else if (inits.has(node.input[1])) {
    const t = f32(node.input[1]).data; // float MatMul: [in, out]
    const w = new Float32Array(n * k);
    for (let i = 0; i < k; i++) for (let o = 0; o < n; o++) w[o * k + i] = t[i * n + o];
    return w;
  } else {
    const t = inits.get(`${base}.T.int8`);
    if (!t) throw new ModelFormatError(FILE, node.name, `linear ${module} has no weight`);
    const d = tensorData(t, FILE);
    if (d.dtype !== 'int8') throw new ModelFormatError(FILE, t.name, `expected int8, got ${d.dtype}`);
    const data = new Int8Array(n * k);
    for (let i = 0; i < k; i++) for (let o = 0; o < n; o++) data[o * k + i] = d.data[i * n + o];
    q = { format: 'int8', n, k, data, scales: f32(`${base}.T.scale`).data };
  }
  return dequantizeWeight(q);
}
