/**
 * Token-level routing over the LoRA experts of one linear module, in the graph (X-LoRA / MoLoRA /
 * PEFT's Arrow). The module's slot holds E experts side by side, each r columns of A and r rows of B
 * (scalings folded into B as for any LoRA slot), and a router turns each token's input x into
 * coefficients over the experts that weight the experts' rank-space activations:
 *
 *   z = x · A                       [batch, seq, E·r]   every expert's projection, one MatMul
 *   s = x · R   (|x · R| for Arrow) [batch, seq, E]     R [in, E]: prototypes (Arrow) or a learned gate
 *   c = softmax(top_k(s) / T)       [batch, seq, E]     the experts outside the top k get 0
 *   y = base(x) + (z ⊙ repeat_r(c)) · B                 = base(x) + Σ_e c_e · s_e B_e A_e x
 *
 * which is PEFT's ArrowLoraLinearLayer.forward (sim = |tok @ prototypes.T|, topk, softmax of the
 * top-k scores over temperature, einsum over the experts) when R holds the prototypes, and a
 * MoLoRA-style learned router (a softmax gate per module) when R is trained.
 *
 * Top-k without TopK: an expert is kept when fewer than k experts score strictly higher than it
 * (a pairwise comparison, [batch, seq, E, E], E is small), then the others are masked to float32's
 * lowest before the softmax. Only elementwise ops, a ReduceSum and a Softmax: every backend runs
 * them, and the gradient to R flows through the kept scores (the comparisons carry none). Ties keep
 * every tied expert (torch.topk keeps k of them); real-valued scores tie with probability zero.
 *
 * All experts are computed in one [in, E·r] MatMul. What skipping the unselected ones could save
 * is bounded by bench/mixtures.ts: a static blend of the same experts, all computed, costs little
 * more than one adapter; the router's own nodes cost more than that.
 *
 * 'given' (X-LoRA) takes the coefficients as an input instead: `router.{kind}` [batch, seq,
 * modules, E], module k's slice by Gather, fed per forward call (../mixtures/xlora.ts).
 *
 * Inputs ('arrow', 'gate'; shared by every module): `router_top_k` int64 [1] and
 * `router_temperature` float32 [1]; per module kind `router.{kind}` [modules · in, E], cut into
 * per-module blocks like A.
 */
import { create } from '@bufbuild/protobuf';
import { NodeProtoSchema, type NodeProto } from '../formats/onnx/onnx_pb.js';
import { attribute, FLOAT32_LOWEST } from './builder.js';

export type RouterKind = 'arrow' | 'gate' | 'given';

export const ROUTER_TOP_K = 'router_top_k';
export const ROUTER_TEMPERATURE = 'router_temperature';
export const routerInput = (kind: string): string => `router.${kind}`;

/** Names of the constants the router nodes read; the caller adds them as initializers (once). */
export const ROUTER_CONSTANTS = {
  masked: { name: '/router/masked', float: [FLOAT32_LOWEST], dims: [] },
  lastAxis: { name: '/router/axes_last', ints: [-1], dims: [1] },
  secondLastAxis: { name: '/router/axes_second_last', ints: [-2], dims: [1] },
  flatRank: { name: '/router/shape_flat_rank', ints: [0, 0, -1], dims: [3] },
  expertShapePrefix: { name: '/router/shape_prefix', ints: [0, 0], dims: [2] },
  minusOne: { name: '/router/minus_one', ints: [-1], dims: [1] },
  one: { name: '/router/one', ints: [1], dims: [1] },
  three: { name: '/router/three', ints: [3], dims: [1] },
} as const;

const node = (opType: string, name: string, input: string[], attrs: NodeProto['attribute'] = []) =>
  create(NodeProtoSchema, { opType, name, input, output: [`${name}_output_0`], attribute: attrs });

/**
 * Nodes shared by the modules of a kind: [0, 0, E, -1], the shape that exposes the experts of z; E
 * is axis `axis` of the kind's router input.
 */
export function expertShapeNodes(kind: string, axis: 1 | 3): { nodes: NodeProto[]; shape: string } {
  const c = ROUTER_CONSTANTS;
  const p = `/router/${kind}`;
  const shape = node('Shape', `${p}/Shape`, [routerInput(kind)]);
  const experts = node('Gather', `${p}/experts`, [shape.output[0], axis === 1 ? c.one.name : c.three.name]);
  const expertShape = create(NodeProtoSchema, {
    opType: 'Concat',
    name: `${p}/expert_shape`,
    input: [c.expertShapePrefix.name, experts.output[0], c.minusOne.name],
    output: [`${p}/expert_shape_output_0`],
    attribute: [attribute('axis', 0)],
  });
  return { nodes: [shape, experts, expertShape], shape: expertShape.output[0] };
}

/** `router_top_k` as float32, once per graph (the kept test compares it with float counts). */
export const topKFloat = '/router/top_k_float_output_0';
export function topKNode(): NodeProto {
  return node('Cast', '/router/top_k_float', [ROUTER_TOP_K], [attribute('to', 1 /* FLOAT */)]);
}

/**
 * The router of one module: returns its nodes and the gated rank-space activation (`z ⊙ c` as
 * [batch, seq, E·r]) that replaces z as the input of B's MatMul.
 */
export function routeExperts(opts: {
  /** Node-name prefix of the module (`/model/layers.0/self_attn/q_proj`). */
  prefix: string;
  router: RouterKind;
  /** The module's input x [batch, seq, in]. */
  x: string;
  /** x · A [batch, seq, E·r]. */
  z: string;
  /** The module's router block R [in, E]; for 'given', the kind's coefficients [b, s, modules, E]. */
  weights: string;
  /** The module's index in its kind ('given': which coefficients are its). */
  index: number;
  /** [0, 0, E, -1] from expertShapeNodes. */
  expertShape: string;
}): { nodes: NodeProto[]; gated: string } {
  const c = ROUTER_CONSTANTS;
  const p = `${opts.prefix}/router`;
  const nodes: NodeProto[] = [];
  const add = (opType: string, name: string, input: string[], attrs: NodeProto['attribute'] = []) => {
    const n = node(opType, `${p}/${name}`, input, attrs);
    nodes.push(n);
    return n.output[0];
  };
  let coefficients: string;
  if (opts.router === 'given') {
    // X-LoRA: this module's coefficients, computed outside the graph for the call's tokens.
    coefficients = add('Gather', 'Gather', [opts.weights, moduleIndex(opts.index)], [attribute('axis', 2)]);
  } else {
    const dot = add('MatMul', 'MatMul', [opts.x, opts.weights]);
    const scores = opts.router === 'arrow' ? add('Abs', 'Abs', [dot]) : dot;
    // Kept: fewer than k experts score strictly higher.
    const column = add('Unsqueeze', 'column', [scores, c.lastAxis.name]); // [b, s, E, 1]: s_e
    const row = add('Unsqueeze', 'row', [scores, c.secondLastAxis.name]); // [b, s, 1, E]: s_j
    const higher = add('Greater', 'Greater', [row, column]); // [b, s, E, E]: s_j > s_e
    const count = add('Cast', 'Cast', [higher], [attribute('to', 1 /* FLOAT */)]);
    const above = add('ReduceSum', 'ReduceSum', [count, c.lastAxis.name], [attribute('keepdims', 0)]);
    const kept = add('Less', 'Less', [above, topKFloat]);
    const scaled = add('Div', 'Div', [scores, ROUTER_TEMPERATURE]);
    const masked = add('Where', 'Where', [kept, scaled, c.masked.name]);
    coefficients = add('Softmax', 'Softmax', [masked], [attribute('axis', -1)]);
  }
  // z [b, s, E·r] -> [b, s, E, r], times c [b, s, E, 1], back to [b, s, E·r].
  const perExpert = add('Reshape', 'experts', [opts.z, opts.expertShape]);
  const weight = add('Unsqueeze', 'coefficients', [coefficients, c.lastAxis.name]);
  const weighted = add('Mul', 'Mul', [perExpert, weight]);
  const gated = add('Reshape', 'gated', [weighted, c.flatRank.name]);
  return { nodes, gated };
}

/** The int64 scalar index of a module in its kind: '/router/index_{k}' (added by the slot patch). */
export const moduleIndex = (k: number): string => `/router/index_${k}`;
