/**
 * The decoder's last hidden state as an extra graph output: the input of lm_head, which in a Llama
 * graph is the final RMSNorm's output (transformers' `hidden_states[-1]` with
 * output_hidden_states=True, what X-LoRA's classifier and prompt routers read). onnxruntime computes
 * it anyway; a run that does not fetch it pays nothing.
 *
 *   last_hidden_state  float32 [batch_size, sequence_length, hidden_size]
 */
import { ModelFormatError } from '../errors.js';
import { create } from '@bufbuild/protobuf';
import { NodeProtoSchema, type ModelProto } from '../formats/onnx/onnx_pb.js';
import { withFields } from '../formats/onnx/index.js';
import { valueInfo } from './builder.js';
import { linearNodes } from './llama.js';

export const LAST_HIDDEN_STATE = 'last_hidden_state';

/** A copy of `model` whose graph also outputs lm_head's input as `last_hidden_state`. */
export function exposeHiddenState(model: ModelProto, hidden: number, file = 'model.onnx'): ModelProto {
  const graph = model.graph;
  const head = linearNodes(model).find((l) => l.module === 'lm_head');
  if (!graph || !head)
    throw new ModelFormatError(file, '/lm_head/MatMul', 'no lm_head linear to read the hidden state from');
  const x = head.node.input[0];
  // An Identity gives the value its output name without renaming it for the nodes that read it.
  const identity = create(NodeProtoSchema, {
    opType: 'Identity',
    name: '/last_hidden_state/Identity',
    input: [x],
    output: [LAST_HIDDEN_STATE],
  });
  return withFields(model, {
    graph: withFields(graph, {
      node: [...graph.node, identity],
      output: [
        ...graph.output,
        valueInfo(LAST_HIDDEN_STATE, 'float32', ['batch_size', 'sequence_length', hidden]),
      ],
    }),
  });
}
