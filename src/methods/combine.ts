/**
 * The feeds of a set of active adapters: each checked against the base, turned into feeds by its
 * method (./registry.ts), and combined as PEFT combines active adapters:
 *
 * - LoRA / AdaLoRA / DoRA: PEFT's multi-adapter forward (lora/layer.py Linear.forward), one adapter
 *   after the other on the running output, each scaling times its blend weight (set_scale):
 *   y ← gᵢ ⊙ (y + wᵢ sᵢ Bᵢ Aᵢ x), gᵢ = 1 without DoRA. Unrolled, that is the slot form
 *     scale_out = Π gᵢ,   a = [a₁ … a_k],   b = [b₁ ⊙ Π_{j>1} g_j ; … ; b_k]   (rows stacked)
 *   where bᵢ already holds wᵢ sᵢ gᵢ Bᵢᵀ: the ranks concatenate. Without DoRA it is Σ wᵢ sᵢ Bᵢ Aᵢ,
 *   what add_weighted_adapter(combination_type="cat") builds.
 * - IA3: l = Σ wᵢ lᵢ (IA3Model.add_weighted_adapter).
 * - At most one prompt-learning adapter, with or without the others: its virtual tokens run through
 *   the adapted linears; a prefix stays as saved.
 *
 * Refused with a typed error: an adapter that does not fit the base, LoRA on the embedding, saved
 * base weights that differ from the base, two prompt-learning adapters, IA3 with LoRA / AdaLoRA
 * (PEFT's PeftMixedModel cannot mix them), a weight on a prompt-learning adapter, non-finite weights.
 */
import { IncompatibleAdapterError, InvalidInputError } from '../errors.js';
import {
  CONFIG_FILE,
  type PeftAdapter,
  WEIGHTS_FILE,
  adapterTensor,
  checkAdapterAgainstBase,
  loraModules,
  savedBaseWeights,
} from '../formats/peft-adapter.js';
import { isPromptLearning } from '../formats/peft-config.js';
import type { AdapterFeeds, BaseModel, ModuleFeed } from './feeds.js';
import { METHODS } from './registry.js';
import { type LinearModule, linearModules } from './targets.js';

/** An adapter to apply, with its blend weight (default 1). */
export interface ActiveAdapter {
  adapter: PeftAdapter;
  weight?: number;
}

/** The slot feeds of the active adapters, in order (order matters for DoRA). Empty: the base. */
export function adapterFeeds(active: readonly ActiveAdapter[], base: BaseModel): AdapterFeeds {
  checkCombination(active);
  for (const { adapter } of active) checkSupported(adapter, base);

  const out: AdapterFeeds = { modules: new Map() };
  const chains = new Map<string, Chain>();
  const sums = new Map<string, Sum>();
  const order: string[] = [];
  const linear = new Map(linearModules(base.config).map((m) => [m.module, m]));
  for (const { adapter, weight = 1 } of active) {
    const method = METHODS.get(adapter.config.peft_type);
    if (method === undefined) {
      throw new IncompatibleAdapterError(
        `${adapter.label}/${CONFIG_FILE}`,
        'peft_type',
        `${adapter.config.peft_type} has no adapter method`,
      );
    }
    const feeds = method.feeds(adapter, weight, base);
    if (feeds.prompt !== undefined) out.prompt = feeds.prompt;
    if (feeds.prefix !== undefined) out.prefix = feeds.prefix;
    for (const [module, feed] of feeds.modules) {
      if (!chains.has(module) && !sums.has(module)) order.push(module);
      if (method.blend === 'sequential') chainFeed(chains, module, feed);
      else if (method.blend === 'sum') sumFeed(sums, module, feed, adapter);
      else throw new TypeError(`${method.peftType} fed module ${module} but declares no blend`);
    }
  }
  for (const module of order) {
    const chain = chains.get(module);
    const sum = sums.get(module);
    if (chain !== undefined && sum !== undefined)
      throw new TypeError(`${module}: IA3 and LoRA on one module`);
    const dims = linear.get(module);
    if (dims === undefined) throw new TypeError(`${module} is not a linear module of the base`);
    out.modules.set(module, chain !== undefined ? chainToFeed(chain, dims) : sumToFeed(sum as Sum));
  }
  return out;
}

/** Branches in order, and the scale_out of every later one applied to the earlier branches' columns. */
interface Chain {
  scaleOut?: Float64Array;
  branches: { feed: ModuleFeed; columns?: Float64Array }[];
}

/** y ← scaleOut ⊙ y + branch: the new scale multiplies the running one and the earlier branches. */
function chainFeed(chains: Map<string, Chain>, module: string, feed: ModuleFeed): void {
  if (feed.scaleIn !== undefined) throw new TypeError(`${module}: a sequential feed cannot scale the input`);
  let chain = chains.get(module);
  if (chain === undefined) chains.set(module, (chain = { branches: [] }));
  const g = feed.scaleOut;
  if (g !== undefined) {
    chain.scaleOut =
      chain.scaleOut === undefined ? Float64Array.from(g) : chain.scaleOut.map((v, o) => v * g[o]);
    for (const branch of chain.branches) {
      branch.columns =
        branch.columns === undefined ? Float64Array.from(g) : branch.columns.map((v, o) => v * g[o]);
    }
  }
  chain.branches.push({ feed });
}

function chainToFeed({ scaleOut, branches }: Chain, { in: inF, out: outF }: LinearModule): ModuleFeed {
  const scale = scaleOut === undefined ? undefined : Float32Array.from(scaleOut);
  if (branches.length === 1 && branches[0].columns === undefined) {
    const { rank, a, b } = branches[0].feed;
    return scale === undefined ? { rank, a, b } : { rank, a, b, scaleOut: scale };
  }
  const rank = branches.reduce((s, { feed }) => s + feed.rank, 0);
  const a = new Float32Array(inF * rank);
  const b = new Float32Array(rank * outF);
  let offset = 0;
  for (const { feed, columns } of branches) {
    const r = feed.rank;
    for (let i = 0; i < inF; i++) for (let k = 0; k < r; k++) a[i * rank + offset + k] = feed.a[i * r + k];
    for (let k = 0; k < r; k++) {
      for (let o = 0; o < outF; o++) {
        const v = feed.b[k * outF + o];
        b[(offset + k) * outF + o] = columns === undefined ? v : v * columns[o];
      }
    }
    offset += r;
  }
  return scale === undefined ? { rank, a, b } : { rank, a, b, scaleOut: scale };
}

interface Sum {
  scaleIn?: Float64Array;
  scaleOut?: Float64Array;
}

function sumFeed(sums: Map<string, Sum>, module: string, feed: ModuleFeed, adapter: PeftAdapter): void {
  if (feed.rank !== 0) throw new TypeError(`${module}: a summed feed cannot have a branch`);
  let sum = sums.get(module);
  if (sum === undefined) sums.set(module, (sum = {}));
  const add = (acc: Float64Array | undefined, v: Float32Array) =>
    acc === undefined ? Float64Array.from(v) : acc.map((x, i) => x + v[i]);
  if (feed.scaleIn !== undefined) sum.scaleIn = add(sum.scaleIn, feed.scaleIn);
  if (feed.scaleOut !== undefined) sum.scaleOut = add(sum.scaleOut, feed.scaleOut);
  if (sum.scaleIn !== undefined && sum.scaleOut !== undefined) {
    throw new IncompatibleAdapterError(
      `${adapter.label}/${CONFIG_FILE}`,
      'feedforward_modules',
      `IA3 scales the ${feed.scaleIn !== undefined ? 'input' : 'output'} of ${module} here and the ` +
        `${feed.scaleIn !== undefined ? 'output' : 'input'} in an earlier adapter: they cannot be blended`,
    );
  }
}

function sumToFeed({ scaleIn, scaleOut }: Sum): ModuleFeed {
  const feed: ModuleFeed = { rank: 0, a: new Float32Array(0), b: new Float32Array(0) };
  if (scaleIn !== undefined) feed.scaleIn = Float32Array.from(scaleIn);
  if (scaleOut !== undefined) feed.scaleOut = Float32Array.from(scaleOut);
  return feed;
}

/** The combinations this runtime (and PEFT) can run, and finite weights; a typed error otherwise. */
function checkCombination(active: readonly ActiveAdapter[]): void {
  active.forEach(({ adapter, weight }, i) => {
    if (weight === undefined) return;
    if (typeof weight !== 'number' || !Number.isFinite(weight)) {
      throw new InvalidInputError(
        'adapters',
        `adapters[${i}].weight`,
        `must be a finite number, got ${weight}`,
      );
    }
    if (isPromptLearning(adapter.config) && weight !== 1) {
      throw new InvalidInputError(
        'adapters',
        `adapters[${i}].weight`,
        `${adapter.label} is ${adapter.config.peft_type}, which has no blend weight (got ${weight})`,
      );
    }
  });
  const prompts = active.filter(({ adapter }) => isPromptLearning(adapter.config));
  if (prompts.length > 1) {
    throw new IncompatibleAdapterError(
      'adapters',
      undefined,
      `${prompts.length} prompt-learning adapters (${prompts.map((p) => p.adapter.label).join(', ')}): ` +
        'only one can be active at a time',
    );
  }
  const types = new Set(active.map(({ adapter }) => adapter.config.peft_type));
  if (types.has('IA3') && (types.has('LORA') || types.has('ADALORA'))) {
    throw new IncompatibleAdapterError(
      'adapters',
      undefined,
      'IA3 cannot be combined with LoRA or AdaLoRA (PEFT mixes only LoRA, LoHa, LoKr, AdaLoRA and OFT)',
    );
  }
}

/** Fits the base, and uses nothing the slots cannot feed. */
function checkSupported(adapter: PeftAdapter, base: BaseModel): void {
  checkAdapterAgainstBase(adapter, base.config);
  const file = `${adapter.label}/${WEIGHTS_FILE}`;
  for (const [module, t] of loraModules(adapter)) {
    if (t.kind === 'embedding') {
      throw new IncompatibleAdapterError(
        file,
        t.a,
        `LoRA on ${module} (lora_embedding_A / lora_embedding_B) is not supported yet`,
      );
    }
  }
  for (const { module, tensor } of savedBaseWeights(adapter)) {
    const saved = adapterTensor(adapter, tensor);
    const own = base.weight(module);
    let same = saved.length === own.length;
    for (let i = 0; same && i < saved.length; i++) same = saved[i] === own[i];
    if (!same) {
      throw new IncompatibleAdapterError(
        file,
        tensor,
        `differs from the base model's ${module} weight: adapters that replace base weights (a trained or ` +
          'resized embedding or lm_head) are not supported yet',
      );
    }
  }
}
