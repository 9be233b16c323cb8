/**
 * AdapterFeeds (methods/) -> onnxruntime tensors for the packed slot inputs of the patched graph
 * (graph/adapter-slots.ts). Built once per activation and reused for every run until the next one.
 */
import type * as ort from 'onnxruntime-web';
import type { OrtApi } from './backend.js';
import type { SlotLayout } from '../graph/adapter-slots.js';
import type { AdapterFeeds, UniPeltFeeds } from '../methods/feeds.js';
import { FLOAT32_LOWEST } from '../graph/builder.js';
import {
  loraGateInput,
  UNIPELT_PREFIX_MASK,
  unipeltInputs,
  type UniPeltLayout,
} from '../graph/unipelt-slots.js';
import { IncompatibleAdapterError } from '../errors.js';

/**
 * The feeds for `layout` with `feeds` active (or the exact base when undefined). `minRank` pads
 * every LoRA slot to at least that rank with zeros (which adds exactly 0): onnxruntime-web's WebGPU
 * provider cannot bind the zero-size buffers of a rank-0 slot (GPUDevice.createBindGroup fails).
 */
export function slotTensors(
  ortApi: OrtApi,
  layout: SlotLayout,
  feeds?: AdapterFeeds,
  minRank = 0,
): Record<string, ort.Tensor> {
  const { Tensor } = ortApi;
  const out: Record<string, ort.Tensor> = {};
  const placed = new Set<string>();
  const router = feeds?.router;
  if (router && !layout.router) {
    throw new IncompatibleAdapterError(
      'adapter',
      'router',
      'a mixture of experts needs a graph loaded with a router (slot option router)',
    );
  }
  // Without a mixture, a router graph runs the adapter as one expert (coefficient 1).
  const experts = router?.experts ?? 1;
  for (const g of layout.groups) {
    const n = g.modules.length;
    // The rank holds `experts` equal blocks (a module of the group without a feed is all zeros).
    const widest = Math.max(minRank, ...g.modules.map((m) => feeds?.modules.get(m)?.rank ?? 0));
    const rank = Math.ceil(widest / experts) * experts;
    const a = new Float32Array(n * g.in * rank);
    const b = new Float32Array(n * rank * g.out);
    const scaleIn = g.scaleIn ? new Float32Array(n * g.in).fill(1) : undefined;
    const scaleOut = g.scaleOut ? new Float32Array(n * g.out).fill(1) : undefined;
    const routerWeights = g.router ? new Float32Array(n * g.in * experts) : undefined;
    g.modules.forEach((module, k) => {
      const r = router?.weights.get(module);
      if (r && routerWeights) routerWeights.set(r, k * g.in * experts);
      const f = feeds?.modules.get(module);
      if (!f) return;
      placed.add(module);
      if (experts > 1 && f.rank !== rank) {
        throw new IncompatibleAdapterError(
          'adapter',
          module,
          `rank ${f.rank} where the group's ${experts} experts take ${rank}: experts must be padded alike`,
        );
      }
      // A [in, r] into block k of [n * in, rank] (zero-padded columns); B [r, out] into [n * rank, out].
      for (let i = 0; i < g.in; i++) a.set(f.a.subarray(i * f.rank, (i + 1) * f.rank), (k * g.in + i) * rank);
      b.set(f.b, k * rank * g.out);
      if (f.scaleIn) {
        if (!scaleIn) throw unsupportedScale(module, 'input', 'inputScales');
        scaleIn.set(f.scaleIn, k * g.in);
      }
      if (f.scaleOut) {
        if (!scaleOut) throw unsupportedScale(module, 'output', 'outputScales');
        scaleOut.set(f.scaleOut, k * g.out);
      }
    });
    out[g.a] = new Tensor('float32', a, [n * g.in, rank]);
    out[g.b] = new Tensor('float32', b, [n * rank, g.out]);
    if (g.scaleIn && scaleIn) out[g.scaleIn] = new Tensor('float32', scaleIn, [n * g.in]);
    if (g.scaleOut && scaleOut) out[g.scaleOut] = new Tensor('float32', scaleOut, [n * g.out]);
    if (g.router && layout.router?.kind === 'given') {
      // X-LoRA's scalings are fed per call; between calls (and for a plain adapter) every
      // coefficient is 1, broadcast over the batch and the sequence.
      const c = router?.constant ?? 1;
      out[g.router] = new Tensor('float32', new Float32Array(n * experts).fill(c), [1, 1, n, experts]);
    } else if (g.router && routerWeights) {
      out[g.router] = new Tensor('float32', routerWeights, [n * g.in, experts]);
    }
  }
  if (layout.router && layout.router.kind !== 'given') {
    const topK = router?.topK ?? 1;
    const temperature = router?.temperature ?? 1;
    if (!(Number.isInteger(topK) && topK >= 1 && topK <= experts))
      throw new IncompatibleAdapterError(
        'adapter',
        'router.topK',
        `must be an integer in [1, ${experts}], got ${topK}`,
      );
    if (!(temperature > 0))
      throw new IncompatibleAdapterError('adapter', 'router.temperature', `must be > 0, got ${temperature}`);
    out[layout.router.topK] = new Tensor('int64', BigInt64Array.of(BigInt(topK)), [1]);
    out[layout.router.temperature] = new Tensor('float32', Float32Array.of(temperature), [1]);
  }
  for (const module of feeds?.modules.keys() ?? []) {
    if (!placed.has(module)) {
      throw new IncompatibleAdapterError(
        'adapter',
        module,
        'the loaded graph has no adapter slot for this module',
      );
    }
  }
  const unipelt = feeds?.unipelt;
  if (unipelt && !layout.unipelt)
    throw new IncompatibleAdapterError(
      'adapter',
      'unipelt',
      'UniPELT needs a graph loaded with slots: { unipelt: true }',
    );
  if (layout.unipelt) Object.assign(out, uniPeltTensors(ortApi, layout.unipelt, unipelt, minRank > 0));
  if (layout.prompt) {
    const { hidden, input } = layout.prompt;
    const prompt = feeds?.prompt;
    const rows = Math.max(1, prompt?.tokens ?? 0);
    const data = new Float32Array(rows * hidden);
    if (prompt) data.set(prompt.embeddings);
    out[input] = new Tensor('float32', data, [rows, hidden]);
  } else if (feeds?.prompt) {
    throw new IncompatibleAdapterError(
      'adapter',
      'prompt_embeddings',
      'the loaded graph has no prompt slot (slots.prompt is off)',
    );
  }
  return out;
}

function unsupportedScale(module: string, side: string, option: string): IncompatibleAdapterError {
  return new IncompatibleAdapterError(
    'adapter',
    module,
    `needs an ${side} scale on this module, and the graph was patched without one (slot option ${option})`,
  );
}

/** σ(0 · x + 100) = 1 in float32: a gate that passes the branch unchanged. */
const OPEN_GATE_BIAS = 100;

/** UniPELT's inputs (graph/unipelt-slots.ts): the adapter's, or the parts off (P = 0, m = 0, gates open). */
function uniPeltTensors(
  ortApi: OrtApi,
  layout: UniPeltLayout,
  feeds: UniPeltFeeds | undefined,
  noEmpty: boolean,
): Record<string, ort.Tensor> {
  const { Tensor } = ortApi;
  const out: Record<string, ort.Tensor> = {};
  const openGate = (n: number) => {
    const g = new Float32Array(n + 1);
    g[n] = OPEN_GATE_BIAS;
    return g;
  };
  for (const { module, in: inF } of layout.lora) {
    const g = feeds?.loraGates.get(module) ?? openGate(inF);
    out[loraGateInput(module)] = new Tensor('float32', g, [inF + 1, 1]);
  }
  const d = layout.hidden;
  const lengths = new Set((feeds?.layers ?? []).flatMap((e) => (e.prefix ? [e.prefix.length] : [])));
  if (lengths.size > 1)
    throw new IncompatibleAdapterError(
      'adapter',
      'prefix',
      `prefix lengths differ between layers: ${[...lengths].join(', ')}`,
    );
  const used = [...lengths][0] ?? 0;
  // With no prefix, WebGPU gets one masked position (its buffers cannot be empty).
  const P = used === 0 && noEmpty ? 1 : used;
  const mask = new Float32Array(P);
  if (used === 0) mask.fill(FLOAT32_LOWEST);
  out[UNIPELT_PREFIX_MASK] = new Tensor('float32', mask, [P]);
  const kvSize = layout.heads * P * layout.headDim;
  for (let l = 0; l < layout.layers; l++) {
    const names = unipeltInputs(l);
    const entry = feeds?.layers[l];
    const prefix = entry?.prefix;
    if (used > 0 && !prefix)
      throw new IncompatibleAdapterError(
        'adapter',
        `layers.${l}.prefix`,
        'a prefix on some layers only is not supported',
      );
    const kv = [layout.heads, P, layout.headDim];
    out[names.prefixKeys] = new Tensor('float32', prefix?.keys ?? new Float32Array(kvSize), kv);
    out[names.prefixValues] = new Tensor('float32', prefix?.values ?? new Float32Array(kvSize), kv);
    out[names.prefixGate] = new Tensor('float32', prefix?.gate ?? new Float32Array(d + 1), [d + 1, 1]);
    // No bottleneck: size 0, or on WebGPU one unit of zeros (relu(0) · 0 = 0 exactly).
    const m = entry?.bottleneck?.size ?? (noEmpty ? 1 : 0);
    const bn = entry?.bottleneck;
    out[names.down] = new Tensor('float32', bn?.down ?? new Float32Array((d + 1) * m), [d + 1, m]);
    out[names.up] = new Tensor('float32', bn?.up ?? new Float32Array((m + 1) * d), [m + 1, d]);
    out[names.bottleneckGate] = new Tensor('float32', bn?.gate ?? new Float32Array(d + 1), [d + 1, 1]);
  }
  return out;
}
