/**
 * The training graph of an adapter: the base decoder with adapter slots (../graph/adapter-slots.ts),
 * a log-probability head, an objective (./losses.ts), and the gradients of the chosen slot inputs
 * (../graph/autodiff). One onnxruntime run gives the loss, each sequence's log-probability and every
 * gradient.
 *
 *   inputs   input_ids, attention_mask, position_ids, past_key_values.*   as the decoder (the past
 *                                                                      empty, or a prefix-tuning prefix)
 *            slot inputs                                               lora_A.{kind}, ..., as at inference
 *            labels    int64 [batch, seq]   the next token at each position (any id where loss_mask is 0)
 *            loss_mask float [batch, seq]   1 on the completion's tokens
 *            the objective's inputs (OBJECTIVE_INPUTS)
 *   outputs  seq_logps [batch]  Σ_t loss_mask · log p(labels | prefix)
 *            loss      []       (not for 'logps', the scoring graph)
 *            {input}_grad  same shape as the input trained
 *
 * Which inputs are trained: LoRA's A and B of every slotted module (`lora`), IA3's scales
 * (`scales`), the prompt embeddings of prompt tuning (`prompt`), any other input by name (`values`:
 * the past of prefix tuning, every weight for pretraining). Slotting only the last k layers'
 * modules trains only those, and the backward pass stops below them.
 *
 * A quantized base is trained against its dequantized weights (the values its quantized ops multiply
 * by), so gradients flow through each quantized linear to its input exactly; a base with onnxruntime
 * contrib ops (the 'contrib' profile, optimum-style fused norms and attention) is rewritten to the
 * standard ops that compute the same (../graph/standard-ops.ts).
 */
import { ModelFormatError } from '../errors.js';
import { toStandardOps } from '../graph/standard-ops.js';
import type { ModelProto } from '../formats/onnx/onnx_pb.js';
import { addAdapterSlots, type SlotLayout, type SlotOptions } from '../graph/adapter-slots.js';
import { addUniPeltSlots, type UniPeltDims } from '../graph/unipelt-slots.js';
import { differentiate } from '../graph/autodiff/differentiate.js';
import { GraphBuilder } from '../graph/builder.js';
import { dequantizeWeights } from '../graph/dequantize-weights.js';
import { QUANT_FORMATS } from '../quant/index.js';
import { lossHead, type Objective } from './losses.js';

export interface TrainingGraphOptions {
  /** The slots of the adapter being trained (methods/slots-for.ts of its config); false for none. */
  slots: SlotOptions | false;
  /** The objective, or 'logps' for a scoring graph with no loss and no gradients. */
  objective: Objective | 'logps';
  /**
   * Which inputs get gradients: LoRA's A and B (`lora`, the default), IA3's scales, the prompt
   * embeddings, and any other graph inputs by name (`values`: the weights of a decoder built with
   * `weights: 'inputs'` for pretraining, the past keys and values for prefix tuning).
   */
  train?: { lora?: boolean; scales?: boolean; prompt?: boolean; values?: readonly string[] };
  /** UniPELT's gated parts on top of the slots (../graph/unipelt-slots.ts), with the model's dims. */
  unipelt?: UniPeltDims;
}

export interface TrainingGraph {
  model: ModelProto;
  layout: SlotLayout;
  /** Slot input -> the output holding its gradient. */
  gradients: Map<string, string>;
}

export const SEQ_LOGPS = 'seq_logps';
export const LOSS = 'loss';

export function buildTrainingGraph(base: ModelProto, options: TrainingGraphOptions): TrainingGraph {
  const dequantized = dequantizeWeights(base, { formats: QUANT_FORMATS, embedding: true }) ?? base;
  const float = toStandardOps(dequantized);
  const { model: adapted, layout: slotLayout } =
    options.slots === false
      ? { model: float, layout: { groups: [] } as SlotLayout }
      : addAdapterSlots(float, options.slots);
  const unipelt = options.unipelt && addUniPeltSlots(adapted, options.unipelt);
  const slotted = unipelt ? unipelt.model : adapted;
  const layout: SlotLayout = unipelt ? { ...slotLayout, unipelt: unipelt.layout } : slotLayout;

  const g = GraphBuilder.extend(slotted);
  const p = '/loss';
  const labels = g.input('labels', 'int64', ['batch_size', 'sequence_length']);
  const mask = g.input('loss_mask', 'float32', ['batch_size', 'sequence_length']);
  const [logp] = g.node('LogSoftmax', ['logits'], { name: `${p}/LogSoftmax`, attrs: { axis: -1 } });
  const [at] = g.node('Unsqueeze', [labels, g.ints([-1])], { name: `${p}/Unsqueeze` });
  const [picked] = g.node('GatherElements', [logp, at], { name: `${p}/GatherElements`, attrs: { axis: -1 } });
  const [tokenLogps] = g.node('Squeeze', [picked, g.ints([-1])], { name: `${p}/Squeeze` });
  const [masked] = g.node('Mul', [tokenLogps, mask], { name: `${p}/Mul` });
  g.node('ReduceSum', [masked, g.ints([1])], {
    name: `${p}/ReduceSum`,
    attrs: { keepdims: 0 },
    outputs: [SEQ_LOGPS],
  });
  g.filterOutputs(() => false);
  g.output(SEQ_LOGPS, 'float32', ['batch_size']);
  if (options.objective === 'logps') return { model: g.build(), layout, gradients: new Map() };

  lossHead(g, options.objective, SEQ_LOGPS);
  g.output(LOSS, 'float32', []);
  const train = { lora: options.slots !== false, ...options.train };
  const wrt = layout.groups.flatMap((grp) => [
    ...(train.lora ? [grp.a, grp.b] : []),
    ...(train.scales ? [grp.scaleIn, grp.scaleOut].filter((s): s is string => s !== undefined) : []),
  ]);
  if (train.prompt) {
    if (!layout.prompt)
      throw new ModelFormatError(
        'model.onnx',
        'prompt_embeddings',
        'no prompt slot to train (slots.prompt is off)',
      );
    wrt.push(layout.prompt.input);
  }
  wrt.push(...(train.values ?? []));
  if (wrt.length === 0) throw new ModelFormatError('model.onnx', 'train', 'no input to train');
  const model = differentiate(g.build(), { loss: LOSS, wrt });
  return { model, layout, gradients: new Map(wrt.map((w) => [w, `${w}_grad`])) };
}
