/**
 * A mixture of LoRA experts as slot feeds for a graph with a router (graph/expert-router.ts): the
 * experts' branches side by side in every module's A and B, each padded to the largest rank with
 * zeros (which adds exactly 0), and the router's weights per module:
 *
 *   'arrow'  R[:, e] = the Arrow prototype of expert e on the module (./arrow.ts), data-free
 *   'gate'   R given (a learned gate per module, [in, experts] row-major)
 *
 *   Δy = Σ_e c_e(x) · s_e B_e A_e x,   c = softmax(top_k(score(x · R)) / temperature)
 *
 * Experts are LoRA or AdaLoRA adapters, each checked against the base as an adapter alone. DoRA is
 * refused, as PEFT's Arrow and X-LoRA refuse it: its magnitude rescales the whole output, not a
 * branch that a coefficient could weight.
 */
import { IncompatibleAdapterError, InvalidInputError } from '../errors.js';
import { CONFIG_FILE, type PeftAdapter } from '../formats/peft-adapter.js';
import { adapterFeeds } from '../methods/combine.js';
import type { AdapterFeeds, BaseModel, ModuleFeed } from '../methods/feeds.js';
import { linearModules } from '../methods/targets.js';
import { arrowPrototype } from './arrow.js';

export type MixtureRouter =
  | { kind: 'arrow'; topK?: number; temperature?: number }
  | { kind: 'gate'; topK?: number; temperature?: number; weights: ReadonlyMap<string, Float32Array> };

/** PEFT ArrowConfig's defaults: top_k 3, router_temperature 1. */
export const ARROW_TOP_K = 3;

export function mixtureFeeds(
  experts: readonly PeftAdapter[],
  router: MixtureRouter,
  base: BaseModel,
): AdapterFeeds {
  const e = experts.length;
  if (e < 2) throw new InvalidInputError('mixture', 'experts', `needs 2 or more experts, got ${e}`);
  const topK = router.topK ?? (router.kind === 'arrow' ? Math.min(ARROW_TOP_K, e) : e);
  const temperature = router.temperature ?? 1;
  if (!(Number.isInteger(topK) && topK >= 1 && topK <= e))
    throw new InvalidInputError('mixture', 'topK', `must be an integer in [1, ${e}], got ${topK}`);
  if (!(temperature > 0 && Number.isFinite(temperature)))
    throw new InvalidInputError('mixture', 'temperature', `must be a positive number, got ${temperature}`);

  const each = experts.map((adapter) => expertBranches(adapter, base));
  const dims = new Map(linearModules(base.config).map((m) => [m.module, m]));
  const modules = [...new Set(each.flatMap((f) => [...f.keys()]))];
  const rank = Math.max(...each.flatMap((f) => [...f.values()].map((m) => m.rank)));
  const out: AdapterFeeds = { modules: new Map() };
  const weights = new Map<string, Float32Array>();
  for (const module of modules) {
    const { in: inF, out: outF } = dims.get(module) as { in: number; out: number };
    const width = e * rank;
    const a = new Float32Array(inF * width);
    const b = new Float32Array(width * outF);
    const prototypes = new Float32Array(inF * e);
    each.forEach((branches, x) => {
      const f = branches.get(module);
      if (!f) return; // this expert leaves the module alone: zero columns, a zero prototype
      for (let i = 0; i < inF; i++)
        for (let k = 0; k < f.rank; k++) a[i * width + x * rank + k] = f.a[i * f.rank + k];
      b.set(f.b, x * rank * outF);
      if (router.kind === 'arrow') {
        const p = arrowPrototype(f, inF, outF);
        for (let i = 0; i < inF; i++) prototypes[i * e + x] = p[i];
      }
    });
    out.modules.set(module, { rank: width, a, b });
    if (router.kind === 'arrow') weights.set(module, prototypes);
  }
  if (router.kind === 'gate') {
    for (const [module, w] of router.weights) {
      const d = dims.get(module);
      if (!d) throw new InvalidInputError('mixture', `weights.${module}`, 'not a linear module of the base');
      if (w.length !== d.in * e)
        throw new InvalidInputError(
          'mixture',
          `weights.${module}`,
          `has ${w.length} values, expected in x experts = ${d.in} x ${e}`,
        );
      weights.set(module, w);
    }
  }
  out.router = { experts: e, topK, temperature, weights };
  return out;
}

/** One expert's LoRA branches (scaling folded into b), refusing what a coefficient cannot weight. */
function expertBranches(adapter: PeftAdapter, base: BaseModel): Map<string, ModuleFeed> {
  const type = adapter.config.peft_type;
  const file = `${adapter.label}/${CONFIG_FILE}`;
  if (type !== 'LORA' && type !== 'ADALORA')
    throw new IncompatibleAdapterError(file, 'peft_type', `an expert must be LoRA or AdaLoRA, not ${type}`);
  if ('use_dora' in adapter.config && adapter.config.use_dora)
    throw new IncompatibleAdapterError(
      file,
      'use_dora',
      'DoRA experts cannot be mixed (as in PEFT Arrow, X-LoRA)',
    );
  return adapterFeeds([{ adapter, weight: 1 }], base).modules;
}
