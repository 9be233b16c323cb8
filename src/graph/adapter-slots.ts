/**
 * Adapter slots: the base decoder graph patched once so that any adapter is a set of input feeds.
 *
 * Every linear module m (one MatMul `y = x · Wᵀ` whose weight is an initializer) becomes
 *
 *   y = ((x ⊙ scale_in[m]) · Wᵀ) ⊙ scale_out[m]  +  (x · A[m]) · B[m]
 *
 *   A[m]  [in, r]   r = 0 gives the exact base output
 *   B[m]  [r, out]  LoRA scaling and blend weights are folded in by methods/
 *   scale_in[m]  [in]   IA3 on feedforward modules; ones = off
 *   scale_out[m] [out]  IA3 on other modules, DoRA's magnitude / norm; ones = off
 *
 * Scaling only the base path keeps every method one formula: LoRA is scale 1 plus a branch; DoRA is
 * s = m / ||W + ΔW|| on the base and the branch ΔW with B's columns scaled by s; IA3 is a scale and no
 * branch; a blend is a product of scales plus concatenated branches.
 *
 * Inputs are packed by module kind, because onnxruntime-web pays a fixed cost per graph input on
 * every run (about 5-15 µs; 840 separate slot inputs cost SmolLM2-135M more than half its decode
 * time). All modules of one kind (`self_attn.q_proj` of every layer, ...) share one input per slot,
 * their rows stacked along the first axis:
 *
 *   lora_A.{kind}    [modules * in, rank]     lora_B.{kind}    [modules * rank, out]
 *   scale_in.{kind}  [modules * in]           scale_out.{kind} [modules * out]
 *
 * and one Split per input cuts it into the modules' own 2-D blocks (B's split sizes come from A's
 * rank, `Shape(A)[1]`; on WebGPU a tree of Splits of at most 7 outputs each, `maxSplitOutputs`). A
 * Split costs one node per input instead of a Gather per module, and its blocks are plain 2-D
 * matrices, which onnxruntime multiplies faster than a batch-broadcast 3-D slice
 * (bench/decode-overhead.ts measures both). The rank is shared within a kind (shorter ranks are
 * zero-padded, which changes nothing).
 *
 * The token embedding gets a prompt slot: token ids >= vocab_size are virtual tokens that look up
 * `prompt_embeddings` [rows, hidden] (row id - vocab_size) instead of the embedding table. Prompt
 * tuning and P-tuning feed their embeddings there and put the virtual ids before the prompt; sequence
 * length, positions and masks need no other change. The input always holds at least one row (a zero
 * row when no prompt adapter is active) so the lookup stays valid.
 *
 * Prefix tuning needs no slot: its keys and values are the start of the KV cache.
 *
 * With `router` set, each LoRA slot holds E experts side by side and a router per module weights
 * them per token (./expert-router.ts: PEFT's Arrow, or a learned gate); a single adapter then runs as
 * one expert with coefficient 1.
 */
import { create } from '@bufbuild/protobuf';
import { InvalidInputError, ModelFormatError } from '../errors.js';
import {
  NodeProtoSchema,
  TensorProtoSchema,
  TensorProto_DataType as DataType,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from '../formats/onnx/onnx_pb.js';
import { withFields } from '../formats/onnx/index.js';
import { linearNodes } from './llama.js';
import { attribute, valueInfo } from './builder.js';
import { linearPrefix, linearShape } from './quantized-linear.js';
import {
  ROUTER_CONSTANTS,
  ROUTER_TEMPERATURE,
  ROUTER_TOP_K,
  expertShapeNodes,
  moduleIndex,
  routeExperts,
  routerInput,
  topKNode,
  type RouterKind,
} from './expert-router.js';
import type { UniPeltLayout } from './unipelt-slots.js';

export interface SlotOptions {
  /** Modules that get a slot (HF names); default every linear module of the graph. */
  modules?: readonly string[];
  /**
   * Which modules get scale_out (IA3 on outputs, DoRA): true (default) = all, false = none, or a
   * list of module names (their whole kind gets the input: it is packed per kind).
   */
  outputScales?: boolean | readonly string[];
  /**
   * Which modules get scale_in (IA3 on feedforward modules): 'feedforward' (default) = the
   * `mlp.down_proj` modules, PEFT's feedforward module for Llama; 'all'; 'none'; or a list of
   * module names (per kind, as above).
   */
  inputScales?: 'feedforward' | 'all' | 'none' | readonly string[];
  /** The prompt-embedding slot (prompt tuning, P-tuning). Default true. */
  prompt?: boolean;
  /**
   * The most outputs one Split may have (default: no limit). WebGPU binds each output as a storage
   * buffer, and a device may allow as few as 8 per shader (WebGPU's guaranteed minimum), so on WebGPU
   * loadModel passes 7 and a wider Split becomes a tree of Splits.
   */
  maxSplitOutputs?: number;
  /**
   * Token-level routing over LoRA experts (./expert-router.ts): 'arrow' (|x · prototype|, PEFT's
   * Arrow), 'gate' (a learned linear gate per module), or 'given' (the coefficients are fed per call,
   * X-LoRA's scalings). Default: none (one LoRA branch, no router).
   */
  router?: RouterKind;
  /**
   * UniPELT's gated LoRA (q_proj, v_proj), gated prefix and bottleneck adapter (./unipelt-slots.ts;
   * patched by loadModel, which knows the heads). Default false.
   */
  unipelt?: boolean;
}

/** One module kind: its inputs and the modules (in row order) that read them. */
export interface SlotGroup {
  /** `self_attn.q_proj`, `mlp.down_proj`, `lm_head`, ... */
  kind: string;
  in: number;
  out: number;
  /** HF module names; row k of every input of the group belongs to modules[k]. */
  modules: string[];
  a: string;
  b: string;
  scaleIn?: string;
  scaleOut?: string;
  /**
   * `router.{kind}`: [modules * in, experts] for 'arrow' and 'gate'; [batch, seq, modules, experts]
   * of coefficients for 'given'.
   */
  router?: string;
}

export interface SlotLayout {
  groups: SlotGroup[];
  /** `prompt_embeddings` [rows, hidden] when the prompt slot exists. */
  prompt?: { input: string; vocabSize: number; hidden: number };
  /** Token-level expert routing: its kind and the shared inputs (`router_top_k`, `router_temperature`). */
  router?: { kind: RouterKind; topK: string; temperature: string };
  /** UniPELT's gated parts (./unipelt-slots.ts), when patched. */
  unipelt?: UniPeltLayout;
}

export const PROMPT_EMBEDDINGS = 'prompt_embeddings';

const FEEDFORWARD = /(^|\.)mlp\.down_proj$/;

/** The kind of a module: its name without `model.layers.{i}.` (`model.layers.3.mlp.up_proj` -> `mlp.up_proj`). */
export function moduleKind(module: string): string {
  return module.replace(/^model\.layers\.\d+\./, '');
}

/** maxSplitOutputs on WebGPU: one input and 7 outputs fill the 8 storage buffers every device allows. */
export const WEBGPU_SPLIT_OUTPUTS = 7;

/** Returns a patched copy of `model` (the weights are shared, not copied) and its slot layout. */
export function addAdapterSlots(
  model: ModelProto,
  options: SlotOptions = {},
): { model: ModelProto; layout: SlotLayout } {
  const source = model.graph;
  if (!source) throw new ModelFormatError('model.onnx', 'graph', 'the model has no graph');
  const graph = withFields(source, { initializer: [...source.initializer] });
  const initializers = new Map(graph.initializer.map((t) => [t.name, t]));
  const wanted = options.modules ? new Set(options.modules) : undefined;
  const kinds = (modules: readonly string[]) => new Set(modules.map(moduleKind));
  const outputScales = options.outputScales ?? true;
  const outputKinds = typeof outputScales === 'boolean' ? undefined : kinds(outputScales);
  const outputScaled = (kind: string) => outputKinds?.has(kind) ?? outputScales === true;
  const inputScales = options.inputScales ?? 'feedforward';
  const inputKinds = typeof inputScales === 'string' ? undefined : kinds(inputScales);
  const inputScaled = (kind: string, module: string) =>
    inputKinds?.has(kind) ??
    (inputScales === 'all' || (inputScales === 'feedforward' && FEEDFORWARD.test(module)));
  const patches = new Map<NodeProto, NodeProto[]>();
  const newInputs: ValueInfoProto[] = [];
  const groups = new Map<string, SlotGroup>();
  const node = (opType: string, name: string, input: string[]) =>
    create(NodeProtoSchema, { opType, name, input, output: [`${name}_output_0`] });
  // The block of module k in a packed input; made by the input's Split (below).
  const block = (input: string, k: number) => `${input}/block_${k}`;
  // Router: [0, 0, E, -1] per kind, made once (below, with the Splits).
  const expertShape = (kind: string) => `/router/${kind}/expert_shape_output_0`;

  for (const { module, node: matmul } of linearNodes(model)) {
    if (wanted && !wanted.has(module)) continue;
    // [in, out] of a float or quantized linear (MatMulNBits / MatMulBnb4 / int8 pattern).
    const [inF, outF] = linearShape(matmul, initializers);
    const kind = moduleKind(module);
    let group = groups.get(kind);
    if (!group) {
      group = { kind, in: inF, out: outF, modules: [], a: `lora_A.${kind}`, b: `lora_B.${kind}` };
      if (outputScaled(kind)) group.scaleOut = `scale_out.${kind}`;
      if (inputScaled(kind, module)) group.scaleIn = `scale_in.${kind}`;
      if (options.router) group.router = routerInput(kind);
      groups.set(kind, group);
    } else if (group.in !== inF || group.out !== outF) {
      throw new ModelFormatError(
        'model.onnx',
        matmul.name,
        `${module} is [${inF}, ${outF}], other ${kind} are [${group.in}, ${group.out}]`,
      );
    }
    const k = group.modules.length;
    group.modules.push(module);

    const x = matmul.input[0];
    const p = linearPrefix(matmul); // the name without /MatMul, /MatMulNBits or /MatMulBnb4
    const nodes: NodeProto[] = [];
    let input = x;
    if (group.scaleIn) {
      const m = node('Mul', `${p}/scale_in/Mul`, [x, block(group.scaleIn, k)]);
      nodes.push(m);
      input = m.output[0];
    }
    // Keep every weight input (a quantized op also takes scales / absmax / zero points).
    const base = withFields(matmul, {
      input: [input, ...matmul.input.slice(1)],
      output: [`${p}/base_output_0`],
    });
    nodes.push(base);
    let scaled = base.output[0];
    if (group.scaleOut) {
      const m = node('Mul', `${p}/scale_out/Mul`, [scaled, block(group.scaleOut, k)]);
      nodes.push(m);
      scaled = m.output[0];
    }
    const xa = node('MatMul', `${p}/lora_A/MatMul`, [x, block(group.a, k)]);
    nodes.push(xa);
    let z = xa.output[0];
    if (options.router && group.router) {
      const routed = routeExperts({
        prefix: p,
        router: options.router,
        x,
        z,
        weights: options.router === 'given' ? group.router : block(group.router, k),
        index: k,
        expertShape: expertShape(kind),
      });
      nodes.push(...routed.nodes);
      z = routed.gated;
    }
    const xab = node('MatMul', `${p}/lora_B/MatMul`, [z, block(group.b, k)]);
    const sum = create(NodeProtoSchema, {
      opType: 'Add',
      name: `${p}/lora/Add`,
      input: [scaled, xab.output[0]],
      output: [matmul.output[0]],
    });
    nodes.push(xab, sum);
    patches.set(matmul, nodes);
  }
  if (wanted) {
    const found = new Set([...groups.values()].flatMap((g) => g.modules));
    const missing = [...wanted].filter((m) => !found.has(m));
    if (missing.length) {
      throw new ModelFormatError(
        'model.onnx',
        missing[0],
        'no linear layer with this module name in the graph',
      );
    }
  }
  // One Split per packed input, into the blocks the modules read: [n * rows, ...] -> n x [rows, ...].
  const reads: NodeProto[] = [];
  const constant = (name: string, values: number[]) => {
    if (!initializers.has(name)) {
      const t = int64Tensor(name, values);
      initializers.set(name, t);
      graph.initializer.push(t);
    }
    return name;
  };
  const fanOut = options.maxSplitOutputs ?? Infinity;
  if (!(fanOut >= 2 && (Number.isInteger(fanOut) || fanOut === Infinity))) {
    throw new InvalidInputError('slots', 'maxSplitOutputs', `must be an integer >= 2, got ${fanOut}`);
  }
  /**
   * Cuts `input` into its `n` modules' blocks; `sizes(counts)` names the int64 tensor of a Split's
   * sizes for pieces of `counts` blocks each. Wider than `fanOut`, it is a tree of Splits: the first
   * cuts runs of consecutive blocks, and each run is cut again.
   */
  const splitBlocks = (input: string, n: number, sizes: (counts: number[]) => string) => {
    const cut = (from: string, first: number, count: number, name: string) => {
      const per = count <= fanOut ? 1 : Math.ceil(count / fanOut);
      const counts: number[] = [];
      for (let left = count; left > 0; left -= per) counts.push(Math.min(per, left));
      const outputs = counts.map((c, i) =>
        c === 1 ? block(input, first + i * per) : `${input}/blocks_${first + i * per}_${c}`,
      );
      reads.push(
        create(NodeProtoSchema, {
          opType: 'Split',
          name,
          input: [from, sizes(counts)],
          output: outputs,
          attribute: [attribute('axis', 0)],
        }),
      );
      counts.forEach((c, i) => {
        if (c > 1)
          cut(outputs[i], first + i * per, c, `/adapter_slots/${input}/Split_${first + i * per}_${c}`);
      });
    };
    cut(input, 0, n, `/adapter_slots/${input}/Split`);
  };
  for (const g of groups.values()) {
    const n = g.modules.length;
    const rank = `lora_rank.${g.kind}`;
    newInputs.push(
      valueInfo(g.a, 'float32', [n * g.in, rank]),
      valueInfo(g.b, 'float32', [`lora_rows.${g.kind}`, g.out]),
    );
    const rows = (size: number) => (counts: number[]) =>
      constant(
        `/adapter_slots/sizes_${counts.join('_')}x${size}`,
        counts.map((c) => c * size),
      );
    splitBlocks(g.a, n, rows(g.in));
    // B's blocks are [rank, out]: the sizes are A's rank times the blocks per piece. (Shape(A)[1] by
    // Gather, not Shape's `start`, which needs opset 15: exported models often declare 14.)
    const shape = node('Shape', `/adapter_slots/${g.a}/Shape`, [g.a]);
    const rankOf = node('Gather', `/adapter_slots/${g.a}/rank`, [
      shape.output[0],
      constant('/adapter_slots/one', [1]),
    ]);
    reads.push(shape, rankOf);
    const rankSizes = new Map<string, string>();
    splitBlocks(g.b, n, (counts) => {
      const key = counts.join('_');
      if (!rankSizes.has(key)) {
        const sizes = node('Mul', `/adapter_slots/${g.b}/sizes_${key}`, [
          rankOf.output[0],
          constant(`/adapter_slots/counts_${key}`, counts),
        ]);
        reads.push(sizes);
        rankSizes.set(key, sizes.output[0]);
      }
      return rankSizes.get(key) as string;
    });
    for (const [scale, size] of [
      [g.scaleIn, g.in],
      [g.scaleOut, g.out],
    ] as const) {
      if (!scale) continue;
      newInputs.push(valueInfo(scale, 'float32', [n * size]));
      splitBlocks(scale, n, rows(size));
    }
    if (g.router && options.router === 'given') {
      newInputs.push(valueInfo(g.router, 'float32', ['batch_size', 'sequence_length', n, 'experts']));
      reads.push(...expertShapeNodes(g.kind, 3).nodes);
    } else if (g.router) {
      newInputs.push(valueInfo(g.router, 'float32', [n * g.in, 'experts']));
      splitBlocks(g.router, n, rows(g.in));
      reads.push(...expertShapeNodes(g.kind, 1).nodes);
    }
  }
  if (options.router && options.router !== 'given') {
    newInputs.push(valueInfo(ROUTER_TOP_K, 'int64', [1]), valueInfo(ROUTER_TEMPERATURE, 'float32', [1]));
    reads.push(topKNode());
  }
  if (options.router) {
    for (const c of Object.values(ROUTER_CONSTANTS)) {
      graph.initializer.push(
        'float' in c
          ? floatTensor(c.name, [...c.float], [...c.dims])
          : int64Tensor(c.name, [...c.ints], [...c.dims]),
      );
    }
    if (options.router === 'given') {
      const widest = Math.max(0, ...[...groups.values()].map((g) => g.modules.length));
      for (let k = 0; k < widest; k++) graph.initializer.push(int64Tensor(moduleIndex(k), [k], []));
    }
  }

  const layout: SlotLayout = { groups: [...groups.values()] };
  if (options.router)
    layout.router = { kind: options.router, topK: ROUTER_TOP_K, temperature: ROUTER_TEMPERATURE };
  if (options.prompt ?? true) {
    const gather = graph.node.find((n) => n.opType === 'Gather' && n.name === '/model/embed_tokens/Gather');
    const table = gather && initializers.get(gather.input[0]);
    if (!gather || !table || table.dims.length !== 2) {
      throw new ModelFormatError(
        'model.onnx',
        '/model/embed_tokens/Gather',
        'no token-embedding Gather over a 2-D table',
      );
    }
    const [vocab, hidden] = table.dims.map(Number);
    const p = '/model/embed_tokens/prompt';
    graph.initializer.push(
      int64Tensor(`${p}/vocab_last`, [vocab - 1], []),
      int64Tensor(`${p}/vocab`, [vocab], []),
      int64Tensor(`${p}/zero`, [0], []),
      int64Tensor(`${p}/axes`, [-1]),
    );
    newInputs.push(valueInfo(PROMPT_EMBEDDINGS, 'float32', ['prompt_rows', hidden]));
    const ids = gather.input[1];
    const tokenIds = node('Min', `${p}/Min`, [ids, `${p}/vocab_last`]);
    const shifted = node('Sub', `${p}/Sub`, [ids, `${p}/vocab`]);
    const virtualIds = node('Max', `${p}/Max`, [shifted.output[0], `${p}/zero`]);
    const isVirtual = node('GreaterOrEqual', `${p}/GreaterOrEqual`, [ids, `${p}/vocab`]);
    const tokens = withFields(gather, {
      input: [gather.input[0], tokenIds.output[0]],
      output: [`${p}/token_output_0`],
    });
    const prompts = node('Gather', `${p}/Gather`, [PROMPT_EMBEDDINGS, virtualIds.output[0]]);
    const where = node('Unsqueeze', `${p}/Unsqueeze`, [isVirtual.output[0], `${p}/axes`]);
    const select = create(NodeProtoSchema, {
      opType: 'Where',
      name: `${p}/Where`,
      input: [where.output[0], prompts.output[0], tokens.output[0]],
      output: [gather.output[0]],
    });
    patches.set(gather, [tokenIds, shifted, virtualIds, isVirtual, tokens, prompts, where, select]);
    layout.prompt = { input: PROMPT_EMBEDDINGS, vocabSize: vocab, hidden };
  }

  const nodes = [...reads, ...graph.node.flatMap((n) => patches.get(n) ?? [n])];
  const patched = withFields(graph, { node: nodes, input: [...graph.input, ...newInputs] });
  return { model: withFields(model, { graph: patched }), layout };
}

function floatTensor(name: string, values: number[], dims: number[]): TensorProto {
  const rawData = new Uint8Array(new Float32Array(values).buffer);
  return create(TensorProtoSchema, { name, dims: dims.map(BigInt), dataType: DataType.FLOAT, rawData });
}

function int64Tensor(name: string, values: number[], dims: number[] = [values.length]): TensorProto {
  const rawData = new Uint8Array(new BigInt64Array(values.map(BigInt)).buffer);
  return create(TensorProtoSchema, { name, dims: dims.map(BigInt), dataType: DataType.INT64, rawData });
}
