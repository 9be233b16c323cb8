/**
 * What a gradient rule (./gradients.ts) builds with: nodes appended to the training graph with their
 * types inferred as they are added, typed constants, and the one non-local step of every broadcasting
 * op — summing a gradient back to the shape of an operand that was broadcast.
 */
import type { TensorProto } from '../../formats/onnx/onnx_pb.js';
import { type AttrValue, type GraphBuilder, tensorProto } from '../builder.js';
import { ValueTypes, type Dim, type ValueType } from './value-types.js';

export class GradientContext {
  private readonly shapes = new Map<string, string>();
  /** Node names start with this (the forward node's name under `/grad`). */
  scope = '/grad';

  constructor(
    readonly g: GraphBuilder,
    readonly types: ValueTypes,
    /** The forward graph's initializers, by name. */
    private readonly initializers: ReadonlyMap<string, TensorProto>,
  ) {}

  /** An initializer of the forward graph or one made since. */
  initializer(name: string): TensorProto | undefined {
    return this.initializers.get(name) ?? this.g.initializerNamed(name);
  }

  type(name: string): ValueType {
    return this.types.get(name);
  }

  dims(name: string): Dim[] {
    const dims = this.types.get(name).dims;
    if (!dims) throw new Error(`the rank of ${name} is unknown`);
    return dims;
  }

  rank(name: string): number {
    return this.dims(name).length;
  }

  /** Appends a node; returns its outputs. */
  op(
    opType: string,
    inputs: readonly string[],
    attrs: Record<string, AttrValue> = {},
    outputs = 1,
  ): string[] {
    const name = this.g.uniqueNodeName(`${this.scope}/${opType}`);
    const outs = this.g.node(opType, inputs, { name, attrs, outputs });
    this.types.infer(this.g.lastNode);
    return outs;
  }

  /** A one-output node. */
  one(opType: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}): string {
    return this.op(opType, inputs, attrs)[0];
  }

  /** An int64 constant. */
  ints(values: number | readonly number[], dims?: readonly number[]): string {
    const name = this.g.ints(values, dims);
    this.register(name);
    return name;
  }

  /** A scalar of the floating type of `like`. */
  scalar(value: number, like: string): string {
    const dtype = this.type(like).dtype;
    const name =
      dtype === 'float64'
        ? this.g.constant(Float64Array.from([value]), [])
        : this.g.constant(Float32Array.from([value]), []);
    this.register(name);
    return name;
  }

  /** Shape(x), one node per value. */
  shape(x: string): string {
    let s = this.shapes.get(x);
    if (!s) {
      s = this.one('Shape', [x]);
      this.shapes.set(x, s);
    }
    return s;
  }

  /** Zeros shaped and typed like `x`. */
  zerosLike(x: string): string {
    const dtype = this.type(x).dtype;
    const zero = dtype === 'float64' ? Float64Array.from([0]) : Float32Array.from([0]);
    return this.one('ConstantOfShape', [this.shape(x)], { value: tensorProto('value', zero, [1]) });
  }

  /** Reshape(t, Shape(x)); allowzero, so an empty dimension of x stays empty. */
  reshapeLike(t: string, x: string): string {
    return this.one('Reshape', [t, this.shape(x)], { allowzero: 1 });
  }

  /**
   * `grad` (shaped like the broadcast result) summed over the axes along which `x` was broadcast:
   * the leading axes x lacks and the axes where x has size 1. Decided from the inferred shapes when
   * they tell (the common case: weights, scales and masks have static sizes); otherwise at run time.
   */
  reduceTo(grad: string, x: string): string {
    const gd = this.type(grad).dims;
    const xd = this.type(x).dims;
    if (gd && xd && gd.length >= xd.length) {
      const lead = gd.length - xd.length;
      const axes: number[] = [];
      let known = true;
      for (let i = 0; i < gd.length; i++) {
        const a = i < lead ? undefined : xd[i - lead];
        const b = gd[i];
        if (a === undefined) axes.push(i);
        else if (a === 1) {
          if (b !== 1) axes.push(i);
        } else if (typeof a !== 'number' && a !== b) known = false; // unknown, or a symbol that may be 1
      }
      if (known) {
        if (axes.length === 0) return grad;
        const summed = this.one('ReduceSum', [grad, this.ints(axes)], { keepdims: 1 });
        if (lead === 0) return summed;
        return this.one('Squeeze', [summed, this.ints(Array.from({ length: lead }, (_, i) => i))]);
      }
    }
    // At run time: sum over every axis where x, padded with leading ones, has size 1.
    const rank = this.rank(grad);
    const xRank = this.rank(x);
    const padded =
      rank === xRank
        ? this.shape(x)
        : this.one('Concat', [this.ints(Array<number>(rank - xRank).fill(1)), this.shape(x)], { axis: 0 });
    const ones = this.one('Equal', [padded, this.ints(1, [])]);
    const axes = this.one('Reshape', [this.one('NonZero', [ones]), this.ints([-1])]);
    const summed = this.one('ReduceSum', [grad, axes], { keepdims: 1, noop_with_empty_axes: 1 });
    return this.reshapeLike(summed, x);
  }

  /** Records the type of a constant made by the builder. */
  private register(name: string): void {
    const t = this.g.initializerNamed(name);
    if (t && !this.types.has(name)) this.types.addTensor(name, t);
  }
}
