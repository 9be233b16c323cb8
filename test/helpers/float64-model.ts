/**
 * A float32 ONNX model rendered in float64, for gradient checks whose finite differences must be
 * exact to ~1e-9: every float32 initializer, graph input and output becomes float64, Casts to float32
 * cast to float64, ConstantOfShape/Constant values widen. onnxruntime-web has no float64 Softplus, so
 * Softplus(x) is written log(1 + e^x) (the same function; exact for the moderate inputs of a test).
 */
import { create } from '@bufbuild/protobuf';
import {
  NodeProtoSchema,
  TensorProto_DataType as DataType,
  tensorData,
  tensorProto,
  withFields,
  type AttributeProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../../src/formats/onnx/index.js';
import type { LlamaConfig } from '../../src/formats/checkpoint.js';

function widen(t: TensorProto): TensorProto {
  if (t.dataType !== DataType.FLOAT) return t;
  const { data, dims } = tensorData(t);
  return tensorProto(t.name, 'float64', dims, Float64Array.from(data as Float32Array));
}

function widenInfo(v: ValueInfoProto): ValueInfoProto {
  if (v.type?.value.case !== 'tensorType' || v.type.value.value.elemType !== DataType.FLOAT) return v;
  const tensorType = withFields(v.type.value.value, { elemType: DataType.DOUBLE });
  return withFields(v, { type: withFields(v.type, { value: { case: 'tensorType', value: tensorType } }) });
}

function widenAttr(a: AttributeProto, op: string): AttributeProto {
  if (op === 'Cast' && a.name === 'to' && Number(a.i) === DataType.FLOAT)
    return withFields(a, { i: BigInt(DataType.DOUBLE) });
  if (a.t) return withFields(a, { t: widen(a.t) });
  return a;
}

/** `exact`: float64 values for initializers that the float32 model holds rounded (tables, 1/√d). */
export function toFloat64(
  model: ModelProto,
  exact: ReadonlyMap<string, Float64Array> = new Map(),
): ModelProto {
  const graph = model.graph!;
  const widenOrExact = (t: TensorProto) => {
    const value = exact.get(t.name);
    return value ? tensorProto(t.name, 'float64', tensorData(t).dims, value) : widen(t);
  };
  const one = tensorProto('/float64/one', 'float64', [], Float64Array.from([1]));
  const node = graph.node.flatMap((n): NodeProto[] => {
    const widened = withFields(n, { attribute: n.attribute.map((a) => widenAttr(a, n.opType)) });
    if (n.opType !== 'Softplus') return [widened];
    const [x] = n.input;
    const make = (opType: string, input: string[], output: string) =>
      create(NodeProtoSchema, { name: `${n.name}/${opType}`, opType, input, output: [output] });
    return [
      make('Exp', [x], `${n.name}/exp`),
      make('Add', [`${n.name}/exp`, one.name], `${n.name}/one_plus`),
      make('Log', [`${n.name}/one_plus`], n.output[0]),
    ];
  });
  return withFields(model, {
    graph: withFields(graph, {
      node,
      initializer: [
        ...graph.initializer.map(widenOrExact),
        ...(node.length > graph.node.length ? [one] : []),
      ],
      input: graph.input.map(widenInfo),
      output: graph.output.map(widenInfo),
      valueInfo: graph.valueInfo.map(widenInfo),
    }),
  });
}

/**
 * The decoder's float32-rounded constants in float64, as the reference computes them: the RoPE tables
 * and the 1/√head_dim query scale (rounded, they differ from the reference by ~6e-8 relative, which
 * moves these log-probs by ~4e-7 and would hide a small error in a gradient).
 */
export function exactDecoderConstants(model: ModelProto, config: LlamaConfig): Map<string, Float64Array> {
  const hd = config.hidden_size / config.num_attention_heads;
  const positions = config.max_position_embeddings;
  const cos = new Float64Array(positions * hd);
  const sin = new Float64Array(positions * hd);
  for (let p = 0; p < positions; p++) {
    for (let k = 0; k < hd / 2; k++) {
      const angle = p / Math.pow(config.rope_theta, (2 * k) / hd);
      cos[p * hd + k] = cos[p * hd + hd / 2 + k] = Math.cos(angle);
      sin[p * hd + k] = -Math.sin(angle);
      sin[p * hd + hd / 2 + k] = Math.sin(angle);
    }
  }
  const scale = model.graph!.node.find((n) => n.name === '/model/layers.0/self_attn/q_Scale')!.input[1];
  return new Map([
    ['/model/rotary_emb/cos', cos],
    ['/model/rotary_emb/sin_signed', sin],
    [scale, Float64Array.from([1 / Math.sqrt(hd)])],
  ]);
}
