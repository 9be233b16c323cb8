/**
 * The one object an app talks to: a base model, its adapters, generation.
 *
 *   const rt = await Runtime.create({ model: 'models/stories260K' });
 *   await rt.adapters.add('pirate', 'adapters/pirate');          // a PEFT folder, URL or bytes
 *   await rt.adapters.activate('pirate');                        // or [{ id, weight }, ...]
 *   for await (const chunk of rt.generate('Once upon a time')) ...
 *
 * Switching adapters feeds other tensors to the same session: no rebuild. A change applies from the
 * next request; a request in flight keeps the adapter it started with. An adapter that fails to
 * load or activate leaves the previous one active.
 */
import type { FileSource } from './formats/files.js';
import { urlSource } from './formats/files.js';
import { type FinishReason, type GenerateOptions, type GenerationChunk } from './engine/generate.js';
import type { Completion, LanguageModel } from './engine/language-model.js';
import { loadModelWithBase, type LoadedModel, type LoadModelOptions } from './load-model.js';
import { loadBackend } from './engine/backend.js';
import {
  PersonalAdapter,
  type PersonalOptions,
  type TrainEvent,
  type TrainReport,
  type TrainRequest,
} from './personal-adapter.js';
import { Trainer } from './train/trainer.js';
import { encodeRow } from './train/examples.js';
import type { FeedbackEvent } from './train/feedback.js';
import type { StoredFeedback } from './train/feedback-log.js';
import {
  checkAdapterAgainstBase,
  parsePeftAdapter,
  serializePeftAdapter,
  type PeftAdapter,
} from './formats/peft-adapter.js';
import { adapterFeeds } from './methods/combine.js';
import type { AdapterFeeds, BaseModel } from './methods/feeds.js';
import { AdapterFormatError, InvalidInputError } from './errors.js';
import { mixtureFeeds, type MixtureRouter } from './mixtures/expert-feeds.js';
import { parseAdapterHubUniPelt, type UniPeltAdapter } from './formats/adapterhub-unipelt.js';
import { uniPeltFeeds } from './methods/unipelt.js';
import { parseXLora, XLoraDriver, xloraFeeds, type XLoraAdapter } from './mixtures/xlora.js';
import {
  PromptRouter,
  promptEmbedding,
  type RouteChoice,
  type RouteOptions,
} from './mixtures/prompt-router.js';

/** A request's options: generation, and the adapters of this request only. */
export interface RequestOptions extends GenerateOptions {
  /** This request's adapters instead of the active ones: a blend, or 'route' to route the prompt. */
  adapters?: readonly (string | ActiveSpec)[] | 'route';
  /** With adapters: 'route', the routing's top k and temperature. */
  route?: RouteOptions;
}

export interface RuntimeOptions extends LoadModelOptions {
  /** A model folder: path (Node), URL, or FileSource. */
  model: string | URL | FileSource;
  /** Where the personal adapter keeps feedback and versions, and how a new one starts. */
  personal?: PersonalOptions;
}

/** Where an adapter comes from: a PEFT folder (path in Node, URL, FileSource) or its two files' bytes. */
export type AdapterSource =
  string | URL | FileSource | { config: Uint8Array | object; weights: Uint8Array } | PeftAdapter;

export interface AdapterInfo {
  id: string;
  /** PEFT `peft_type` (LORA, ADALORA, IA3, PREFIX_TUNING, PROMPT_TUNING, P_TUNING). */
  peftType: string;
  /** LoRA variants: 'dora', 'rslora'. */
  variant?: string;
  /** Bytes of adapter_model.safetensors. */
  bytes: number;
  /** Blend weight when active. */
  weight?: number;
  active: boolean;
}

export interface ActiveSpec {
  id: string;
  weight?: number;
}

/** A token-level mixture of LoRA experts (src/mixtures/expert-feeds.ts). */
export interface MixtureSpec {
  /** Ids of added LoRA / AdaLoRA adapters, 2 or more. */
  experts: readonly string[];
  /** 'arrow' (PEFT's Arrow, data-free prototypes) or a learned 'gate'; top k, temperature. */
  router: MixtureRouter;
}

export class AdapterRegistry {
  private readonly loaded = new Map<string, PeftAdapter>();
  /** Each adapter's feeds alone at weight 1, computed once at add() (DoRA's weight norm is costly). */
  private readonly alone = new Map<string, AdapterFeeds>();
  private current: ActiveSpec[] = [];
  /** The active mixture, when the active set is one (`current` then lists its experts). */
  private mixture?: MixtureSpec;
  /** The active X-LoRA classifier, when one is active (`current` lists its experts). */
  private xlora?: XLoraAdapter;
  /** A UniPELT adapter is active (it is not an added adapter: `current` is empty). */
  private unipelt = false;
  /** Per-request routing: the prototypes of the adapters given example prompts. */
  private router = new PromptRouter();

  constructor(
    private readonly model: LanguageModel,
    private readonly base: BaseModel,
  ) {}

  /** Loads and validates an adapter against the base. Nothing changes if it fails. */
  async add(id: string, source: AdapterSource): Promise<AdapterInfo> {
    if (this.loaded.has(id))
      throw new InvalidInputError(
        'adapters',
        id,
        'an adapter with this id is already added; remove it first',
      );
    const adapter = await readAdapter(source, id);
    checkAdapterAgainstBase(adapter, this.base.config, id);
    // Compute its feeds now, so an adapter the methods cannot serve is refused here, not at activation.
    const feeds = adapterFeeds([{ adapter, weight: 1 }], this.base);
    this.loaded.set(id, adapter);
    this.alone.set(id, feeds);
    return this.info(id);
  }

  /**
   * Makes one adapter, or a weighted blend, active from the next request. Several LoRA-family
   * adapters blend (rank concatenation, in the given order); at most one prompt-learning adapter
   * joins them.
   */
  async activate(spec: string | readonly (string | ActiveSpec)[]): Promise<void> {
    const { list, feeds } = this.blend(spec, 'activate');
    this.model.session.setAdapter(feeds);
    this.current = list;
    this.mixture = undefined;
    this.xlora = undefined;
    this.unipelt = false;
  }

  /** The feeds of one adapter or a weighted blend of added adapters (for activate, or one request). */
  blend(
    spec: string | readonly (string | ActiveSpec)[],
    field = 'adapters',
  ): { list: ActiveSpec[]; feeds: AdapterFeeds } {
    const list: ActiveSpec[] = (typeof spec === 'string' ? [spec] : spec).map((s) =>
      typeof s === 'string' ? { id: s } : { ...s },
    );
    if (list.length === 0)
      throw new InvalidInputError(field, undefined, 'no adapter given; use deactivate()');
    const active = list.map(({ id, weight }) => {
      const adapter = this.loaded.get(id);
      if (!adapter)
        throw new InvalidInputError(
          field,
          id,
          `no adapter with this id; added: ${[...this.loaded.keys()].join(', ') || 'none'}`,
        );
      return { adapter, weight: weight ?? 1 };
    });
    const single = list.length === 1 && (list[0].weight ?? 1) === 1 ? this.alone.get(list[0].id) : undefined;
    return { list, feeds: single ?? adapterFeeds(active, this.base) };
  }

  /**
   * Gives an added adapter example prompts to route by (per-request routing, `route`): their mean
   * base-model embeddings become its prototype. Replaces earlier examples of that adapter.
   */
  async setExamples(id: string, prompts: readonly (string | readonly number[])[]): Promise<void> {
    if (!this.loaded.has(id)) throw new InvalidInputError('setExamples', id, 'no adapter with this id');
    if (prompts.length === 0)
      throw new InvalidInputError('setExamples', 'prompts', 'needs at least one example prompt');
    const embeddings: Float64Array[] = [];
    for (const prompt of prompts) embeddings.push(await this.routingEmbedding(prompt));
    this.router.setExamples(id, embeddings);
  }

  /**
   * The adapters for a prompt, best first, with blend weights: the top k of those given examples
   * (src/mixtures/prompt-router.ts). Pass the result to `activate`, or to `generate` as `adapters`
   * for this request only.
   */
  async route(prompt: string | readonly number[], options: RouteOptions = {}): Promise<RouteChoice[]> {
    return this.router.route(await this.routingEmbedding(prompt), options);
  }

  /** A prompt's routing embedding: one forward of the base, no adapter (src/mixtures/prompt-router.ts). */
  async routingEmbedding(prompt: string | readonly number[]): Promise<Float64Array> {
    const tokens = this.model.encode(prompt);
    const { logits, hidden } = await this.model.baseForward(tokens);
    const table = this.base.weight('model.embed_tokens');
    const d = this.base.config.hidden_size;
    return promptEmbedding(tokens, logits, hidden, (t) => table.subarray(t * d, (t + 1) * d));
  }

  /**
   * Makes a token-level mixture of experts active from the next request: every token of every
   * request is routed to its top-k experts in each module. Needs a model loaded with a router
   * (`slots: { router: 'arrow' | 'gate' }`).
   */
  async activateMixture(spec: MixtureSpec): Promise<void> {
    const experts = spec.experts.map((id) => {
      const adapter = this.loaded.get(id);
      if (!adapter)
        throw new InvalidInputError(
          'activateMixture',
          id,
          `no adapter with this id; added: ${[...this.loaded.keys()].join(', ') || 'none'}`,
        );
      return adapter;
    });
    const router = this.model.session.slots?.router;
    if (!router)
      throw new InvalidInputError(
        'activateMixture',
        'router',
        "the model was loaded without a router: load it with slots: { router: 'arrow' | 'gate' }",
      );
    if (router.kind !== spec.router.kind)
      throw new InvalidInputError(
        'activateMixture',
        'router.kind',
        `the model was loaded with a '${router.kind}' router, not '${spec.router.kind}'`,
      );
    this.model.session.setAdapter(mixtureFeeds(experts, spec.router, this.base));
    this.current = spec.experts.map((id) => ({ id }));
    this.mixture = { experts: [...spec.experts], router: spec.router };
    this.xlora = undefined;
    this.unipelt = false;
  }

  /**
   * Makes an X-LoRA mixture active from the next request: its classifier (PEFT's XLORA files,
   * src/mixtures/xlora.ts) over added LoRA experts, in the order of its config's `adapters`. Needs a
   * model loaded with `slots: { router: 'given' }`; every forward call runs a scaling pass first.
   */
  async activateXLora(
    source: XLoraAdapter | { config: Uint8Array | object; weights: Uint8Array },
    experts: readonly string[],
  ): Promise<void> {
    const x = 'classifier' in source ? source : parseXLora(source);
    const names = Object.keys(x.config.adapters);
    if (names.length !== experts.length)
      throw new InvalidInputError(
        'activateXLora',
        'experts',
        `the X-LoRA config names ${names.length} experts (${names.join(', ')}); got ${experts.length}`,
      );
    const adapters = experts.map((id) => {
      const a = this.loaded.get(id);
      if (!a) throw new InvalidInputError('activateXLora', id, 'no adapter with this id');
      return a;
    });
    const session = this.model.session;
    if (session.slots?.router?.kind !== 'given')
      throw new InvalidInputError(
        'activateXLora',
        'router',
        "X-LoRA needs a model loaded with slots: { router: 'given' }",
      );
    const scalingPass = session.prepare(xloraFeeds(x, adapters, this.base, x.config.scaling_pass_value));
    const driver = new XLoraDriver(x, session, session.slots, scalingPass, adapters, this.base);
    session.setAdapter(xloraFeeds(x, adapters, this.base), driver);
    this.current = experts.map((id) => ({ id }));
    this.mixture = undefined;
    this.xlora = x;
    this.unipelt = false;
  }

  /**
   * Makes a UniPELT adapter (AdapterHub's files, src/formats/adapterhub-unipelt.ts) active from the
   * next request, alone (it is not an added adapter: `active()` lists nothing while it is active).
   * Needs a model loaded with `slots: { unipelt: true }`.
   */
  async activateUniPelt(
    source: UniPeltAdapter | { config: Uint8Array | object; weights: Uint8Array },
  ): Promise<void> {
    const adapter = 'layers' in source ? source : parseAdapterHubUniPelt(source, this.base.config);
    this.model.session.setAdapter(uniPeltFeeds(adapter, this.base.config));
    this.current = [];
    this.mixture = undefined;
    this.xlora = undefined;
    this.unipelt = true;
  }

  /**
   * Puts a new adapter in place of the one added as `id` (the personal adapter after training, or
   * a rollback). If `id` is active, the active set is rebuilt with it; on any error the old adapter
   * stays, active as before.
   */
  async replace(id: string, source: AdapterSource): Promise<AdapterInfo> {
    const previous = this.loaded.get(id);
    if (!previous) return this.add(id, source);
    const adapter = await readAdapter(source, id);
    checkAdapterAgainstBase(adapter, this.base.config, id);
    const feeds = adapterFeeds([{ adapter, weight: 1 }], this.base);
    const previousFeeds = this.alone.get(id) as AdapterFeeds;
    this.loaded.set(id, adapter);
    this.alone.set(id, feeds);
    if (this.current.some((s) => s.id === id)) {
      try {
        if (this.mixture) await this.activateMixture(this.mixture);
        else if (this.xlora)
          await this.activateXLora(
            this.xlora,
            this.current.map((c) => c.id),
          );
        else await this.activate(this.current);
      } catch (e) {
        this.loaded.set(id, previous);
        this.alone.set(id, previousFeeds);
        throw e;
      }
    }
    return this.info(id);
  }

  /** The feeds of an adapter that is not added (checked against the base as `add` checks). */
  feedsFor(adapter: PeftAdapter): AdapterFeeds {
    checkAdapterAgainstBase(adapter, this.base.config, adapter.label);
    return adapterFeeds([{ adapter, weight: 1 }], this.base);
  }

  /** The feeds of one added adapter alone at weight 1 (for a request that names its adapter). */
  feeds(id: string): AdapterFeeds {
    const feeds = this.alone.get(id);
    if (!feeds) throw new InvalidInputError('adapters', id, 'no adapter with this id');
    return feeds;
  }

  /** An added adapter as loaded. */
  get(id: string): PeftAdapter | undefined {
    return this.loaded.get(id);
  }

  /** The base model alone from the next request. */
  deactivate(): void {
    this.model.session.setAdapter(undefined);
    this.current = [];
    this.mixture = undefined;
    this.xlora = undefined;
    this.unipelt = false;
  }

  /**
   * True while a mixture, an X-LoRA classifier or a UniPELT adapter is active: a selection that
   * `activate` cannot restore (the adapter catalog does not remember it).
   */
  combinationActive(): boolean {
    return this.mixture !== undefined || this.xlora !== undefined || this.unipelt;
  }

  /** The active mixture of experts, when one is active. */
  activeMixture(): MixtureSpec | undefined {
    return this.mixture && { experts: [...this.mixture.experts], router: this.mixture.router };
  }

  /** The active adapters, in blend order (a mixture's experts, without weights). */
  active(): ActiveSpec[] {
    return this.current.map((s) => ({ ...s }));
  }

  list(): AdapterInfo[] {
    return [...this.loaded.keys()].map((id) => this.info(id));
  }

  /** Forgets an adapter; removing an active one deactivates it (the rest of a blend stays active). */
  async remove(id: string): Promise<void> {
    if (!this.loaded.has(id)) throw new InvalidInputError('remove', id, 'no adapter with this id');
    const rest = this.current.filter((s) => s.id !== id);
    if (rest.length !== this.current.length) {
      // A mixture loses its expert: the others stay mixed while there are two. X-LoRA's classifier
      // needs all its experts: it is deactivated.
      if (this.mixture && rest.length >= 2)
        await this.activateMixture({ experts: rest.map((s) => s.id), router: this.mixture.router });
      else if (rest.length && !this.mixture && !this.xlora) await this.activate(rest);
      else this.deactivate();
    }
    this.loaded.delete(id);
    this.alone.delete(id);
    this.router.delete(id);
  }

  /** A base weight as methods/ reads it: W [out, in] of a linear module, or `model.embed_tokens`. */
  baseWeight(module: string): Float32Array {
    return this.base.weight(module);
  }

  /** The adapter in PEFT format (adapter_config.json, adapter_model.safetensors), byte for byte as loaded. */
  export(id: string): Map<string, Uint8Array> {
    const adapter = this.loaded.get(id);
    if (!adapter) throw new InvalidInputError('export', id, 'no adapter with this id');
    return serializePeftAdapter(adapter);
  }

  private info(id: string): AdapterInfo {
    const adapter = this.loaded.get(id) as PeftAdapter;
    const config = adapter.config;
    const spec = this.current.find((s) => s.id === id);
    let bytes = 0;
    for (const t of adapter.tensors.values()) bytes += t.bytes.byteLength;
    const variant =
      'use_dora' in config && config.use_dora
        ? 'dora'
        : 'use_rslora' in config && config.use_rslora
          ? 'rslora'
          : undefined;
    return {
      id,
      peftType: config.peft_type,
      ...(variant ? { variant } : {}),
      bytes,
      active: spec !== undefined,
      ...(spec ? { weight: spec.weight ?? 1 } : {}),
    };
  }
}

async function readAdapter(source: AdapterSource, id: string): Promise<PeftAdapter> {
  if (typeof source === 'object' && 'tensors' in source && 'config' in source) return source;
  if (typeof source === 'object' && 'weights' in source) {
    return parsePeftAdapter({ config: source.config, weights: source.weights }, id);
  }
  const files = typeof source === 'object' && 'read' in source ? source : await resolveFolder(source);
  const config = await files.read('adapter_config.json');
  const weights = await files.read('adapter_model.safetensors');
  if (!config) throw new AdapterFormatError(`${files.label}/adapter_config.json`, undefined, 'missing');
  if (!weights)
    throw new AdapterFormatError(`${files.label}/adapter_model.safetensors`, undefined, 'missing');
  return parsePeftAdapter({ config, weights }, files.label);
}

async function resolveFolder(source: string | URL): Promise<FileSource> {
  const text = String(source);
  if (source instanceof URL || /^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return urlSource(source);
  const { folderSource } = await import('./formats/files-node.js');
  return folderSource(text);
}

export class Runtime {
  /** The personal adapter: feedback, versions, rollback, export (src/personal-adapter.ts). */
  readonly personal: PersonalAdapter;
  private trainer?: Promise<Trainer>;

  private constructor(
    readonly model: LanguageModel,
    readonly adapters: AdapterRegistry,
    loaded: LoadedModel,
    options: RuntimeOptions,
  ) {
    // Training runs on wasm (or onnxruntime-node), whatever runs inference.
    const backend = {
      backend: options.backend === 'node' ? ('node' as const) : ('wasm' as const),
      threads: options.threads,
      wasmPaths: options.wasmPaths,
    };
    this.personal = new PersonalAdapter(
      adapters,
      model,
      () =>
        (this.trainer ??= loadBackend(backend).then(
          (b) => new Trainer(b, loaded.graph, model.config, loaded.base),
        )),
      options.personal,
    );
  }

  static async create(options: RuntimeOptions): Promise<Runtime> {
    const loaded = await loadModelWithBase(options.model, options);
    const rt = new Runtime(loaded.model, new AdapterRegistry(loaded.model, loaded.base), loaded, options);
    await rt.personal.restore();
    return rt;
  }

  /** Records a feedback event for the personal adapter (a rating, a correction, a pair, a demonstration). */
  feedback(event: FeedbackEvent): Promise<StoredFeedback> {
    return this.personal.feedback(event);
  }

  /**
   * Trains a new version of the personal adapter on the feedback so far (or, with method 'rlaif', on
   * a judge's preferences) and makes it active; generation meanwhile uses the last committed version.
   */
  train(request: TrainRequest, onProgress?: (e: TrainEvent) => void): Promise<TrainReport> {
    return this.personal.train(request, onProgress);
  }

  /**
   * Streams a completion with the active adapters, or with `options.adapters` for this request only:
   * a blend (`[{ id, weight }, ...]`, e.g. what `adapters.route` returned) or 'route' to route this
   * prompt now (`options.route`: top k, temperature).
   */
  async *generate(
    prompt: string | readonly number[],
    options: RequestOptions = {},
  ): AsyncGenerator<GenerationChunk, FinishReason> {
    const { adapters, route, ...rest } = options;
    const feeds = await this.requestFeeds(prompt, adapters, route);
    return yield* this.model.generate(prompt, rest, feeds);
  }

  async complete(prompt: string | readonly number[], options: RequestOptions = {}): Promise<Completion> {
    const { adapters, route, ...rest } = options;
    return this.model.complete(prompt, rest, await this.requestFeeds(prompt, adapters, route));
  }

  private async requestFeeds(
    prompt: string | readonly number[],
    adapters: RequestOptions['adapters'],
    route: RouteOptions | undefined,
  ): Promise<AdapterFeeds | undefined> {
    if (adapters === undefined) return undefined;
    const spec = adapters === 'route' ? await this.adapters.route(prompt, route) : adapters;
    return this.adapters.blend(spec).feeds;
  }

  logits(tokens: readonly number[]): Promise<Float32Array[]> {
    return this.model.logits(tokens);
  }

  /**
   * log p(completion | prompt) under the active adapter: the sum over the completion's tokens and
   * their count (prompt + completion tokenized together, as training does). With `logProbJudge` it
   * makes this runtime an RLAIF judge: a scoring model, or a scoring adapter active on it.
   */
  async logProb(prompt: string, completion: string): Promise<{ sum: number; tokens: number }> {
    const row = encodeRow(
      this.model.tokenizer,
      prompt,
      completion,
      this.model.config.max_position_embeddings,
    );
    if (!row) return { sum: 0, tokens: 0 };
    const logits = await this.model.logits(row.tokens);
    let sum = 0;
    for (let j = row.completionStart; j < row.tokens.length; j++) {
      const l = logits[j - 1];
      let max = -Infinity;
      for (const v of l) max = Math.max(max, v);
      let total = 0;
      for (const v of l) total += Math.exp(v - max);
      sum += l[row.tokens[j]] - max - Math.log(total);
    }
    return { sum, tokens: row.tokens.length - row.completionStart };
  }

  async release(): Promise<void> {
    await (await this.trainer)?.release();
    await this.model.release();
  }
}
