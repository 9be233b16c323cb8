/**
 * Gradient checks against central finite differences: a graph's gradients (src/graph/autodiff) and
 * the loss's slopes measured by running the forward graph with each input element nudged by ±eps.
 * In float64 with eps 1e-6 the differences are exact to ~1e-9 relative, so a wrong rule shows at once.
 */
import { toBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { ModelProtoSchema, type ModelProto } from '../../src/formats/onnx/onnx_pb.js';
import { differentiate } from '../../src/graph/autodiff/differentiate.js';
import { GraphBuilder, type DType } from '../../src/graph/builder.js';

export type Floats = Float64Array | Float32Array;
export interface Feed {
  data: Floats | BigInt64Array | Uint8Array;
  dims: number[];
}

/**
 * A session with onnxruntime's basic optimizations only: the extended ones fuse into kernels that
 * hold constants as float32 attributes (a Mul by 1/√d folded into FusedMatMul's alpha) or exist only
 * for float32 (x·σ(x) into QuickGelu), which a float64 oracle must not get.
 */
export async function session(model: ModelProto): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(toBinary(ModelProtoSchema, model), { graphOptimizationLevel: 'basic' });
}

export function tensors(feeds: Record<string, Feed>): Record<string, ort.Tensor> {
  return Object.fromEntries(
    Object.entries(feeds).map(([name, f]) => {
      const type =
        f.data instanceof Float64Array
          ? 'float64'
          : f.data instanceof Float32Array
            ? 'float32'
            : f.data instanceof BigInt64Array
              ? 'int64'
              : 'bool';
      return [name, new ort.Tensor(type, f.data, f.dims)];
    }),
  );
}

/** Seeded uniform values in [lo, hi). */
export function random(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  let s = seed >>> 0 || 1;
  return Float64Array.from({ length: n }, () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return lo + ((s >>> 0) / 2 ** 32) * (hi - lo);
  });
}

export interface GradientReport {
  /** Largest |analytic - numeric| / (1 + |numeric|) over every checked element. */
  worst: number;
  /** Largest |numeric| seen: a check whose gradients are all ~0 proves little. */
  scale: number;
  analytic: Map<string, Floats>;
  numeric: Map<string, Float64Array>;
}

/**
 * The gradients of `loss` w.r.t. the `wrt` inputs from the differentiated graph, and by central
 * differences of the forward graph. `indices` limits the elements checked per input (default all).
 */
export async function checkGradients(
  model: ModelProto,
  loss: string,
  wrt: readonly string[],
  feeds: Record<string, Feed>,
  { eps = 1e-6, indices }: { eps?: number; indices?: (name: string, n: number) => number[] } = {},
): Promise<GradientReport> {
  const trained = differentiate(model, { loss, wrt });
  const gradSession = await session(trained);
  const out = await gradSession.run(tensors(feeds));
  const forward = await session(model);
  const lossAt = async (f: Record<string, Feed>) => Number((await forward.run(tensors(f)))[loss].data[0]);
  const analytic = new Map<string, Floats>();
  const numeric = new Map<string, Float64Array>();
  let worst = 0;
  let scale = 0;
  for (const w of wrt) {
    const grad = out[`${w}_grad`].data as Floats;
    const base = feeds[w].data as Floats;
    const n = base.length;
    const fd = new Float64Array(n).fill(NaN);
    for (const i of indices?.(w, n) ?? Array.from({ length: n }, (_, k) => k)) {
      const nudged = (delta: number) => {
        const data = base.slice() as Floats;
        data[i] += delta;
        return { ...feeds, [w]: { data, dims: feeds[w].dims } };
      };
      fd[i] = ((await lossAt(nudged(eps))) - (await lossAt(nudged(-eps)))) / (2 * eps);
      worst = Math.max(worst, Math.abs(grad[i] - fd[i]) / (1 + Math.abs(fd[i])));
      scale = Math.max(scale, Math.abs(fd[i]));
    }
    analytic.set(w, grad);
    numeric.set(w, fd);
  }
  await gradSession.release();
  await forward.release();
  return { worst, scale, analytic, numeric };
}

/**
 * A one-op test graph: `body` adds nodes over the inputs and returns the values to weigh; the loss
 * is Σ_k Σ (y_k ⊙ R_k) with fixed random R_k shaped like y_k (found by running the body once), so
 * every output element gets its own weight.
 */
export async function weightedLossGraph(
  inputs: { name: string; dtype: DType; dims: (number | string)[] }[],
  body: (g: GraphBuilder) => string[],
  feeds: Record<string, Feed>,
  { seed = 7, dtype = 'float64' }: { seed?: number; dtype?: 'float32' | 'float64' } = {},
): Promise<ModelProto> {
  const make = () => {
    const g = new GraphBuilder();
    for (const i of inputs) g.input(i.name, i.dtype, i.dims);
    return { g, ys: body(g) };
  };
  const probe = make();
  probe.ys.forEach((y) => probe.g.output(y, dtype));
  const s = await session(probe.g.build());
  const shapes = (await s.run(tensors(feeds))) as Record<string, ort.Tensor>;
  await s.release();
  const { g, ys } = make();
  const terms = ys.map((y, k) => {
    const dims = shapes[y].dims as number[];
    const n = dims.reduce((a, b) => a * b, 1);
    const r = random(n, seed + k);
    const w = g.initializer(`R_${k}`, dtype === 'float32' ? Float32Array.from(r) : r, dims);
    const [prod] = g.node('Mul', [y, w]);
    return g.node('ReduceSum', [prod], { attrs: { keepdims: 0 } })[0];
  });
  const [loss] =
    terms.length === 1
      ? g.node('Identity', terms, { outputs: ['loss'] })
      : g.node('Sum', terms, { outputs: ['loss'] });
  g.output(loss, dtype, []);
  return g.build();
}
