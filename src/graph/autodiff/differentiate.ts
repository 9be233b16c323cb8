/**
 * Reverse-mode differentiation of an ONNX graph: the same graph with nodes appended that compute the
 * gradient of a scalar (the loss) with respect to chosen values — graph inputs such as adapter
 * tensors, or intermediate values such as the per-module blocks that adapter slots cut from a packed
 * input — and declared as graph outputs `{name}_grad`.
 *
 * Only what the gradient needs is differentiated: nodes on a path from a chosen value to the loss,
 * through floating-point values. Integer and boolean values (shapes, masks, token ids) carry no
 * gradient, so the attention mask, rotary tables and shape arithmetic need no rule. Each op's rule is
 * in ./gradients.ts; contrib ops must be rewritten first (../standard-ops.ts) and quantized linears
 * dequantized (../dequantize-weights.ts).
 *
 * The forward nodes stay as they are, so one run computes the loss, any other output, and the
 * gradients; onnxruntime keeps the forward values the backward nodes read.
 */
import { ModelFormatError } from '../../errors.js';
import type { ModelProto, TensorProto } from '../../formats/onnx/onnx_pb.js';
import { GraphBuilder, type DType } from '../builder.js';
import { GradientContext } from './gradient-context.js';
import { GRADIENTS } from './gradients.js';
import { ValueTypes } from './value-types.js';

export interface DifferentiateOptions {
  /** The value to differentiate: a scalar (any shape: the gradient of its sum). */
  loss: string;
  /** Differentiate with respect to these values (graph inputs or node outputs), floating point. */
  wrt: readonly string[];
  /** The output name of a gradient; default `${name}_grad`. */
  gradName?: (name: string) => string;
  /** Names the model in errors. */
  file?: string;
}

const FLOAT = new Set(['float32', 'float64', 'float16', 'bfloat16']);

export function differentiate(model: ModelProto, options: DifferentiateOptions): ModelProto {
  const file = options.file ?? 'model.onnx';
  const graph = model.graph;
  if (!graph) throw new ModelFormatError(file, 'graph', 'the model has no graph');
  const gradName = options.gradName ?? ((name: string) => `${name}_grad`);
  const types = new ValueTypes(graph, file);
  const isFloat = (name: string) => name !== '' && types.has(name) && FLOAT.has(types.get(name).dtype);
  for (const w of options.wrt) {
    if (!types.has(w))
      throw new ModelFormatError(file, w, 'no value of this name to differentiate with respect to');
    if (!isFloat(w)) throw new ModelFormatError(file, w, `a ${types.get(w).dtype} value has no gradient`);
  }
  if (!types.has(options.loss))
    throw new ModelFormatError(file, options.loss, 'no value of this name (the loss)');

  // Forward: the floating-point values that depend on a chosen value.
  const active = new Set(options.wrt);
  for (const node of graph.node) {
    if (node.input.some((i) => active.has(i))) for (const o of node.output) if (isFloat(o)) active.add(o);
  }
  if (!active.has(options.loss))
    throw new ModelFormatError(file, options.loss, 'the loss does not depend on any value to differentiate');
  // Backward: of those, the ones the loss depends on.
  const relevant = new Set([options.loss]);
  for (let k = graph.node.length - 1; k >= 0; k--) {
    const node = graph.node[k];
    if (node.output.some((o) => relevant.has(o)))
      for (const i of node.input) if (active.has(i)) relevant.add(i);
  }

  const g = GraphBuilder.extend(model);
  const initializers = new Map<string, TensorProto>(graph.initializer.map((t) => [t.name, t]));
  const c = new GradientContext(g, types, initializers);
  // Contributions to each value's gradient, summed when first read.
  const grads = new Map<string, string[]>();
  const gradientOf = (name: string): string | undefined => {
    const parts = grads.get(name);
    if (!parts || parts.length === 0) return undefined;
    if (parts.length > 1) {
      c.scope = `/grad/${name}`;
      grads.set(name, [c.one('Sum', parts)]);
    }
    return (grads.get(name) as string[])[0];
  };
  c.scope = '/grad/seed';
  const lossDims = types.get(options.loss).dims;
  grads.set(options.loss, [
    lossDims?.length === 0
      ? c.scalar(1, options.loss)
      : c.one('Add', [c.zerosLike(options.loss), c.scalar(1, options.loss)]),
  ]);

  for (let k = graph.node.length - 1; k >= 0; k--) {
    const node = graph.node[k];
    const need = node.input.map((i) => relevant.has(i) && active.has(i));
    if (!need.some(Boolean) || !node.output.some((o) => grads.has(o))) continue;
    const rule = node.domain === '' || node.domain === 'ai.onnx' ? GRADIENTS[node.opType] : undefined;
    if (!rule) {
      const hint =
        node.domain === 'com.microsoft' ? ' (rewrite contrib ops to standard ones first: toStandardOps)' : '';
      throw new ModelFormatError(
        file,
        node.name,
        `no gradient rule for ${node.domain || 'ai.onnx'}.${node.opType}${hint}`,
      );
    }
    const dy = node.output.map((o) => gradientOf(o));
    c.scope = `/grad${node.name.startsWith('/') ? '' : '/'}${node.name}`;
    let result: (string | undefined)[];
    try {
      result = rule(node, dy, need, c);
    } catch (cause) {
      if (cause instanceof ModelFormatError) throw cause;
      throw new ModelFormatError(file, node.name, `cannot differentiate: ${(cause as Error).message}`);
    }
    node.input.forEach((input, i) => {
      const r = result[i];
      if (need[i] && r !== undefined) {
        const list = grads.get(input) ?? [];
        list.push(r);
        grads.set(input, list);
      }
    });
  }

  for (const w of options.wrt) {
    c.scope = `/grad/${w}`;
    const grad = gradientOf(w) ?? c.zerosLike(w);
    const name = gradName(w);
    g.node('Identity', [grad], { name: g.uniqueNodeName(`/grad/${w}/Identity`), outputs: [name] });
    const t = types.get(w);
    const dims = t.dims?.every((d) => d !== null) ? (t.dims as (number | string)[]) : undefined;
    g.output(name, t.dtype as DType, dims);
  }
  return g.build();
}
