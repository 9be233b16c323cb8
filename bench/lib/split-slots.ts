/**
 * A bench-only prototype of a cheaper adapter-slot graph (a proposal for src/graph/adapter-slots.ts,
 * measured by bench/decode-overhead.ts): each packed slot input (`lora_A.{kind}` [n, in, r], ...)
 * is read by ONE Split into its n rows ([1, in, r] each; MatMul and Mul broadcast the leading 1)
 * instead of one Gather per module, so a kind costs one node per input instead of n.
 */
import { create } from '@bufbuild/protobuf';
import { withFields } from '../../src/formats/onnx/index.js';
import {
  NodeProtoSchema,
  TensorProtoSchema,
  TensorProto_DataType as DataType,
  type ModelProto,
  type NodeProto,
} from '../../src/formats/onnx/onnx_pb.js';
import type { SlotLayout } from '../../src/graph/adapter-slots.js';
import { attribute } from '../../src/graph/builder.js';

export function splitSlotReads(model: ModelProto, layout: SlotLayout): ModelProto {
  const graph = model.graph;
  if (!graph) throw new Error('model without a graph');
  const slotInputs = new Set(
    layout.groups.flatMap((g) => [g.a, g.b, g.scaleIn, g.scaleOut].filter((v): v is string => !!v)),
  );
  const readers = new Map<string, NodeProto[]>();
  for (const n of graph.node) {
    if (n.opType !== 'Gather' || !slotInputs.has(n.input[0])) continue;
    readers.set(n.input[0], [...(readers.get(n.input[0]) ?? []), n]);
  }
  const dropped = new Set<NodeProto>();
  const splits: NodeProto[] = [];
  const initializers = [...graph.initializer];
  const row = (n: NodeProto) => Number(n.input[1].slice(n.input[1].lastIndexOf('_') + 1));
  for (const [input, gathers] of readers) {
    gathers.sort((a, b) => row(a) - row(b));
    if (gathers.some((g, k) => row(g) !== k)) throw new Error(`${input}: rows are not 0..n-1`);
    const sizes = `/adapter_slots/split_ones_${gathers.length}`;
    if (!initializers.some((t) => t.name === sizes)) {
      const ones = new BigInt64Array(gathers.length).fill(1n);
      initializers.push(
        create(TensorProtoSchema, {
          name: sizes,
          dims: [BigInt(gathers.length)],
          dataType: DataType.INT64,
          rawData: new Uint8Array(ones.buffer),
        }),
      );
    }
    for (const g of gathers) dropped.add(g);
    splits.push(
      create(NodeProtoSchema, {
        opType: 'Split',
        name: `/adapter_slots/split/${input}`,
        input: [input, sizes],
        output: gathers.map((g) => g.output[0]),
        attribute: [attribute('axis', 0)],
      }),
    );
  }
  const node = [...splits, ...graph.node.filter((n) => !dropped.has(n))];
  const used = new Set(node.flatMap((n) => n.input));
  return withFields(model, {
    graph: withFields(graph, { node, initializer: initializers.filter((t) => used.has(t.name)) }),
  });
}
