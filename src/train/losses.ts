/**
 * The training objectives, as graph heads over the per-sequence log-probabilities of the completion
 * tokens, s_b = Σ_t mask[b,t] · log p(label[b,t] | tokens before it), with the inputs each one feeds:
 *
 *   sft   loss = -Σ_b w_b · s_b                                 supervised fine-tuning on demonstrations;
 *                                                                w_b = 1 / (completion tokens in the batch)
 *                                                                gives the token mean TRL's SFTTrainer takes
 *   dpo   loss = Σ_p w_p · softplus(-β ((s_c - r_c) - (s_r - r_r)))
 *                                                                rows 0..P-1 the chosen, P..2P-1 the rejected
 *                                                                completions of P pairs; r = the reference
 *                                                                model's s (Rafailov et al. 2023, TRL's
 *                                                                "sigmoid" loss: -log σ(z) = softplus(-z))
 *   kto   loss = Σ_b w_b · (1 - σ(β · sign_b · (s_b - r_b - z)))
 *                                                                sign +1 desirable, -1 undesirable; z the
 *                                                                detached KL estimate (Ethayarajh et al. 2024,
 *                                                                TRL's KTOTrainer: 1 - σ(β(logratio - KL)) and
 *                                                                1 - σ(β(KL - logratio)))
 *
 * Reference log-probs, β, z and the weights are inputs, so one graph serves any hyperparameters.
 */
import type { GraphBuilder } from '../graph/builder.js';

export type Objective = 'sft' | 'dpo' | 'kto';

/** Graph inputs of each objective besides the tokens, labels and loss mask. */
export const OBJECTIVE_INPUTS: Record<Objective, readonly string[]> = {
  sft: ['weights'],
  dpo: ['weights', 'ref_logps', 'beta'],
  kto: ['weights', 'ref_logps', 'beta', 'sign', 'kl'],
};

/** Adds the objective's inputs and nodes; returns the loss value (a scalar). */
export function lossHead(g: GraphBuilder, objective: Objective, seqLogps: string): string {
  const p = `/loss/${objective}`;
  const weights = g.input('weights', 'float32', [objective === 'dpo' ? 'pairs' : 'batch_size']);
  const sum = (x: string, name: string) => g.node('ReduceSum', [x], { name, attrs: { keepdims: 0 } })[0];
  if (objective === 'sft') {
    const [weighted] = g.node('Mul', [seqLogps, weights], { name: `${p}/Mul` });
    return g.node('Neg', [sum(weighted, `${p}/ReduceSum`)], { name: `${p}/Neg`, outputs: ['loss'] })[0];
  }
  const ref = g.input('ref_logps', 'float32', ['batch_size']);
  const beta = g.input('beta', 'float32', []);
  const [logratio] = g.node('Sub', [seqLogps, ref], { name: `${p}/logratio` });
  if (objective === 'dpo') {
    // [2P] -> [2, P]: row 0 the chosen, row 1 the rejected completions.
    const [pairs] = g.node('Reshape', [logratio, g.ints([2, -1])], { name: `${p}/Reshape` });
    const [chosen] = g.node('Gather', [pairs, g.ints(0, [])], { name: `${p}/chosen`, attrs: { axis: 0 } });
    const [rejected] = g.node('Gather', [pairs, g.ints(1, [])], {
      name: `${p}/rejected`,
      attrs: { axis: 0 },
    });
    const [diff] = g.node('Sub', [chosen, rejected], { name: `${p}/Sub` });
    const [margin] = g.node('Mul', [diff, beta], { name: `${p}/margin` });
    const [negative] = g.node('Neg', [margin], { name: `${p}/Neg` });
    const [losses] = g.node('Softplus', [negative], { name: `${p}/Softplus` });
    const [weighted] = g.node('Mul', [losses, weights], { name: `${p}/Mul` });
    return g.node('Identity', [sum(weighted, `${p}/ReduceSum`)], { name: `${p}/loss`, outputs: ['loss'] })[0];
  }
  const sign = g.input('sign', 'float32', ['batch_size']);
  const kl = g.input('kl', 'float32', []);
  const [shifted] = g.node('Sub', [logratio, kl], { name: `${p}/Sub` });
  const [signed] = g.node('Mul', [shifted, sign], { name: `${p}/Mul` });
  const [scaled] = g.node('Mul', [signed, beta], { name: `${p}/Mul_1` });
  const [sigma] = g.node('Sigmoid', [scaled], { name: `${p}/Sigmoid` });
  const one = g.floats(1, []);
  const [losses] = g.node('Sub', [one, sigma], { name: `${p}/Sub_1` });
  const [weighted] = g.node('Mul', [losses, weights], { name: `${p}/Mul_2` });
  return g.node('Identity', [sum(weighted, `${p}/ReduceSum`)], { name: `${p}/loss`, outputs: ['loss'] })[0];
}
