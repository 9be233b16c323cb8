/**
 * Element types and shapes of a graph's values, as far as they can be known without running it:
 * what reverse-mode differentiation (./differentiate.ts) needs to transpose the right axes, to sum
 * a gradient over the axes an operand was broadcast along, and to make constants of the right type.
 *
 * A dimension is a number, a symbol (a graph input's `dim_param`, or an expression of symbols such
 * as `past_sequence_length+sequence_length` for a Concat) or null when unknown; `dims` is null when
 * even the rank is unknown. Equal symbols are equal sizes. Values computed from data (Range,
 * NonZero, shapes computed at run time) get null dimensions of a known rank where the rank is known.
 */
import { ModelFormatError } from '../../errors.js';
import { dtypeOf, tensorData, type OnnxDtype } from '../../formats/onnx/index.js';
import {
  AttributeProto_AttributeType as AttrType,
  type AttributeProto,
  type GraphProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../../formats/onnx/onnx_pb.js';

export type Dim = number | string | null;

export interface ValueType {
  dtype: OnnxDtype;
  /** null: rank unknown. */
  dims: Dim[] | null;
}

/** Values and small integer constants of a graph, inferred node by node. */
export class ValueTypes {
  private readonly types = new Map<string, ValueType>();
  /** int32/int64 constants of at most 64 elements (shapes, axes), by value name. */
  private readonly ints = new Map<string, number[]>();

  constructor(graph: GraphProto, file = 'model.onnx') {
    for (const t of graph.initializer) this.addTensor(t.name, t, file);
    for (const v of graph.input) if (!this.types.has(v.name)) this.types.set(v.name, declaredType(v, file));
    for (const node of graph.node) this.infer(node, file);
  }

  has(name: string): boolean {
    return this.types.has(name);
  }

  get(name: string): ValueType {
    const t = this.types.get(name);
    if (!t) throw new Error(`no type known for value ${name}`);
    return t;
  }

  /** The values of an integer constant (an initializer or Constant of at most 64 elements). */
  constant(name: string): number[] | undefined {
    return this.ints.get(name);
  }

  /** Infers the outputs of `node` (and records Constant values); appended nodes call this too. */
  infer(node: NodeProto, file = 'model.onnx'): void {
    if (node.opType === 'Constant' && node.domain === '') {
      const value = node.attribute.find((a) => a.name === 'value' && a.type === AttrType.TENSOR)?.t;
      if (value) this.addTensor(node.output[0], value, file);
      else this.types.set(node.output[0], { dtype: 'float32', dims: null });
      return;
    }
    const inputs = node.input.map((name) => (name === '' ? undefined : this.types.get(name)));
    const rule = node.domain === '' || node.domain === 'ai.onnx' ? RULES[node.opType] : undefined;
    let outs: ValueType[];
    if (rule) {
      outs = rule(node, inputs, this);
    } else {
      // Unknown op: the first input's type, rank unknown (enough for values off the gradient's path).
      outs = node.output.map(() => ({ dtype: inputs[0]?.dtype ?? 'float32', dims: null }));
    }
    node.output.forEach((name, k) => {
      if (name !== '') this.types.set(name, outs[k] ?? outs[0]);
    });
  }

  addTensor(name: string, t: TensorProto, file = 'model.onnx'): void {
    const dtype = dtypeOf(t.dataType);
    if (!dtype) throw new ModelFormatError(file, t.name, `unsupported data type ${t.dataType}`);
    const dims = t.dims.map(Number);
    this.types.set(name, { dtype, dims });
    const count = dims.reduce((a, b) => a * b, 1);
    if ((dtype === 'int64' || dtype === 'int32') && count <= 64 && t.dataLocation !== 1) {
      const { data } = tensorData(t, file);
      this.ints.set(name, Array.from(data as ArrayLike<number | bigint>, Number));
    }
  }
}

function declaredType(v: ValueInfoProto, file: string): ValueType {
  const tensor = v.type?.value.case === 'tensorType' ? v.type.value.value : undefined;
  const dtype = tensor && dtypeOf(tensor.elemType);
  if (!tensor || !dtype)
    throw new ModelFormatError(file, v.name, 'graph input is not a supported tensor type');
  const dims = tensor.shape
    ? tensor.shape.dim.map((d): Dim =>
        d.value.case === 'dimValue'
          ? Number(d.value.value)
          : d.value.case === 'dimParam'
            ? d.value.value
            : null,
      )
    : null;
  return { dtype, dims };
}

// ---------------------------------------------------------------------------------------------
// Rules, one per op type: the output types from the input types (undefined = an omitted input).

type Rule = (node: NodeProto, inputs: (ValueType | undefined)[], values: ValueTypes) => ValueType[];

export function attr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}

export function intAttr(node: NodeProto, name: string, fallback: number): number {
  const a = attr(node, name);
  return a ? Number(a.i) : fallback;
}

export function intsAttr(node: NodeProto, name: string): number[] | undefined {
  const a = attr(node, name);
  return a ? a.ints.map(Number) : undefined;
}

const normalize = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);

const same: Rule = (_, [x]) => [x ?? { dtype: 'float32', dims: null }];

function typed(x: ValueType | undefined, dims: Dim[] | null, dtype?: OnnxDtype): ValueType {
  return { dtype: dtype ?? x?.dtype ?? 'float32', dims };
}

/** Numpy broadcasting of dims; unknown where the sizes cannot be told. */
export function broadcastDims(shapes: (Dim[] | null)[]): Dim[] | null {
  if (shapes.some((s) => s === null)) return null;
  const all = shapes as Dim[][];
  const rank = Math.max(...all.map((s) => s.length));
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    const ds = all.map((s) => s[s.length - rank + i]).filter((d) => d !== undefined && d !== 1);
    if (ds.length === 0) out.push(1);
    else if (ds.every((d) => d === ds[0])) out.push(ds[0] as Dim);
    else {
      const known = ds.filter((d) => typeof d === 'number');
      out.push(known.length && known.every((d) => d === known[0]) ? known[0] : null);
    }
  }
  return out;
}

const broadcast =
  (dtype?: OnnxDtype, from = 0): Rule =>
  (_, inputs) => [typed(inputs[from], broadcastDims(inputs.map((x) => x?.dims ?? null)), dtype)];

/** The sum of two dimensions: a number when both are, a symbolic expression otherwise. */
function addDims(a: Dim, b: Dim): Dim {
  if (a === null || b === null) return null;
  if (typeof a === 'number' && typeof b === 'number') return a + b;
  if (a === 0) return b;
  if (b === 0) return a;
  return `${a}+${b}`;
}

function reduceAxes(node: NodeProto, values: ValueTypes): number[] | undefined {
  // axes: an attribute up to opset 17 for most reductions (ReduceSum: an input from 13).
  return intsAttr(node, 'axes') ?? (node.input[1] ? values.constant(node.input[1]) : undefined);
}

const reduce: Rule = (node, [x], values) => {
  const keep = intAttr(node, 'keepdims', 1) === 1;
  const dims = x?.dims;
  if (!dims) return [typed(x, null)];
  const listed = reduceAxes(node, values);
  const noop = intAttr(node, 'noop_with_empty_axes', 0) === 1;
  if (listed === undefined && node.input[1]) return [typed(x, keep ? dims.map(() => null) : null)];
  const axes = new Set(
    (listed?.length ? listed : noop ? [] : dims.map((_, i) => i)).map((a) => normalize(a, dims.length)),
  );
  return [typed(x, keep ? dims.map((d, i) => (axes.has(i) ? 1 : d)) : dims.filter((_, i) => !axes.has(i)))];
};

function matmulDims(a: Dim[] | null, b: Dim[] | null): Dim[] | null {
  if (!a || !b || a.length < 2 || b.length < 2) return null;
  const batch = broadcastDims([a.slice(0, -2), b.slice(0, -2)]);
  return batch && [...batch, a[a.length - 2], b[b.length - 1]];
}

function reshapeDims(x: Dim[] | null, shape: number[], allowZero: boolean): Dim[] {
  const out: Dim[] = shape.map((s, i) => (s === 0 && !allowZero ? (x?.[i] ?? null) : s === -1 ? null : s));
  const infer = shape.indexOf(-1);
  if (infer >= 0 && x && x.every((d) => typeof d === 'number')) {
    const total = (x as number[]).reduce((p, d) => p * d, 1);
    const rest = out.reduce<number | null>(
      (p, d, i) => (i === infer || p === null ? p : typeof d === 'number' ? p * d : null),
      1,
    );
    if (rest) out[infer] = total / rest;
  }
  return out;
}

function sliceDim(d: Dim, start: number, end: number, step: number): Dim {
  if (step !== 1) return null;
  if (typeof d !== 'number') return start === 0 && end >= 2 ** 31 - 1 ? d : null;
  const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + d : v, 0), d);
  return Math.max(0, clamp(end) - clamp(start));
}

const RULES: Record<string, Rule> = {
  Identity: same,
  Neg: same,
  Abs: same,
  Sqrt: same,
  Exp: same,
  Log: same,
  Reciprocal: same,
  Sigmoid: same,
  Tanh: same,
  Relu: same,
  Softplus: same,
  Erf: same,
  Sign: same,
  Softmax: same,
  LogSoftmax: same,
  Not: same,
  Add: broadcast(),
  Sub: broadcast(),
  Mul: broadcast(),
  Div: broadcast(),
  Pow: broadcast(),
  Min: broadcast(),
  Max: broadcast(),
  Sum: broadcast(),
  Mean: broadcast(),
  And: broadcast('bool'),
  Or: broadcast('bool'),
  Equal: broadcast('bool'),
  Less: broadcast('bool'),
  LessOrEqual: broadcast('bool'),
  Greater: broadcast('bool'),
  GreaterOrEqual: broadcast('bool'),
  Where: broadcast(undefined, 1),
  Cast: (node, [x]) => [typed(x, x?.dims ?? null, dtypeOf(intAttr(node, 'to', 1)) ?? 'float32')],
  MatMul: (_, [a, b]) => [typed(a, matmulDims(a?.dims ?? null, b?.dims ?? null))],
  Transpose: (node, [x]) => {
    const dims = x?.dims;
    if (!dims) return [typed(x, null)];
    const perm = intsAttr(node, 'perm') ?? dims.map((_, i) => dims.length - 1 - i);
    return [
      typed(
        x,
        perm.map((p) => dims[p]),
      ),
    ];
  },
  Reshape: (node, [x, s], values) => {
    const shape = values.constant(node.input[1]);
    if (shape) return [typed(x, reshapeDims(x?.dims ?? null, shape, intAttr(node, 'allowzero', 0) === 1))];
    const rank = s?.dims?.[0];
    return [typed(x, typeof rank === 'number' ? Array<Dim>(rank).fill(null) : null)];
  },
  Unsqueeze: (node, [x], values) => {
    const axes = intsAttr(node, 'axes') ?? values.constant(node.input[1]);
    if (!x?.dims || !axes) return [typed(x, null)];
    const rank = x.dims.length + axes.length;
    const at = new Set(axes.map((a) => normalize(a, rank)));
    const rest = [...x.dims];
    return [
      typed(
        x,
        Array.from({ length: rank }, (_, i) => (at.has(i) ? 1 : (rest.shift() as Dim))),
      ),
    ];
  },
  Squeeze: (node, [x], values) => {
    const axes = intsAttr(node, 'axes') ?? (node.input[1] ? values.constant(node.input[1]) : undefined);
    const dims = x?.dims;
    if (!dims) return [typed(x, null)];
    if (!axes) return [typed(x, node.input[1] ? null : dims.filter((d) => d !== 1))];
    const at = new Set(axes.map((a) => normalize(a, dims.length)));
    return [
      typed(
        x,
        dims.filter((_, i) => !at.has(i)),
      ),
    ];
  },
  Flatten: (node, [x]) => {
    const dims = x?.dims;
    if (!dims) return [typed(x, [null, null])];
    const axis = normalize(intAttr(node, 'axis', 1), dims.length);
    const prod = (ds: Dim[]) =>
      ds.every((d) => typeof d === 'number') ? (ds as number[]).reduce((p, d) => p * d, 1) : null;
    return [typed(x, [prod(dims.slice(0, axis)), prod(dims.slice(axis))])];
  },
  Concat: (node, inputs) => {
    const dims = inputs.map((x) => x?.dims ?? null);
    const first = dims.find((d) => d !== null);
    if (!first) return [typed(inputs[0], null)];
    const axis = normalize(intAttr(node, 'axis', 0), first.length);
    const out = first.map((d, i) => (i === axis ? 0 : d)) as Dim[];
    for (const d of dims) out[axis] = d === null ? null : addDims(out[axis], d[axis]);
    return [typed(inputs[0], out)];
  },
  Split: (node, [x], values) => {
    const dims = x?.dims;
    const n = node.output.length;
    if (!dims) return node.output.map(() => typed(x, null));
    const axis = normalize(intAttr(node, 'axis', 0), dims.length);
    const sizes = intsAttr(node, 'split') ?? (node.input[1] ? values.constant(node.input[1]) : undefined);
    const whole = dims[axis];
    return Array.from({ length: n }, (_, k) => {
      const size = sizes ? sizes[k] : typeof whole === 'number' && whole % n === 0 ? whole / n : null;
      return typed(
        x,
        dims.map((d, i) => (i === axis ? size : d)),
      );
    });
  },
  Slice: (node, [x], values) => {
    const dims = x?.dims;
    if (!dims) return [typed(x, null)];
    const [starts, ends, axes, steps] = [1, 2, 3, 4].map((i) =>
      node.input[i] ? values.constant(node.input[i]) : undefined,
    );
    if (!starts || !ends || (node.input[3] && !axes) || (node.input[4] && !steps))
      return [
        typed(
          x,
          dims.map(() => null),
        ),
      ];
    const out = [...dims];
    starts.forEach((s, k) => {
      const axis = normalize(axes ? axes[k] : k, dims.length);
      out[axis] = sliceDim(dims[axis], s, ends[k], steps ? steps[k] : 1);
    });
    return [typed(x, out)];
  },
  Gather: (node, [data, indices]) => {
    if (!data?.dims || !indices?.dims) return [typed(data, null)];
    const axis = normalize(intAttr(node, 'axis', 0), data.dims.length);
    return [typed(data, [...data.dims.slice(0, axis), ...indices.dims, ...data.dims.slice(axis + 1)])];
  },
  GatherElements: (_, [data, indices]) => [typed(data, indices?.dims ?? null)],
  ScatterND: same,
  ScatterElements: same,
  Expand: (node, [x, s], values) => {
    const shape = values.constant(node.input[1]);
    if (shape) return [typed(x, broadcastDims([x?.dims ?? null, shape]))];
    const rank = s?.dims?.[0];
    const r = typeof rank === 'number' && x?.dims ? Math.max(rank, x.dims.length) : undefined;
    return [typed(x, r === undefined ? null : Array<Dim>(r).fill(null))];
  },
  Tile: (node, [x], values) => {
    const repeats = values.constant(node.input[1]);
    if (!x?.dims) return [typed(x, null)];
    return [
      typed(
        x,
        x.dims.map((d, i) =>
          repeats && typeof d === 'number' ? d * repeats[i] : repeats?.[i] === 1 ? d : null,
        ),
      ),
    ];
  },
  Pad: (node, [x], values) => {
    const pads = values.constant(node.input[1]);
    const dims = x?.dims;
    if (!dims) return [typed(x, null)];
    const r = dims.length;
    return [
      typed(
        x,
        dims.map((d, i) => (pads && typeof d === 'number' ? d + pads[i] + pads[i + r] : null)),
      ),
    ];
  },
  ReduceSum: reduce,
  ReduceMean: reduce,
  ReduceMax: reduce,
  ReduceMin: reduce,
  ReduceProd: reduce,
  ReduceL2: reduce,
  ReduceLogSumExp: reduce,
  Shape: (node, [x]) => {
    const rank = x?.dims?.length;
    if (rank === undefined) return [typed(x, [null], 'int64')];
    const start = normalize(intAttr(node, 'start', 0), rank);
    const endAttr = attr(node, 'end');
    const end = endAttr ? Math.min(normalize(Number(endAttr.i), rank), rank) : rank;
    return [typed(x, [Math.max(0, end - Math.max(0, start))], 'int64')];
  },
  Size: (_, [x]) => [typed(x, [], 'int64')],
  Range: (_, [start]) => [typed(start, [null])],
  NonZero: (_, [x]) => [typed(x, [x?.dims?.length ?? null, null], 'int64')],
  ConstantOfShape: (node, [s], values) => {
    const value = attr(node, 'value')?.t;
    const dtype = (value && dtypeOf(value.dataType)) || 'float32';
    const shape = values.constant(node.input[0]);
    const rank = s?.dims?.[0];
    return [{ dtype, dims: shape ?? (typeof rank === 'number' ? Array<Dim>(rank).fill(null) : null) }];
  },
  OneHot: (node, [indices, depth], values) => {
    const d = values.constant(node.input[1])?.[0] ?? null;
    const dims = indices?.dims;
    const v = values.has(node.input[2]) ? values.get(node.input[2]) : undefined;
    if (!dims) return [typed(v, null)];
    const axis = normalize(intAttr(node, 'axis', -1), dims.length + 1);
    void depth;
    return [typed(v, [...dims.slice(0, axis), d, ...dims.slice(axis)])];
  },
  CumSum: same,
  Trilu: same,
};
