/**
 * The gradient of each op: given the forward node and the gradients of its outputs (dy, undefined
 * where no gradient flows), the gradients of the inputs that need one. Everything is built from
 * standard ai.onnx ops (opset 17) in the forward values' own float type, so a training graph runs
 * wherever its forward graph does, in float32 or float64.
 *
 * Notation: x, a, b inputs, y the output, dy its gradient; reduceTo sums a broadcast gradient back
 * to an operand's shape (./gradient-context.ts).
 */
import type { NodeProto } from '../../formats/onnx/onnx_pb.js';
import type { GradientContext } from './gradient-context.js';
import { intAttr, intsAttr } from './value-types.js';

/** `need[i]`: input i is on a path from a trainable value; return its gradient there. */
export type GradientRule = (
  node: NodeProto,
  dy: (string | undefined)[],
  need: boolean[],
  c: GradientContext,
) => (string | undefined)[];

const normalize = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);

/** dy of a single-output node (the driver calls a rule only when some output has one). */
const only = (dy: (string | undefined)[]) => dy[0] as string;

/** Unary ops: dx = dy · f'(x), written with y = f(x) where that is simpler. */
const unary =
  (derivative: (c: GradientContext, x: string, y: string, dy: string) => string): GradientRule =>
  (node, dy, _need, c) => [derivative(c, node.input[0], node.output[0], only(dy))];

/** The last two axes swapped. */
function swapLast(c: GradientContext, x: string): string {
  const r = c.rank(x);
  const perm = Array.from({ length: r }, (_, i) => i);
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return c.one('Transpose', [x], { perm });
}

function axesOf(node: NodeProto, c: GradientContext, rank: number): number[] | undefined {
  const axes = intsAttr(node, 'axes') ?? (node.input[1] ? c.types.constant(node.input[1]) : undefined);
  if (axes === undefined && node.input[1]) throw new Error(`${node.name}: axes must be a constant`);
  const noop = intAttr(node, 'noop_with_empty_axes', 0) === 1;
  if (!axes || axes.length === 0) return noop ? [] : Array.from({ length: rank }, (_, i) => i);
  return axes.map((a) => normalize(a, rank));
}

/** dy of a reduction spread back over the reduced axes. */
function unreduce(node: NodeProto, dy: string, c: GradientContext): string {
  const x = node.input[0];
  const axes = axesOf(node, c, c.rank(x)) as number[];
  const kept =
    intAttr(node, 'keepdims', 1) === 1 || axes.length === 0 ? dy : c.one('Unsqueeze', [dy, c.ints(axes)]);
  return c.one('Expand', [kept, c.shape(x)]);
}

export const GRADIENTS: Record<string, GradientRule> = {
  Identity: unary((_c, _x, _y, dy) => dy),
  Neg: unary((c, _x, _y, dy) => c.one('Neg', [dy])),
  Exp: unary((c, _x, y, dy) => c.one('Mul', [dy, y])),
  Log: unary((c, x, _y, dy) => c.one('Div', [dy, x])),
  Sqrt: unary((c, _x, y, dy) => c.one('Div', [c.one('Mul', [dy, c.scalar(0.5, y)]), y])),
  Reciprocal: unary((c, _x, y, dy) => c.one('Neg', [c.one('Mul', [dy, c.one('Mul', [y, y])])])),
  Sigmoid: unary((c, _x, y, dy) => c.one('Mul', [dy, c.one('Mul', [y, c.one('Sub', [c.scalar(1, y), y])])])),
  Tanh: unary((c, _x, y, dy) => c.one('Mul', [dy, c.one('Sub', [c.scalar(1, y), c.one('Mul', [y, y])])])),
  Softplus: unary((c, x, _y, dy) => c.one('Mul', [dy, c.one('Sigmoid', [x])])),
  Relu: unary((c, x, _y, dy) => c.one('Where', [c.one('Greater', [x, c.scalar(0, x)]), dy, c.scalar(0, x)])),
  Abs: unary((c, x, _y, dy) => c.one('Mul', [dy, c.one('Sign', [x])])),

  Cast: (node, dy, _need, c) => {
    return [c.one('Cast', [only(dy)], { to: castCode(c.type(node.input[0]).dtype) })];
  },

  Add: (node, dy, need, c) => node.input.map((x, i) => (need[i] ? c.reduceTo(only(dy), x) : undefined)),
  Sum: (node, dy, need, c) => node.input.map((x, i) => (need[i] ? c.reduceTo(only(dy), x) : undefined)),
  Sub: (node, dy, need, c) => {
    const [a, b] = node.input;
    return [
      need[0] ? c.reduceTo(only(dy), a) : undefined,
      need[1] ? c.reduceTo(c.one('Neg', [only(dy)]), b) : undefined,
    ];
  },
  Mul: (node, dy, need, c) => {
    const [a, b] = node.input;
    return [
      need[0] ? c.reduceTo(c.one('Mul', [only(dy), b]), a) : undefined,
      need[1] ? c.reduceTo(c.one('Mul', [only(dy), a]), b) : undefined,
    ];
  },
  // y = a / b: da = dy / b, db = -dy · y / b
  Div: (node, dy, need, c) => {
    const [a, b] = node.input;
    const y = node.output[0];
    return [
      need[0] ? c.reduceTo(c.one('Div', [only(dy), b]), a) : undefined,
      need[1] ? c.reduceTo(c.one('Neg', [c.one('Div', [c.one('Mul', [only(dy), y]), b])]), b) : undefined,
    ];
  },
  // y = a^e: da = dy · e · a^(e-1) (e = 2: dy · 2a), de = dy · y · ln a
  Pow: (node, dy, need, c) => {
    const [a, e] = node.input;
    const y = node.output[0];
    let da: string | undefined;
    if (need[0]) {
      const value = c.types.has(e) ? floatConstant(c, e) : undefined;
      const slope =
        value === 2
          ? c.one('Mul', [a, c.scalar(2, a)])
          : c.one('Mul', [e, c.one('Pow', [a, c.one('Sub', [e, c.scalar(1, e)])])]);
      da = c.reduceTo(c.one('Mul', [only(dy), slope]), a);
    }
    const de = need[1]
      ? c.reduceTo(c.one('Mul', [only(dy), c.one('Mul', [y, c.one('Log', [a])])]), e)
      : undefined;
    return [da, de];
  },
  // y = where(cond, a, b)
  Where: (node, dy, need, c) => {
    const [cond, a, b] = node.input;
    const zero = c.scalar(0, node.output[0]);
    return [
      undefined,
      need[1] ? c.reduceTo(c.one('Where', [cond, only(dy), zero]), a) : undefined,
      need[2] ? c.reduceTo(c.one('Where', [cond, zero, only(dy)]), b) : undefined,
    ];
  },

  // y = a @ b over the last two axes, batch axes broadcast.
  MatMul: (node, dy, need, c) => {
    const [a, b] = node.input;
    const g = only(dy);
    if (c.rank(a) < 2 || c.rank(b) < 2)
      throw new Error(`${node.name}: MatMul of 1-D operands has no gradient rule`);
    const da = need[0] ? c.reduceTo(c.one('MatMul', [g, swapLast(c, b)]), a) : undefined;
    let db: string | undefined;
    if (need[1] && c.rank(b) === 2 && c.rank(a) > 2) {
      // A weight [k, n] under a batch of activations: one matmul over the flattened batch.
      const k = c.dims(b)[0];
      const n = c.dims(b)[1];
      const flat = (x: string, cols: number | string | null, like: string) =>
        c.one('Reshape', [
          x,
          typeof cols === 'number'
            ? c.ints([-1, cols])
            : c.one('Concat', [c.ints([-1]), c.one('Gather', [c.shape(like), c.ints([-1])], { axis: 0 })], {
                axis: 0,
              }),
        ]);
      db = c.one('MatMul', [swapLast(c, flat(a, k, a)), flat(g, n, g)]);
    } else if (need[1]) {
      db = c.reduceTo(c.one('MatMul', [swapLast(c, a), g]), b);
    }
    return [da, db];
  },

  // dx = y ⊙ (dy - Σ_axis dy ⊙ y)
  Softmax: (node, dy, _need, c) => {
    const y = node.output[0];
    const axis = intAttr(node, 'axis', -1);
    const dot = c.one('ReduceSum', [c.one('Mul', [only(dy), y]), c.ints([axis])], { keepdims: 1 });
    return [c.one('Mul', [y, c.one('Sub', [only(dy), dot])])];
  },
  // dx = dy - exp(y) ⊙ Σ_axis dy
  LogSoftmax: (node, dy, _need, c) => {
    const y = node.output[0];
    const axis = intAttr(node, 'axis', -1);
    const total = c.one('ReduceSum', [only(dy), c.ints([axis])], { keepdims: 1 });
    return [c.one('Sub', [only(dy), c.one('Mul', [c.one('Exp', [y]), total])])];
  },
  ReduceSum: (node, dy, _need, c) => [unreduce(node, only(dy), c)],
  // ReduceMean: ReduceSum's gradient over the count of reduced elements.
  ReduceMean: (node, dy, _need, c) => {
    const x = node.input[0];
    const dims = c.dims(x);
    const axes = axesOf(node, c, dims.length) as number[];
    const sizes = axes.map((a) => dims[a]);
    const count = sizes.every((d) => typeof d === 'number')
      ? c.scalar(
          (sizes as number[]).reduce((p, d) => p * d, 1),
          x,
        )
      : c.one('Div', [
          c.one('CastLike', [c.one('Size', [x]), x]),
          c.one('CastLike', [c.one('Size', [node.output[0]]), x]),
        ]);
    return [c.one('Div', [unreduce(node, only(dy), c), count])];
  },

  // Shape-only ops: the gradient takes the input's shape back.
  Reshape: (node, dy, _need, c) => [c.reshapeLike(only(dy), node.input[0])],
  Unsqueeze: (node, dy, _need, c) => [c.reshapeLike(only(dy), node.input[0])],
  Squeeze: (node, dy, _need, c) => [c.reshapeLike(only(dy), node.input[0])],
  Flatten: (node, dy, _need, c) => [c.reshapeLike(only(dy), node.input[0])],
  Expand: (node, dy, _need, c) => [c.reduceTo(only(dy), node.input[0])],
  Transpose: (node, dy, _need, c) => {
    const r = c.rank(node.input[0]);
    const perm = intsAttr(node, 'perm') ?? Array.from({ length: r }, (_, i) => r - 1 - i);
    const inverse = perm.map((_, i) => perm.indexOf(i));
    return [c.one('Transpose', [only(dy)], { perm: inverse })];
  },
  // Concat: dy cut back into the inputs' sizes along the axis.
  Concat: (node, dy, _need, c) => {
    const rank = c.rank(node.input[0]);
    const axis = normalize(intAttr(node, 'axis', 0), rank);
    const sizes = node.input.map((x) => c.dims(x)[axis]);
    const split = sizes.every((d) => typeof d === 'number')
      ? c.ints(sizes as number[])
      : c.one(
          'Concat',
          node.input.map((x) => c.one('Gather', [c.shape(x), c.ints([axis])], { axis: 0 })),
          { axis: 0 },
        );
    return c.op('Split', [only(dy), split], { axis }, node.input.length);
  },
  // Split: the outputs' gradients joined, zeros for outputs no gradient reaches.
  Split: (node, dy, _need, c) => {
    const axis = intAttr(node, 'axis', 0);
    const parts = node.output.map((y, k) => dy[k] ?? c.zerosLike(y));
    return [parts.length === 1 ? parts[0] : c.one('Concat', parts, { axis })];
  },
  // Slice (constant starts/ends/axes, step 1): dy padded with zeros back to the input's size.
  Slice: (node, dy, _need, c) => [slicePad(node, only(dy), c)],
  // Gather along axis 0 (embedding lookups): the rows of dy added into zeros at the gathered indices.
  Gather: (node, dy, need, c) => {
    if (!need[0]) return [undefined, undefined];
    const [data, indices] = node.input;
    if (normalize(intAttr(node, 'axis', 0), c.rank(data)) !== 0)
      throw new Error(`${node.name}: Gather has a gradient rule only for axis 0`);
    const at = c.one('Unsqueeze', [c.one('Cast', [indices], { to: 7 /* INT64 */ }), c.ints([-1])]);
    return [c.one('ScatterND', [c.zerosLike(data), at, only(dy)], { reduction: 'add' }), undefined];
  },
  GatherElements: (node, dy, need, c) => {
    if (!need[0]) return [undefined, undefined];
    const [data, indices] = node.input;
    const axis = intAttr(node, 'axis', 0);
    return [
      c.one('ScatterElements', [c.zerosLike(data), indices, only(dy)], { axis, reduction: 'add' }),
      undefined,
    ];
  },
};

/** The gradient of Slice as a Pad of dy: before = the clamped start, after = size - clamped end. */
function slicePad(node: NodeProto, dy: string, c: GradientContext): string {
  const x = node.input[0];
  const dims = c.dims(x);
  const r = dims.length;
  const [starts, ends, axesIn, steps] = [1, 2, 3, 4].map((i) =>
    node.input[i] ? c.types.constant(node.input[i]) : undefined,
  );
  if (!starts || !ends || (node.input[3] && !axesIn) || (node.input[4] && !steps))
    throw new Error(`${node.name}: Slice has a gradient rule only for constant starts, ends, axes and steps`);
  if (steps?.some((s) => s !== 1)) throw new Error(`${node.name}: Slice has a gradient rule only for step 1`);
  const axes = (axesIn ?? starts.map((_, k) => k)).map((a) => normalize(a, r));
  const before: (number | string)[] = Array<number>(r).fill(0);
  const after: (number | string)[] = Array<number>(r).fill(0);
  axes.forEach((axis, k) => {
    const d = dims[axis];
    if (typeof d === 'number') {
      const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + d : v, 0), d);
      before[axis] = clamp(starts[k]);
      after[axis] = d - clamp(ends[k]);
      return;
    }
    // A dimension known only at run time: clamp against Shape(x)[axis].
    const size = c.one('Gather', [c.shape(x), c.ints([axis])], { axis: 0 });
    const clamp = (v: number) =>
      v < 0
        ? c.one('Max', [c.one('Add', [size, c.ints([v])]), c.ints([0])])
        : c.one('Min', [c.ints([v]), size]);
    before[axis] = clamp(starts[k]);
    after[axis] = c.one('Sub', [size, clamp(ends[k])]);
  });
  const all = [...before, ...after];
  const pads = all.every((p) => typeof p === 'number')
    ? c.ints(all as number[])
    : c.one(
        'Concat',
        all.map((p) => (typeof p === 'number' ? c.ints([p]) : p)),
        { axis: 0 },
      );
  return c.one('Pad', [dy, pads]);
}

/** The value of a scalar float constant, if `name` is one. */
function floatConstant(c: GradientContext, name: string): number | undefined {
  const t = c.initializer(name);
  if (!t || t.dims.length > 1 || (t.dims.length === 1 && t.dims[0] !== 1n)) return undefined;
  const bytes = t.rawData;
  if (t.dataType === 1 && bytes.byteLength === 4)
    return new DataView(bytes.buffer, bytes.byteOffset).getFloat32(0, true);
  if (t.dataType === 11 && bytes.byteLength === 8)
    return new DataView(bytes.buffer, bytes.byteOffset).getFloat64(0, true);
  if (t.dataType === 1 && t.floatData.length === 1) return t.floatData[0];
  return undefined;
}

function castCode(dtype: string): number {
  const codes: Record<string, number> = { float32: 1, float16: 10, float64: 11, bfloat16: 16 };
  const code = codes[dtype];
  if (code === undefined) throw new Error(`no gradient flows into a ${dtype} value`);
  return code;
}
