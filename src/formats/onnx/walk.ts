import type { Message } from '@bufbuild/protobuf';
import {
  type AttributeProto,
  AttributeProto_AttributeType,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx_pb.js';

/** Where a tensor sits: a graph (or subgraph) initializer, or a node attribute (Constant's `value`, ...). */
export type TensorRole = 'initializer' | 'attribute';

export type TensorMapper = (tensor: TensorProto, role: TensorRole) => TensorProto;

/**
 * Calls `fn` on every tensor of the model and returns the model with each tensor replaced by what
 * `fn` returned. Copy-on-write: messages on the path to a replaced tensor are shallow copies, all
 * else (raw bytes included) is shared, and the input is never mutated; when nothing changes the
 * input itself is returned.
 *
 * The visiting order is the onnx python package's (`_get_all_tensors`): first every initializer —
 * the graph's, then those of subgraphs (If/Loop/Scan bodies) depth-first in node order — then every
 * attribute tensor in node order. This order decides the layout of an external data file.
 * Tensors inside fields our schema does not declare (ModelProto.functions, ...) are not visited.
 */
export function mapTensors(model: ModelProto, fn: TensorMapper): ModelProto {
  const graph = model.graph;
  if (graph === undefined) return model;
  const mapped = mapGraph(mapGraph(graph, fn, 'initializer'), fn, 'attribute');
  return mapped === graph ? model : withFields(model, { graph: mapped });
}

/** Calls `fn` on every tensor of the model, in mapTensors' order. */
export function forEachTensor(model: ModelProto, fn: (tensor: TensorProto, role: TensorRole) => void): void {
  mapTensors(model, (t, role) => {
    fn(t, role);
    return t;
  });
}

/**
 * A shallow copy of a protobuf-es message with some fields replaced. protobuf-es v2 keeps proto2
 * field presence as own properties over a prototype of defaults, so the copy keeps the prototype;
 * unknown fields ($unknown) are shared.
 */
export function withFields<T extends Message>(message: T, fields: Partial<T>): T {
  const copy = Object.create(Object.getPrototypeOf(message) as object) as T;
  return Object.assign(copy, message, fields);
}

function mapGraph(graph: GraphProto, fn: TensorMapper, role: TensorRole): GraphProto {
  const initializer =
    role === 'initializer' ? mapList(graph.initializer, (t) => fn(t, role)) : graph.initializer;
  const node = mapList(graph.node, (n) => mapNode(n, fn, role));
  if (initializer === graph.initializer && node === graph.node) return graph;
  return withFields(graph, { initializer, node });
}

function mapNode(node: NodeProto, fn: TensorMapper, role: TensorRole): NodeProto {
  const attribute = mapList(node.attribute, (a) => mapAttribute(a, fn, role));
  return attribute === node.attribute ? node : withFields(node, { attribute });
}

function mapAttribute(a: AttributeProto, fn: TensorMapper, role: TensorRole): AttributeProto {
  const changes: Partial<AttributeProto> = {};
  if (role === 'attribute') {
    if (a.t !== undefined) {
      const t = fn(a.t, role);
      if (t !== a.t) changes.t = t;
    }
    const tensors = mapList(a.tensors, (t) => fn(t, role));
    if (tensors !== a.tensors) changes.tensors = tensors;
  }
  // As onnx does, subgraphs are entered by the attribute's declared type.
  if (a.type === AttributeProto_AttributeType.GRAPH && a.g !== undefined) {
    const g = mapGraph(a.g, fn, role);
    if (g !== a.g) changes.g = g;
  }
  if (a.type === AttributeProto_AttributeType.GRAPHS) {
    const graphs = mapList(a.graphs, (g) => mapGraph(g, fn, role));
    if (graphs !== a.graphs) changes.graphs = graphs;
  }
  return Object.keys(changes).length === 0 ? a : withFields(a, changes);
}

function mapList<T>(items: T[], fn: (item: T) => T): T[] {
  let out: T[] | undefined;
  items.forEach((item, i) => {
    const mapped = fn(item);
    if (mapped !== item) (out ??= items.slice())[i] = mapped;
  });
  return out ?? items;
}
