/**
 * UniPELT's gated parts as slots (AdapterHub's UniPELTConfig on Llama; the math and its sources are
 * in ../reference/unipelt.ts), patched into a decoder that already has adapter slots
 * (./adapter-slots.ts) and was built with the 'standard' profile (./llama.ts):
 *
 *   gated LoRA     the LoRA branch of q_proj and v_proj times g:        `unipelt.{module}.gate`
 *   gated prefix   per layer, prefix keys and values times g, before the cache's keys in attention:
 *                  `unipelt.{layer}.prefix_keys|prefix_values` [heads, P, head_dim], `unipelt.{layer}.prefix_gate`
 *   bottleneck     per layer, after the MLP's residual add z: z + g · (relu([z, 1] · D) · U'), with
 *                  `unipelt.{layer}.down` [hidden + 1, m] and `unipelt.{layer}.up` [m + 1, hidden]
 *                  (the last row of each is its bias), `unipelt.{layer}.bottleneck_gate`
 *
 * A gate input is [in + 1, 1] (weights, then the bias): g = mean over the call's tokens of
 * σ([x, 1] · gate), one number per sequence. Off: a gate whose bias is +100 (σ = 1 in float32) on
 * the LoRA branch (which rank 0 already zeroes), m = 0, P = 0 (on WebGPU, which binds no empty
 * buffer: m = 1 of zeros, and P = 1 masked by `unipelt.prefix_mask`). One input per module and layer, not
 * packed by kind: this is an opt-in graph (`slots: { unipelt: true }`), and its ~6 inputs per layer
 * cost what ./adapter-slots.ts says inputs cost.
 */
import { create } from '@bufbuild/protobuf';
import { ModelFormatError } from '../errors.js';
import {
  NodeProtoSchema,
  TensorProto_DataType as DataType,
  type ModelProto,
  type NodeProto,
  type ValueInfoProto,
} from '../formats/onnx/onnx_pb.js';
import { withFields } from '../formats/onnx/index.js';
import { attribute, tensorProto, valueInfo } from './builder.js';

export const UNIPELT_LORA_MODULES = ['self_attn.q_proj', 'self_attn.v_proj'] as const;

/** The names of one layer's UniPELT inputs. */
export const unipeltInputs = (layer: number) => ({
  prefixKeys: `unipelt.${layer}.prefix_keys`,
  prefixValues: `unipelt.${layer}.prefix_values`,
  prefixGate: `unipelt.${layer}.prefix_gate`,
  down: `unipelt.${layer}.down`,
  up: `unipelt.${layer}.up`,
  bottleneckGate: `unipelt.${layer}.bottleneck_gate`,
});
export const loraGateInput = (module: string): string => `unipelt.${module}.gate`;
/**
 * [P]: 0 on the prefix positions in use, float32's lowest on a padding one. Shared by the layers
 * (AdapterHub's prefix has one length). WebGPU cannot bind empty buffers, so with no prefix there
 * it gets one masked position (exactly 0 after the softmax) instead of none.
 */
export const UNIPELT_PREFIX_MASK = 'unipelt.prefix_mask';

/** The model's dimensions the patch needs. */
export interface UniPeltDims {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** The dims of a Llama config. */
export function uniPeltDims(c: {
  num_hidden_layers: number;
  hidden_size: number;
  num_attention_heads: number;
  num_key_value_heads: number;
}): UniPeltDims {
  return {
    layers: c.num_hidden_layers,
    hidden: c.hidden_size,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads,
    headDim: c.hidden_size / c.num_attention_heads,
  };
}

export interface UniPeltLayout extends UniPeltDims {
  /** The gated LoRA modules (HF names) and their input features. */
  lora: { module: string; in: number }[];
}

export function addUniPeltSlots(
  model: ModelProto,
  dims: UniPeltDims,
  file = 'model.onnx',
): { model: ModelProto; layout: UniPeltLayout } {
  const graph = model.graph;
  if (!graph) throw new ModelFormatError(file, 'graph', 'the model has no graph');
  const byName = new Map(graph.node.map((n) => [n.name, n]));
  const need = (name: string) => {
    const n = byName.get(name);
    if (!n)
      throw new ModelFormatError(
        file,
        name,
        "UniPELT slots need this node: a decoder of the 'standard' profile with adapter slots",
      );
    return n;
  };
  const replaced = new Map<NodeProto, NodeProto[]>();
  const inputs: ValueInfoProto[] = [];
  const initializers = [
    int64('/unipelt/axis_seq', [1]),
    int64('/unipelt/start', [0]),
    int64('/unipelt/minus_one', [-1]),
  ];
  const ints = new Map<string, number[]>();
  /** An int64 constant's initializer name (added once). */
  const int64Name = (values: number[]) => {
    const name = `/unipelt/ints_${values.join('_')}`;
    ints.set(name, values);
    return name;
  };
  let counter = 0;
  const node = (opType: string, name: string, input: string[], attrs: NodeProto['attribute'] = []) =>
    create(NodeProtoSchema, {
      opType,
      name,
      input,
      output: [`${name}_output_${counter++}`],
      attribute: attrs,
    });

  /** [x, 1] along the last axis: x [b, s, n] -> [b, s, n + 1]. */
  const withOne = (prefix: string, x: string, out: NodeProto[]) => {
    const shape = node('Shape', `${prefix}/Shape`, [x]);
    const lead = node('Slice', `${prefix}/lead`, [shape.output[0], '/unipelt/start', '/unipelt/minus_one']);
    const onesShape = create(NodeProtoSchema, {
      opType: 'Concat',
      name: `${prefix}/ones_shape`,
      input: [lead.output[0], '/unipelt/axis_seq'],
      output: [`${prefix}/ones_shape_output_0`],
      attribute: [attribute('axis', 0)],
    });
    const ones = node(
      'ConstantOfShape',
      `${prefix}/ones`,
      [onesShape.output[0]],
      [attribute('value', tensorProto('value', Float32Array.of(1), [1]))],
    );
    const joined = node('Concat', `${prefix}/Concat`, [x, ones.output[0]], [attribute('axis', -1)]);
    out.push(shape, lead, onesShape, ones, joined);
    return joined.output[0];
  };
  /** g [b, 1, 1] = mean over the sequence of σ([x, 1] · gate). */
  const gate = (prefix: string, x: string, weights: string, out: NodeProto[]) => {
    const xs = withOne(`${prefix}/x`, x, out);
    const logit = node('MatMul', `${prefix}/MatMul`, [xs, weights]);
    const sig = node('Sigmoid', `${prefix}/Sigmoid`, [logit.output[0]]);
    const sum = node('ReduceSum', `${prefix}/ReduceSum`, [sig.output[0], '/unipelt/axis_seq']);
    const shape = node('Shape', `${prefix}/seq_shape`, [x]);
    const seq = node('Gather', `${prefix}/seq`, [shape.output[0], '/unipelt/axis_seq']);
    const seqF = node('Cast', `${prefix}/seq_float`, [seq.output[0]], [attribute('to', DataType.FLOAT)]);
    const mean = node('Div', `${prefix}/mean`, [sum.output[0], seqF.output[0]]);
    out.push(logit, sig, sum, shape, seq, seqF, mean);
    return mean.output[0];
  };

  const lora: UniPeltLayout['lora'] = [];
  inputs.push(valueInfo(UNIPELT_PREFIX_MASK, 'float32', ['prefix_length']));
  for (let l = 0; l < dims.layers; l++) {
    const names = unipeltInputs(l);
    // Gated LoRA on q_proj and v_proj: the branch (x · A) · B times g.
    for (const kind of UNIPELT_LORA_MODULES) {
      const p = `/model/layers.${l}/${kind.replace('.', '/')}`;
      const add = need(`${p}/lora/Add`);
      const xa = need(`${p}/lora_A/MatMul`);
      const module = `model.layers.${l}.${kind}`;
      const inF = dims.hidden;
      inputs.push(valueInfo(loraGateInput(module), 'float32', [inF + 1, 1]));
      lora.push({ module, in: inF });
      const out: NodeProto[] = [];
      const g = gate(`${p}/unipelt_gate`, xa.input[0], loraGateInput(module), out);
      const gated = node('Mul', `${p}/unipelt_gate/Mul`, [add.input[1], g]);
      out.push(gated, withFields(add, { input: [add.input[0], gated.output[0]] }));
      replaced.set(add, out);
    }

    // Gated prefix: scores and values of P prefix positions before the cache's.
    const p = `/model/layers.${l}/self_attn`;
    const softmax = need(`${p}/Softmax`);
    const attnOut = need(`${p}/MatMul_1`);
    const q = need(`${p}/q_Scale`).output[0]; // [b, kv, rep, s, hd], scaled
    const qProj = need(`${p}/q_proj/lora_A/MatMul`).input[0]; // the attention's input
    inputs.push(
      valueInfo(names.prefixKeys, 'float32', [dims.heads, 'prefix_length', dims.headDim]),
      valueInfo(names.prefixValues, 'float32', [dims.heads, 'prefix_length', dims.headDim]),
      valueInfo(names.prefixGate, 'float32', [dims.hidden + 1, 1]),
    );
    const out: NodeProto[] = [];
    const g = gate(`${p}/prefix_gate`, qProj, names.prefixGate, out);
    // [heads, P, hd] -> [kv, rep, P, hd], q's grouping ([b, kv, rep, s, hd]): head h = kv · rep + r.
    const kvShape = int64Name([dims.kvHeads, dims.heads / dims.kvHeads, -1, dims.headDim]);
    const keys = node('Reshape', `${p}/prefix/keys`, [names.prefixKeys, kvShape]);
    const values = node('Reshape', `${p}/prefix/values`, [names.prefixValues, kvShape]);
    // g [b, 1, 1] -> [b, 1, 1, 1, 1]
    const g5 = node('Unsqueeze', `${p}/prefix/gate5`, [g, int64Name([3, 4])]);
    const keysT = node(
      'Transpose',
      `${p}/prefix/keys_T`,
      [keys.output[0]],
      [attribute('perm', [0, 1, 3, 2])],
    );
    const scores = node('MatMul', `${p}/prefix/MatMul`, [q, keysT.output[0]]); // [b, kv, rep, s, P]
    const gatedScores = node('Mul', `${p}/prefix/scores_gated`, [scores.output[0], g5.output[0]]);
    const maskedScores = node('Add', `${p}/prefix/scores_masked`, [
      gatedScores.output[0],
      UNIPELT_PREFIX_MASK,
    ]);
    const all = node(
      'Concat',
      `${p}/prefix/Concat`,
      [maskedScores.output[0], softmax.input[0]],
      [attribute('axis', -1)],
    );
    const probs = node('Softmax', `${p}/prefix/Softmax`, [all.output[0]], [attribute('axis', -1)]);
    // Split the probabilities: the first P go to the prefix values, the rest to the cache's.
    const pShape = node('Shape', `${p}/prefix/p_shape`, [names.prefixKeys]);
    const pLen = node('Gather', `${p}/prefix/p_len`, [pShape.output[0], '/unipelt/axis_seq']);
    const sShape = node('Shape', `${p}/prefix/s_shape`, [softmax.input[0]]);
    const tLen = node('Slice', `${p}/prefix/t_len`, [sShape.output[0], '/unipelt/minus_one', int64Name([5])]);
    const sizes = create(NodeProtoSchema, {
      opType: 'Concat',
      name: `${p}/prefix/sizes`,
      input: [pLen.output[0], tLen.output[0]],
      output: [`${p}/prefix/sizes_output_0`],
      attribute: [attribute('axis', 0)],
    });
    const split = create(NodeProtoSchema, {
      opType: 'Split',
      name: `${p}/prefix/Split`,
      input: [probs.output[0], sizes.output[0]],
      output: [`${p}/prefix/probs_prefix`, softmax.output[0]],
      attribute: [attribute('axis', -1)],
    });
    const gatedValues = node('Mul', `${p}/prefix/values_gated`, [values.output[0], g5.output[0]]);
    const fromPrefix = node('MatMul', `${p}/prefix/MatMul_1`, [split.output[0], gatedValues.output[0]]);
    const attn = withFields(attnOut, { output: [`${p}/prefix/cache_attn`] });
    const sum = create(NodeProtoSchema, {
      opType: 'Add',
      name: `${p}/prefix/Add`,
      input: [attn.output[0], fromPrefix.output[0]],
      output: [attnOut.output[0]],
    });
    out.push(
      keys,
      values,
      g5,
      keysT,
      scores,
      gatedScores,
      maskedScores,
      all,
      probs,
      pShape,
      pLen,
      sShape,
      tLen,
      sizes,
      split,
    );
    replaced.set(softmax, out);
    replaced.set(attnOut, [gatedValues, fromPrefix, attn, sum]);

    // The bottleneck after the MLP's residual add.
    const residual = need(`/model/layers.${l}/Add_1`);
    inputs.push(
      valueInfo(names.down, 'float32', [dims.hidden + 1, `bottleneck_${l}`]),
      valueInfo(names.up, 'float32', [`bottleneck_${l}_plus_one`, dims.hidden]),
      valueInfo(names.bottleneckGate, 'float32', [dims.hidden + 1, 1]),
    );
    const b = `/model/layers.${l}/bottleneck`;
    const z = withFields(residual, { output: [`${b}/z`] });
    const bn: NodeProto[] = [z];
    const zs = withOne(`${b}/z1`, z.output[0], bn);
    const down = node('MatMul', `${b}/down`, [zs, names.down]);
    const relu = node('Relu', `${b}/Relu`, [down.output[0]]);
    bn.push(down, relu);
    const hs = withOne(`${b}/h1`, relu.output[0], bn);
    const up = node('MatMul', `${b}/up`, [hs, names.up]);
    const gb = gate(`${b}/gate`, z.output[0], names.bottleneckGate, bn);
    const gated = node('Mul', `${b}/Mul`, [up.output[0], gb]);
    bn.push(
      up,
      gated,
      create(NodeProtoSchema, {
        opType: 'Add',
        name: `${b}/Add`,
        input: [z.output[0], gated.output[0]],
        output: [residual.output[0]],
      }),
    );
    replaced.set(residual, bn);
  }
  for (const [name, values] of ints) initializers.push(int64(name, values));
  const nodes = graph.node.flatMap((n) => replaced.get(n) ?? [n]);
  const patched = withFields(graph, {
    node: nodes,
    input: [...graph.input, ...inputs],
    initializer: [...graph.initializer, ...initializers],
  });
  return {
    model: withFields(model, { graph: patched }),
    layout: { ...dims, lora },
  };
}

const int64 = (name: string, values: number[]) =>
  tensorProto(name, BigInt64Array.from(values, BigInt), [values.length]);
