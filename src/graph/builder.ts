/**
 * A small ONNX graph builder: declare inputs and outputs, add initializers and nodes, get a
 * `ModelProto`. Values are named by the node that makes them (`{node name}_output_{k}`, as optimum
 * names them), so a later pass can find a node's output without searching the graph.
 *
 * Opset: ai.onnx 17 (IR version 8), plus com.microsoft 1 when a contrib op is used. Every standard op
 * the decoder needs has had its present semantics since opset 13-17 (ReduceMean still takes `axes` as
 * an attribute at 17; Split-18, which WebGPU gets wrong, is never used). Opset 17 is what optimum and
 * transformers.js exports commonly carry, so every onnxruntime execution provider (wasm, JSEP and
 * native WebGPU) has kernels for it; going to 18-21 would gain nothing the decoder uses.
 */
import { create } from '@bufbuild/protobuf';
import {
  AttributeProto_AttributeType as AttrType,
  AttributeProtoSchema,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataType as DataType,
  TensorProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../formats/onnx/onnx_pb.js';
import { withFields } from '../formats/onnx/walk.js';

export const ONNX_OPSET = 17;
export const MS_OPSET = 1;
export const IR_VERSION = 8;
export const MS_DOMAIN = 'com.microsoft';

/** float32's lowest value: an additive mask (as transformers uses finfo.min); exp() of it is 0 after a softmax's max shift. */
export const FLOAT32_LOWEST = -3.4028234663852886e38;

export type DType = 'float32' | 'float64' | 'int64' | 'int32' | 'bool';
/** A dimension: a fixed size or a symbolic name (`batch_size`). */
export type Dim = number | string;

const DATA_TYPES: Record<DType, DataType> = {
  float32: DataType.FLOAT,
  float64: DataType.DOUBLE,
  int64: DataType.INT64,
  int32: DataType.INT32,
  bool: DataType.BOOL,
};

/**
 * An attribute value. A `number` is an INT and must be an integer; floats are written
 * `{ float: 1e-5 }` (so that `scale: 1` can never become an INT by accident). `number[]` is INTS.
 */
export type AttrValue = number | number[] | string | { float: number } | { floats: number[] } | TensorProto;

export interface NodeOptions {
  /** The node name; must be unique. Default: `/{opType}` made unique with a counter. */
  name?: string;
  /** Operator domain; '' (ai.onnx) by default. */
  domain?: string;
  attrs?: Record<string, AttrValue>;
  /** A count of outputs (named `{name}_output_{k}`) or explicit names ('' = optional output left out). */
  outputs?: number | string[];
}

export type TensorData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of a typed array in little-endian order (a view, no copy, on little-endian hosts). */
function littleEndianBytes(data: TensorData): Uint8Array {
  if (LITTLE_ENDIAN || data instanceof Uint8Array) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  const out = new Uint8Array(data.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) {
    if (data instanceof Float32Array) view.setFloat32(i * 4, data[i], true);
    else if (data instanceof Float64Array) view.setFloat64(i * 8, data[i], true);
    else if (data instanceof Int32Array) view.setInt32(i * 4, data[i], true);
    else view.setBigInt64(i * 8, data[i], true);
  }
  return out;
}

function dtypeOf(data: TensorData): DType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  return 'bool';
}

export function tensorProto(name: string, data: TensorData, dims: readonly number[]): TensorProto {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new Error(`tensor ${name}: dims [${dims.join(', ')}] hold ${count} values, got ${data.length}`);
  }
  return create(TensorProtoSchema, {
    name,
    dims: dims.map(BigInt),
    dataType: DATA_TYPES[dtypeOf(data)],
    rawData: littleEndianBytes(data),
  });
}

/** A typed value; `shape` undefined leaves the shape (even the rank) unknown. */
export function valueInfo(name: string, dtype: DType, shape?: readonly Dim[]): ValueInfoProto {
  const dim = shape?.map((d) =>
    create(TensorShapeProto_DimensionSchema, {
      value: typeof d === 'number' ? { case: 'dimValue', value: BigInt(d) } : { case: 'dimParam', value: d },
    }),
  );
  const tensorType = create(TypeProto_TensorSchema, {
    elemType: DATA_TYPES[dtype],
    ...(dim ? { shape: create(TensorShapeProtoSchema, { dim }) } : {}),
  });
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensorType } }),
  });
}

export function attribute(name: string, value: AttrValue): AttributeProto {
  if (typeof value === 'number') {
    if (!Number.isInteger(value))
      throw new Error(`attribute ${name}: ${value} is not an integer; write { float: ${value} }`);
    return create(AttributeProtoSchema, { name, type: AttrType.INT, i: BigInt(value) });
  }
  if (typeof value === 'string') {
    return create(AttributeProtoSchema, { name, type: AttrType.STRING, s: new TextEncoder().encode(value) });
  }
  if (Array.isArray(value)) {
    return create(AttributeProtoSchema, { name, type: AttrType.INTS, ints: value.map(BigInt) });
  }
  if ('float' in value) return create(AttributeProtoSchema, { name, type: AttrType.FLOAT, f: value.float });
  if ('floats' in value)
    return create(AttributeProtoSchema, { name, type: AttrType.FLOATS, floats: value.floats });
  return create(AttributeProtoSchema, { name, type: AttrType.TENSOR, t: value });
}

export class GraphBuilder {
  private nodes: NodeProto[] = [];
  private readonly inits: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private outputs: ValueInfoProto[] = [];
  private readonly names = new Set<string>();
  private readonly nodeNames = new Set<string>();
  private readonly constants = new Map<string, string>();
  private readonly domains = new Set<string>();
  private readonly metadata = new Map<string, string>();
  private readonly initByName = new Map<string, TensorProto>();
  /** The model this builder extends (`GraphBuilder.extend`): its other fields are kept by build(). */
  private base?: ModelProto;

  constructor(readonly name = 'main_graph') {}

  /**
   * A builder that appends to an existing model: its nodes, initializers (shared, not copied),
   * inputs and outputs are there already, their names taken. build() keeps the model's other fields
   * and its opset imports, raising ai.onnx to at least ONNX_OPSET (the ops this builder emits have
   * had their present form since 13-17, and 13-16 to 17 only widened types).
   */
  static extend(model: ModelProto): GraphBuilder {
    const graph = model.graph;
    if (!graph) throw new Error('the model has no graph');
    const g = new GraphBuilder(graph.name);
    g.base = model;
    g.nodes = [...graph.node];
    g.inits.push(...graph.initializer);
    g.inputs.push(...graph.input);
    g.outputs = [...graph.output];
    for (const v of [...graph.input, ...graph.initializer]) g.names.add(v.name);
    for (const n of graph.node) {
      g.nodeNames.add(n.name);
      for (const o of n.output) if (o !== '') g.names.add(o);
    }
    for (const o of model.opsetImport) if (o.domain !== '' && o.domain !== 'ai.onnx') g.domains.add(o.domain);
    return g;
  }

  /** Whether a value of this name exists (an input, initializer or node output). */
  has(name: string): boolean {
    return this.names.has(name);
  }

  /** Keeps only the graph outputs for which `keep(name)` holds (the nodes stay; onnxruntime prunes dead ones). */
  filterOutputs(keep: (name: string) => boolean): void {
    this.outputs = this.outputs.filter((o) => keep(o.name));
  }

  /** A value name not used yet: `base`, else `base_1`, `base_2`, ... */
  uniqueName(base: string): string {
    let name = base;
    for (let k = 1; this.names.has(name); k++) name = `${base}_${k}`;
    this.names.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`graph value ${name} is defined twice`);
    this.names.add(name);
    return name;
  }

  input(name: string, dtype: DType, shape: readonly Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), dtype, shape));
    return name;
  }

  /** Declares an existing value (a node output with this name) as a graph output; no shape = unknown. */
  output(name: string, dtype: DType, shape?: readonly Dim[]): void {
    if (!this.names.has(name)) throw new Error(`graph output ${name} is not produced by any node`);
    this.outputs.push(valueInfo(name, dtype, shape));
  }

  /** A named weight. The typed array is referenced, not copied, until `build()` is serialized. */
  initializer(name: string, data: TensorData, dims: readonly number[]): string {
    const t = tensorProto(this.claim(name), data, dims);
    this.inits.push(t);
    this.initByName.set(name, t);
    return name;
  }

  /** An initializer added with `initializer` or `constant` (not those of an extended model). */
  initializerNamed(name: string): TensorProto | undefined {
    return this.initByName.get(name);
  }

  /** The node added last. */
  get lastNode(): NodeProto {
    const node = this.nodes[this.nodes.length - 1];
    if (!node) throw new Error('the graph has no nodes');
    return node;
  }

  /**
   * A small constant (shapes, axes, scalars) stored as an initializer; equal constants are shared.
   * `dims` defaults to a 1-D tensor; pass `[]` for a scalar.
   */
  constant(data: TensorData, dims: readonly number[] = [data.length]): string {
    const key = `${dtypeOf(data)}[${dims.join(',')}]${Array.from(data as ArrayLike<number | bigint>).join(',')}`;
    const known = this.constants.get(key);
    if (known) return known;
    let name = `/const/${dtypeOf(data)}_${this.constants.size}`;
    for (let k = 1; this.names.has(name); k++) name = `/const/${dtypeOf(data)}_${this.constants.size}_${k}`;
    this.initializer(name, data, dims);
    this.constants.set(key, name);
    return name;
  }

  /** An int64 constant: `ints([0, 0, -1])`, `ints(5, [])` for a scalar. */
  ints(values: number | readonly number[], dims?: readonly number[]): string {
    const list = typeof values === 'number' ? [values] : values;
    return this.constant(
      BigInt64Array.from(list, BigInt),
      dims ?? (typeof values === 'number' ? [] : [list.length]),
    );
  }

  /** A float32 constant: `floats(1e-5, [])` for a scalar. */
  floats(values: number | readonly number[], dims?: readonly number[]): string {
    const list = typeof values === 'number' ? [values] : values;
    return this.constant(Float32Array.from(list), dims ?? (typeof values === 'number' ? [] : [list.length]));
  }

  /** Adds a node; returns the names of its outputs. */
  node(opType: string, inputs: readonly string[], opts: NodeOptions = {}): string[] {
    const name = opts.name ?? this.uniqueNodeName(`/${opType}`);
    if (this.nodeNames.has(name)) throw new Error(`node name ${name} is used twice`);
    this.nodeNames.add(name);
    for (const input of inputs) {
      if (input !== '' && !this.names.has(input))
        throw new Error(`node ${name}: input ${input} is not defined yet`);
    }
    const outs =
      typeof opts.outputs === 'object'
        ? opts.outputs.map((o) => (o === '' ? '' : this.claim(o)))
        : Array.from({ length: opts.outputs ?? 1 }, (_, k) => this.claim(`${name}_output_${k}`));
    const domain = opts.domain ?? '';
    if (domain !== '') this.domains.add(domain);
    this.nodes.push(
      create(NodeProtoSchema, {
        name,
        opType,
        domain,
        input: [...inputs],
        output: outs,
        attribute: Object.entries(opts.attrs ?? {}).map(([k, v]) => attribute(k, v)),
      }),
    );
    return outs;
  }

  /** A node name not used yet: `base`, else `base_1`, `base_2`, ... */
  uniqueNodeName(base: string): string {
    let name = base;
    for (let k = 1; this.nodeNames.has(name); k++) name = `${base}_${k}`;
    return name;
  }

  /** A model-level metadata entry (`metadata_props`). */
  meta(key: string, value: string): void {
    this.metadata.set(key, value);
  }

  build(): ModelProto {
    if (this.base) return this.buildExtended(this.base);
    const opsetImport = [create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(ONNX_OPSET) })];
    for (const domain of [...this.domains].sort()) {
      const version = domain === MS_DOMAIN ? MS_OPSET : 1;
      opsetImport.push(create(OperatorSetIdProtoSchema, { domain, version: BigInt(version) }));
    }
    return create(ModelProtoSchema, {
      irVersion: BigInt(IR_VERSION),
      producerName: 'edge-adapters',
      opsetImport,
      metadataProps: [...this.metadata].map(([key, value]) =>
        create(StringStringEntryProtoSchema, { key, value }),
      ),
      graph: create(GraphProtoSchema, {
        name: this.name,
        node: this.nodes,
        initializer: this.inits,
        input: this.inputs,
        output: this.outputs,
      }),
    });
  }

  private buildExtended(base: ModelProto): ModelProto {
    const opsetImport = base.opsetImport.map((o) =>
      o.domain === '' || o.domain === 'ai.onnx'
        ? withFields(o, { version: BigInt(Math.max(Number(o.version), ONNX_OPSET)) })
        : o,
    );
    for (const domain of this.domains) {
      if (!opsetImport.some((o) => o.domain === domain)) {
        const version = domain === MS_DOMAIN ? MS_OPSET : 1;
        opsetImport.push(create(OperatorSetIdProtoSchema, { domain, version: BigInt(version) }));
      }
    }
    const metadataProps = [...base.metadataProps];
    for (const [key, value] of this.metadata) {
      const i = metadataProps.findIndex((p) => p.key === key);
      const entry = create(StringStringEntryProtoSchema, { key, value });
      if (i >= 0) metadataProps[i] = entry;
      else metadataProps.push(entry);
    }
    const graph = base.graph as GraphProto;
    return withFields(base, {
      opsetImport,
      metadataProps,
      graph: withFields(graph, {
        node: this.nodes,
        initializer: this.inits,
        input: this.inputs,
        output: this.outputs,
        valueInfo: [],
      }),
    });
  }
}
