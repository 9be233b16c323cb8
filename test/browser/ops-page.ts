/**
 * Node-by-node comparison of onnxruntime-web's WebGPU execution provider (onnxruntime-web/webgpu)
 * with its wasm backend, in the page: the model's graph with adapter slots (and a real adapter's
 * feeds), every node output made a graph output, run on both with the same feeds — a prefill of a
 * prompt, then one decode step on the prefill's cache. A node whose inputs agree and whose output
 * does not is an op that computes differently on WebGPU.
 */
import { create } from '@bufbuild/protobuf';
import type * as ort from 'onnxruntime-web';
import { loadBackend, type Backend } from '../../src/engine/backend.js';
import { slotTensors } from '../../src/engine/slot-feeds.js';
import { urlSource } from '../../src/formats/files.js';
import { readModelFolder } from '../../src/formats/model-folder.js';
import {
  decodeModel,
  encodeModel,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type GraphProto,
  type ModelProto,
} from '../../src/formats/onnx/index.js';
import { parsePeftAdapter } from '../../src/formats/peft-adapter.js';
import { addAdapterSlots } from '../../src/graph/adapter-slots.js';
import { graphBaseModel } from '../../src/graph/base-weights.js';
import { adapterFeeds } from '../../src/methods/combine.js';
import type { AdapterFeeds } from '../../src/methods/feeds.js';

export interface OpMismatch {
  node: string;
  opType: string;
  output: string;
  step: 'prefill' | 'decode';
  maxAbsDiff: number;
  /** Largest |value| of the wasm output, for scale. */
  maxAbs: number;
  /** True when every input of the node agreed: the op itself computes differently. */
  inputsAgree: boolean;
}

export interface OpComparison {
  /** Op types of the graph, sorted. */
  ops: string[];
  /** Outputs compared per op type, and the largest difference relative to (1 + |wasm value|). */
  perOp: Record<string, { outputs: number; maxRelDiff: number }>;
  /** Node outputs compared (both steps). */
  compared: number;
  mismatches: OpMismatch[];
  /** The largest |logit difference| of each step. */
  logitsMaxAbsDiff: { prefill: number; decode: number };
}

/** An output "agrees" when |webgpu - wasm| <= TOLERANCE * (1 + |wasm|). */
const TOLERANCE = 1e-3;

const BOOL = 9;
const INT64 = 7;
const COMPARISONS = new Set([
  'Equal',
  'Less',
  'LessOrEqual',
  'Greater',
  'GreaterOrEqual',
  'And',
  'Or',
  'Not',
  'Xor',
]);

/** The element type of every value of the graph, propagated in node order (enough for these graphs). */
function elementTypes(graph: GraphProto): Map<string, number> {
  const types = new Map<string, number>();
  for (const v of graph.input) {
    if (v.type?.value.case === 'tensorType') types.set(v.name, v.type.value.value.elemType);
  }
  for (const t of graph.initializer) types.set(t.name, t.dataType);
  for (const node of graph.node) {
    let type: number | undefined;
    const attr = (name: string) => node.attribute.find((a) => a.name === name);
    if (node.opType === 'Shape' || node.opType === 'Size') type = INT64;
    else if (node.opType === 'Cast') type = Number(attr('to')?.i);
    else if (COMPARISONS.has(node.opType)) type = BOOL;
    else if (node.opType === 'Constant') type = attr('value')?.t?.dataType;
    else if (node.opType === 'Where') type = types.get(node.input[1]);
    else type = types.get(node.input[0]);
    if (type !== undefined) for (const out of node.output) types.set(out, type);
  }
  return types;
}

/** The model with every node output that has a known type as a graph output. */
function exposeAll(model: ModelProto): { model: ModelProto; names: string[] } {
  const graph = model.graph as GraphProto;
  const types = elementTypes(graph);
  const existing = new Set(graph.output.map((o) => o.name));
  const names: string[] = [];
  const extra = graph.node.flatMap((node) =>
    node.output
      .filter((name) => name && !existing.has(name) && types.has(name))
      .map((name) => {
        names.push(name);
        const tensorType = create(TypeProto_TensorSchema, { elemType: types.get(name) });
        return create(ValueInfoProtoSchema, {
          name,
          type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensorType } }),
        });
      }),
  );
  const exposed = { ...model, graph: { ...graph, output: [...graph.output, ...extra] } } as ModelProto;
  return { model: exposed, names };
}

type Feeds = Record<string, ort.Tensor>;

function values(t: ort.Tensor): Float64Array {
  const d = t.data as ArrayLike<number | bigint | boolean>;
  return Float64Array.from({ length: d.length }, (_, i) => Number(d[i]));
}

export async function compareOps(
  modelUrl: string,
  adapterUrl: string | undefined,
  wasmPaths: string,
): Promise<OpComparison> {
  const files = urlSource(modelUrl);
  const folder = await readModelFolder(files);
  const base = decodeModel(folder.onnx, folder.onnxFile);
  const { model: patched, layout } = addAdapterSlots(base);
  const { model, names } = exposeAll(patched);
  const bytes = encodeModel(model);
  let feeds: AdapterFeeds | undefined;
  if (adapterUrl !== undefined) {
    const source = urlSource(adapterUrl);
    const adapter = parsePeftAdapter(
      {
        config: (await source.read('adapter_config.json')) as Uint8Array,
        weights: (await source.read('adapter_model.safetensors')) as Uint8Array,
      },
      adapterUrl,
    );
    feeds = adapterFeeds([{ adapter }], graphBaseModel(base, folder.config));
  }

  const backends: Backend[] = [
    await loadBackend({ backend: 'wasm', wasmPaths }),
    await loadBackend({ backend: 'webgpu', wasmPaths }),
  ];
  const sessions = await Promise.all(
    backends.map((b) => b.ort.InferenceSession.create(bytes, { ...b.sessionOptions })),
  );
  const { config } = folder;
  const kvHeads = config.num_key_value_heads;
  const headDim = config.hidden_size / config.num_attention_heads;
  const prompt = [1, 403, 407, 261, 1000 % config.vocab_size, 75, 9, 42];

  /** Feeds for `tokens` after `past` (per past name: [kvHeads, length, headDim] float32). */
  const makeFeeds = (
    b: Backend,
    tokens: number[],
    past: Map<string, Float32Array>,
    length: number,
  ): Feeds => {
    const { Tensor } = b.ort;
    const total = length + tokens.length;
    const f: Feeds = {
      input_ids: new Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, tokens.length]),
      attention_mask: new Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      position_ids: new Tensor(
        'int64',
        BigInt64Array.from(tokens, (_, i) => BigInt(length + i)),
        [1, tokens.length],
      ),
      // Slots at rank 0 (modules the adapter leaves alone) as rank 1 of zeros on both backends
      // alike: the WebGPU backend feeds them so (engine/decoder-session.ts), and the comparison
      // needs the same shapes.
      ...slotTensors(b.ort, layout, feeds, 1),
    };
    for (let i = 0; i < config.num_hidden_layers; i++) {
      for (const kind of ['key', 'value']) {
        const name = `past_key_values.${i}.${kind}`;
        f[name] = new Tensor('float32', past.get(name) ?? new Float32Array(0), [1, kvHeads, length, headDim]);
      }
    }
    return f;
  };

  const graph = model.graph as GraphProto;
  const producer = new Map<string, string>();
  for (const node of graph.node) for (const out of node.output) producer.set(out, node.name);
  const perOp: OpComparison['perOp'] = {};
  const mismatches: OpMismatch[] = [];
  const logitsMaxAbsDiff = { prefill: 0, decode: 0 };
  let compared = 0;

  let past = new Map<string, Float32Array>();
  let length = 0;
  for (const [step, tokens] of [
    ['prefill', prompt],
    ['decode', [prompt[3]]],
  ] as const) {
    const outputs = await Promise.all(
      sessions.map((s, k) => s.run(makeFeeds(backends[k], [...tokens], past, length))),
    );
    const [wasm, gpu] = outputs;
    const bad = new Set<string>();
    const diffs = new Map<string, { maxAbsDiff: number; maxAbs: number; maxRel: number }>();
    for (const name of [...names, 'logits']) {
      const a = wasm[name];
      const b = gpu[name];
      if (!a || !b) continue;
      const x = values(a);
      const y = values(b);
      let maxAbsDiff = x.length === y.length ? 0 : Infinity;
      let maxAbs = 0;
      let maxRel = maxAbsDiff;
      for (let i = 0; i < Math.min(x.length, y.length); i++) {
        const d = Math.abs(x[i] - y[i]);
        if (!(d <= maxAbsDiff)) maxAbsDiff = Number.isNaN(d) ? Infinity : Math.max(maxAbsDiff, d);
        maxAbs = Math.max(maxAbs, Math.abs(x[i]));
        const r = d / (1 + Math.abs(x[i]));
        maxRel = Number.isNaN(r) ? Infinity : Math.max(maxRel, r);
      }
      diffs.set(name, { maxAbsDiff, maxAbs, maxRel });
      if (maxRel > TOLERANCE) bad.add(name);
    }
    logitsMaxAbsDiff[step] = diffs.get('logits')?.maxAbsDiff ?? Infinity;
    for (const node of graph.node) {
      for (const out of node.output) {
        const d = diffs.get(out);
        if (!d) continue;
        compared++;
        const entry = (perOp[node.opType] ??= { outputs: 0, maxRelDiff: 0 });
        entry.outputs++;
        entry.maxRelDiff = Math.max(entry.maxRelDiff, d.maxRel);
        if (bad.has(out)) {
          mismatches.push({
            node: node.name,
            opType: node.opType,
            output: out,
            step,
            maxAbsDiff: d.maxAbsDiff,
            maxAbs: d.maxAbs,
            inputsAgree: node.input.every((i) => !i || !producer.has(i) || !bad.has(i)),
          });
        }
      }
    }
    // The next step starts from the wasm run's cache, fed to both.
    const next = new Map<string, Float32Array>();
    for (let i = 0; i < config.num_hidden_layers; i++) {
      for (const kind of ['key', 'value']) {
        next.set(`past_key_values.${i}.${kind}`, wasm[`present.${i}.${kind}`].data as Float32Array);
      }
    }
    past = next;
    length += tokens.length;
  }
  await Promise.all(sessions.map((s) => s.release()));
  return {
    ops: [...new Set(graph.node.map((n) => n.opType))].sort(),
    perOp,
    compared,
    mismatches,
    logitsMaxAbsDiff,
  };
}
