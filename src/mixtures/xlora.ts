/**
 * X-LoRA (PEFT peft_type "XLORA", tuners/xlora): a classifier on the base model's last hidden state
 * turns every token into scalings over LoRA experts, per LoRA module, and each expert's branch is
 * weighted by its scaling:
 *
 *   scaling pass   h_t = the model's last hidden state (after the final norm) with every expert
 *                  scaled by scaling_pass_value (0 by default: the base) and global_scaling_weight
 *                  (the dummy scalings reach the LoRA layers as scalings), model.py _pre_forward
 *   classifier     logits = last(inner(h_t)), inner = xlora_depth - 1 Linear layers (ReLU between
 *                  them with enable_relu_and_dropout); [E] or, layerwise_scalings, [M · E]
 *                  scalings[t, m, e] = softmax(logits / softmax_temperature) over e (enable_softmax)
 *                  top_k_lora: the other experts of (t, m) get 0 (layer.py get_maybe_topk_scalings)
 *   LoRA module m  y = W x + Σ_e B_e A_e (x · scalings[t, m, e]) · s_e · global_scaling_weight
 *
 * m counts the LoRA-wrapped modules in the model's module order (convert_layers_to_xlora's
 * layer_number): the modules any expert targets, as methods/targets.ts linearModules orders them.
 * PEFT runs X-LoRA without a KV cache (model.py refuses use_cache and generate turns it off); the
 * scaling pass is causal, so a token's scalings depend only on the tokens up to it, and running it
 * with its own cache beside the main pass's gives the same numbers. That is what `XLoraDriver` does
 * for every forward call (engine/decoder-session.ts PerCallFeeds).
 *
 * Files: adapter_config.json (XLoraConfig) and adapter_model.safetensors with the classifier only
 * (utils/save_and_load.py keeps the keys with "internal_xlora_classifier"); the experts are LoRA
 * adapters added to the runtime, in the order of the config's `adapters`. Refused: enable_softmax_topk
 * (PEFT's softmax there runs over every nonzero scaling of the batch at once, across tokens).
 */
import type * as ort from 'onnxruntime-web';
import { AdapterFormatError } from '../errors.js';
import { checkFinite, readConfigJson, type PeftAdapter } from '../formats/peft-adapter.js';
import { parseSafetensors, tensorToFloat32 } from '../formats/safetensors.js';
import type { Conditioning, DecoderSession, KvCache, PerCallFeeds } from '../engine/decoder-session.js';
import type { SlotLayout } from '../graph/adapter-slots.js';
import type { AdapterFeeds, BaseModel } from '../methods/feeds.js';
import { linearModules } from '../methods/targets.js';
import { adapterFeeds } from '../methods/combine.js';
import { mixtureFeeds } from './expert-feeds.js';

export interface XLoraConfig {
  hidden_size: number;
  adapters: Record<string, string>;
  enable_softmax: boolean;
  layerwise_scalings: boolean;
  xlora_depth: number;
  enable_relu_and_dropout: boolean;
  softmax_temperature: number;
  top_k_lora: number | null;
  scaling_pass_value: number;
  global_scaling_weight: number;
}

export interface XLoraClassifier {
  /** inner layers then last: W [out, in] row-major (torch layout), optional bias. */
  layers: { w: Float32Array; b?: Float32Array; in: number; out: number }[];
  relu: boolean;
}

export interface XLoraAdapter {
  label: string;
  config: XLoraConfig;
  classifier: XLoraClassifier;
}

const CONFIG = 'adapter_config.json';
const WEIGHTS = 'adapter_model.safetensors';

export function parseXLora(
  files: { config: Uint8Array | object; weights: Uint8Array },
  label = 'adapter',
): XLoraAdapter {
  const cfgFile = `${label}/${CONFIG}`;
  const parsed = readConfigJson(files.config, cfgFile);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new AdapterFormatError(cfgFile, undefined, 'must be a JSON object');
  const raw = parsed as Record<string, unknown>;
  const fail = (field: string, why: string) => new AdapterFormatError(cfgFile, field, why);
  if (raw.peft_type !== 'XLORA')
    throw fail('peft_type', `expected "XLORA", got ${JSON.stringify(raw.peft_type)}`);
  const num = (field: string, fallback: number) => {
    const v = raw[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw fail(field, `must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const bool = (field: string, fallback: boolean) => {
    const v = raw[field] ?? fallback;
    if (typeof v !== 'boolean') throw fail(field, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  if (bool('enable_softmax_topk', false))
    throw fail('enable_softmax_topk', "not supported: PEFT's softmax there spans every token of the batch");
  const adapters = raw.adapters;
  if (
    !adapters ||
    typeof adapters !== 'object' ||
    Array.isArray(adapters) ||
    Object.keys(adapters).length < 1
  )
    throw fail('adapters', 'must name the LoRA experts ({ name: path })');
  const topK = raw.top_k_lora ?? null;
  if (topK !== null && !(Number.isInteger(topK) && (topK as number) >= 1))
    throw fail('top_k_lora', `must be null or an integer >= 1, got ${JSON.stringify(topK)}`);
  const config: XLoraConfig = {
    hidden_size: num('hidden_size', NaN),
    adapters: adapters as Record<string, string>,
    enable_softmax: bool('enable_softmax', true),
    layerwise_scalings: bool('layerwise_scalings', false),
    xlora_depth: num('xlora_depth', 1),
    enable_relu_and_dropout: bool('enable_relu_and_dropout', false),
    softmax_temperature: num('softmax_temperature', 1),
    top_k_lora: topK as number | null,
    scaling_pass_value: num('scaling_pass_value', 0),
    global_scaling_weight: num('global_scaling_weight', 1),
  };
  // The classifier: inner.{i} Linear layers (i counts ReLU / Dropout modules too) and last.
  const file = `${label}/${WEIGHTS}`;
  const st = parseSafetensors(files.weights, { file, error: AdapterFormatError });
  const find = (suffix: string) =>
    [...st.tensors.keys()].find((k) => k.endsWith(`internal_xlora_classifier.${suffix}`));
  const linear = (prefix: string) => {
    const wKey = find(`${prefix}.weight`);
    if (!wKey) throw new AdapterFormatError(file, `internal_xlora_classifier.${prefix}.weight`, 'missing');
    const t = st.tensors.get(wKey)!;
    if (t.shape.length !== 2)
      throw new AdapterFormatError(file, wKey, `expected 2-D, got [${t.shape.join(', ')}]`);
    const bKey = find(`${prefix}.bias`);
    const bias = bKey === undefined ? undefined : st.tensors.get(bKey)!;
    if (bias && (bias.shape.length !== 1 || bias.shape[0] !== t.shape[0]))
      throw new AdapterFormatError(file, bKey, `shape [${bias.shape.join(', ')}], expected [${t.shape[0]}]`);
    checkFinite(wKey, t, file);
    if (bias) checkFinite(bKey as string, bias, file);
    return {
      w: tensorToFloat32(t, file, wKey, AdapterFormatError),
      b: bias ? tensorToFloat32(bias, file, bKey as string, AdapterFormatError) : undefined,
      out: t.shape[0],
      in: t.shape[1],
    };
  };
  const inner = [...st.tensors.keys()]
    .map((k) => /internal_xlora_classifier\.inner\.(\d+)\.weight$/.exec(k)?.[1])
    .filter((i): i is string => i !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
  if (inner.length !== config.xlora_depth - 1)
    throw fail(
      'xlora_depth',
      `${config.xlora_depth} implies ${config.xlora_depth - 1} inner layers; the weights have ${inner.length}`,
    );
  const layers = [...inner.map((i) => linear(`inner.${i}`)), linear('last')];
  for (let i = 1; i < layers.length; i++)
    if (layers[i].in !== layers[i - 1].out)
      throw new AdapterFormatError(
        file,
        i === layers.length - 1
          ? 'internal_xlora_classifier.last.weight'
          : `internal_xlora_classifier.inner.${inner[i]}.weight`,
        `reads ${layers[i].in} features; the layer before gives ${layers[i - 1].out}`,
      );
  if (layers[0].in !== config.hidden_size)
    throw new AdapterFormatError(
      file,
      'internal_xlora_classifier',
      `reads ${layers[0].in} features, hidden_size is ${config.hidden_size}`,
    );
  return { label, config, classifier: { layers, relu: config.enable_relu_and_dropout } };
}

/** The scalings [M, E] of one token's hidden state (module m of the experts' targets, expert e). */
export function xloraScalings(
  x: XLoraAdapter,
  hidden: ArrayLike<number>,
  modules: number,
  experts: number,
): Float64Array {
  let h = Float64Array.from(hidden);
  x.classifier.layers.forEach((layer, i) => {
    const out = new Float64Array(layer.out);
    for (let o = 0; o < layer.out; o++) {
      let s = layer.b ? layer.b[o] : 0;
      for (let j = 0; j < layer.in; j++) s += layer.w[o * layer.in + j] * h[j];
      out[o] = x.classifier.relu && i < x.classifier.layers.length - 1 ? Math.max(0, s) : s;
    }
    h = out;
  });
  const { config } = x;
  if (h.length !== (config.layerwise_scalings ? modules * experts : experts))
    throw new AdapterFormatError(
      `${x.label}/${WEIGHTS}`,
      'internal_xlora_classifier.last.weight',
      `gives ${h.length} outputs for ${experts} experts${config.layerwise_scalings ? ` x ${modules} modules` : ''}`,
    );
  const out = new Float64Array(modules * experts);
  for (let m = 0; m < modules; m++) {
    const row = config.layerwise_scalings ? h.subarray(m * experts, (m + 1) * experts) : h;
    const s = Float64Array.from(row);
    if (config.enable_softmax) {
      const t = config.softmax_temperature;
      const max = Math.max(...s.map((v) => v / t));
      let sum = 0;
      for (let e = 0; e < experts; e++) sum += s[e] = Math.exp(s[e] / t - max);
      for (let e = 0; e < experts; e++) s[e] /= sum;
    }
    if (config.top_k_lora !== null && config.top_k_lora < experts) {
      const keep = new Set([...s.keys()].sort((a, b) => s[b] - s[a] || a - b).slice(0, config.top_k_lora));
      for (let e = 0; e < experts; e++) if (!keep.has(e)) s[e] = 0;
    }
    out.set(s, m * experts);
  }
  return out;
}

/** The experts' modules in the model's module order: X-LoRA's m. */
export function xloraModules(experts: readonly PeftAdapter[], base: BaseModel): string[] {
  const targeted = new Set(
    experts.flatMap((adapter) => [...adapterFeeds([{ adapter }], base).modules.keys()]),
  );
  return linearModules(base.config)
    .map((m) => m.module)
    .filter((m) => targeted.has(m));
}

/** The slot feeds of the experts for a 'given' router: branches side by side, times global_scaling_weight. */
export function xloraFeeds(
  x: XLoraAdapter,
  experts: readonly PeftAdapter[],
  base: BaseModel,
  constant?: number,
): AdapterFeeds {
  const feeds = mixtureFeeds(experts, { kind: 'gate', weights: new Map() }, base);
  const g = x.config.global_scaling_weight;
  if (g !== 1) for (const f of feeds.modules.values()) f.b = f.b.map((v) => v * g);
  if (feeds.router) feeds.router.constant = constant;
  return feeds;
}

/** Runs the scaling pass and the classifier before each forward call of the main pass. */
export class XLoraDriver implements PerCallFeeds {
  /** The scaling pass's cache beside each main-pass cache. */
  private readonly caches = new WeakMap<KvCache, KvCache>();
  private readonly modules: string[];
  private readonly experts: number;
  /** X-LoRA's m of each module. */
  private readonly index: Map<string, number>;

  constructor(
    private readonly x: XLoraAdapter,
    private readonly session: DecoderSession,
    private readonly layout: SlotLayout,
    private readonly scalingPass: Conditioning,
    experts: readonly PeftAdapter[],
    base: BaseModel,
  ) {
    this.modules = xloraModules(experts, base);
    this.experts = experts.length;
    this.index = new Map(this.modules.map((m, i) => [m, i]));
    const last = x.classifier.layers[x.classifier.layers.length - 1];
    const want = x.config.layerwise_scalings ? this.modules.length * this.experts : this.experts;
    if (last.out !== want)
      throw new AdapterFormatError(
        `${x.label}/${WEIGHTS}`,
        'internal_xlora_classifier.last.weight',
        `gives ${last.out} outputs; ${this.experts} experts${x.config.layerwise_scalings ? ` x ${this.modules.length} LoRA modules` : ''} need ${want}`,
      );
    if (x.config.hidden_size !== base.config.hidden_size)
      throw new AdapterFormatError(
        `${x.label}/${CONFIG}`,
        'hidden_size',
        `${x.config.hidden_size}, the model's is ${base.config.hidden_size}`,
      );
  }

  async prepare(tokens: readonly number[], cache: KvCache) {
    const before = cache.length === 0 ? this.session.emptyCache() : this.caches.get(cache);
    if (!before)
      throw new AdapterFormatError(
        this.x.label,
        undefined,
        'X-LoRA has no scaling-pass cache for this request',
      );
    const pass = await this.session.forward(tokens, before, this.scalingPass, { hidden: true });
    const d = this.session.config.hidden_size;
    const hidden = pass.hidden as Float32Array;
    const M = this.modules.length;
    const E = this.experts;
    const perToken = tokens.map((_, t) => xloraScalings(this.x, hidden.subarray(t * d, (t + 1) * d), M, E));
    const feeds: Record<string, ort.Tensor> = {};
    for (const g of this.layout.groups) {
      if (!g.router) continue;
      const n = g.modules.length;
      const data = new Float32Array(tokens.length * n * E);
      g.modules.forEach((module, k) => {
        const m = this.index.get(module);
        if (m === undefined) return; // no expert adapts it: zero branches
        for (let t = 0; t < tokens.length; t++)
          for (let e = 0; e < E; e++) data[(t * n + k) * E + e] = perToken[t][m * E + e];
      });
      feeds[g.router] = new this.session.ort.Tensor('float32', data, [1, tokens.length, n, E]);
    }
    return {
      feeds,
      after: (next: KvCache) => {
        this.caches.set(next, pass.cache);
      },
    };
  }
}
