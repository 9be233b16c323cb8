/**
 * The personal adapter: a LoRA that learns on the device from its user's feedback, kept as numbered
 * versions with rollback, exportable in PEFT format. It ties the feedback log, the trainer, the
 * version store and the runtime's adapter registry together:
 *
 *   await rt.feedback({ prompt, completion, rating: 1 });              // thumbs up, into the log
 *   const report = await rt.train({ method: 'kto', steps: 20 }, (p) => plot(p.loss));
 *   rt.personal.history();  rt.personal.rollback(1);  rt.personal.export();
 *
 * Training works on a copy: generation meanwhile uses the last committed version, and a new version
 * replaces it (in the registry, and in the active blend if it is part of one) only once it is stored.
 * A run that fails or is aborted changes nothing. With method 'rlaif' the preferences come from a
 * judge (src/train/rlaif.ts) scoring completions sampled from the current version.
 */
import { InvalidInputError } from './errors.js';
import type { LanguageModel } from './engine/language-model.js';
import { parsePeftAdapter, serializePeftAdapter, type PeftAdapter } from './formats/peft-adapter.js';
import type { AdapterRegistry } from './runtime.js';
import { trainingExamples } from './train/examples.js';
import { parseFeedback, type FeedbackEvent } from './train/feedback.js';
import { memoryFeedbackLog, type FeedbackLog, type StoredFeedback } from './train/feedback-log.js';
import { initLora, type LoraInit } from './train/init-lora.js';
import {
  memoryPersonalVersions,
  type PersonalVersion,
  type PersonalVersionStore,
} from './train/personal-versions.js';
import { rlaifPreferences, type Judge, type JudgedPrompt } from './train/rlaif.js';
import type { Trainer, TrainOptions, TrainProgress, TrainResult } from './train/trainer.js';

export interface PersonalOptions {
  /** Where feedback is kept (default: in memory; the browser runtime uses IndexedDB). */
  feedback?: FeedbackLog;
  /** Where versions are kept (default: in memory; the browser runtime uses IndexedDB). */
  versions?: PersonalVersionStore;
  /** How a new personal adapter starts (default rank 8, lora_alpha 16, q_proj and v_proj). */
  lora?: LoraInit;
  /**
   * Or the adapter a new personal adapter starts from, instead of a fresh LoRA: a LoRA, an IA3
   * adapter (its vectors are trained) or a prompt-tuning adapter (its virtual tokens are trained).
   */
  init?: PeftAdapter;
  /** Its id among the runtime's adapters (default 'personal'). */
  id?: string;
}

export type TrainMethod = 'sft' | 'kto' | 'dpo' | 'rlaif';

export interface TrainRequest extends Partial<Omit<TrainOptions, 'method'>> {
  method: TrainMethod;
  /** Make the new version active (default true): alone, unless it is already part of the active set. */
  activate?: boolean;
  /** RLAIF: scores sampled completions (higher = better). */
  judge?: Judge;
  /** RLAIF: the prompts to sample (default: the prompt of every event in the feedback log). */
  prompts?: readonly string[];
  /** RLAIF: completions per prompt (default 4). */
  samples?: number;
  /** RLAIF: sample, judge and train this many times, each round on the last one's policy (default 1). */
  rounds?: number;
  /** RLAIF: new tokens per completion (default 64) and sampling temperature (default 1). */
  maxTokens?: number;
  temperature?: number;
}

export type TrainEvent =
  ({ stage: 'train' } & TrainProgress) | { stage: 'sample'; done: number; total: number };

export interface TrainReport {
  version: PersonalVersion;
  losses: number[];
  skipped: number;
  examples: number;
  /** RLAIF: the preference pairs the judge gave. */
  pairs?: number;
  /** RLAIF: every sampled completion with the judge's score, round after round. */
  judged?: JudgedPrompt[];
  seconds: number;
}

export class PersonalAdapter {
  readonly id: string;
  private readonly log: FeedbackLog;
  private readonly versions: PersonalVersionStore;
  private training = false;

  constructor(
    private readonly registry: AdapterRegistry,
    private readonly model: LanguageModel,
    private readonly trainer: () => Promise<Trainer>,
    private readonly options: PersonalOptions = {},
  ) {
    this.id = options.id ?? 'personal';
    this.log = options.feedback ?? memoryFeedbackLog();
    this.versions = options.versions ?? memoryPersonalVersions();
  }

  /** Adds the stored current version to the runtime's adapters (not active); false when there is none. */
  async restore(): Promise<boolean> {
    const current = await this.versions.current();
    if (!current) return false;
    await this.registry.replace(this.id, await this.load(current.version));
    return true;
  }

  /** Records one feedback event (validated; a malformed one is an InvalidInputError naming the field). */
  async feedback(event: FeedbackEvent): Promise<StoredFeedback> {
    return this.log.add(parseFeedback(event));
  }

  feedbackLog(): Promise<StoredFeedback[]> {
    return this.log.list();
  }

  history(): Promise<PersonalVersion[]> {
    return this.versions.history();
  }

  current(): Promise<PersonalVersion | undefined> {
    return this.versions.current();
  }

  /** Makes an earlier version current, in the registry too (active if the personal adapter is). */
  async rollback(version: number): Promise<PersonalVersion> {
    const adapter = await this.load(version);
    const v = await this.versions.rollback(version);
    await this.registry.replace(this.id, adapter);
    return v;
  }

  /** A version's PEFT files (default the current one): adapter_config.json, adapter_model.safetensors. */
  async export(version?: number): Promise<Map<string, Uint8Array>> {
    const v = version ?? (await this.versions.current())?.version;
    if (v === undefined)
      throw new InvalidInputError('personal', 'version', 'nothing trained yet: no version to export');
    const files = await this.versions.files(v);
    return new Map([
      ['adapter_config.json', files.config],
      ['adapter_model.safetensors', files.weights],
    ]);
  }

  /** Trains a new version from the feedback log (or, for 'rlaif', from a judge) and commits it. */
  async train(request: TrainRequest, onProgress?: (e: TrainEvent) => void): Promise<TrainReport> {
    if (this.training)
      throw new InvalidInputError('train', undefined, 'a training run is already in progress');
    this.training = true;
    try {
      return await this.run(request, onProgress);
    } finally {
      this.training = false;
    }
  }

  private async run(request: TrainRequest, onProgress?: (e: TrainEvent) => void): Promise<TrainReport> {
    const t0 = performance.now();
    const trainer = await this.trainer();
    const current = await this.versions.current();
    const start = current
      ? await this.load(current.version)
      : (this.options.init ?? initLora(this.model.config, { seed: request.seed, ...this.options.lora }));
    const events: FeedbackEvent[] = (await this.log.list()).map((s) => s.event);
    const steps = request.steps ?? 20;
    const options = {
      ...request,
      steps,
      method: request.method === 'rlaif' ? ('dpo' as const) : request.method,
    };
    const progress = (p: TrainProgress) => onProgress?.({ stage: 'train', ...p });
    let result: TrainResult;
    let pairs: number | undefined;
    const judgedAll: JudgedPrompt[] = [];
    if (request.method !== 'rlaif') {
      result = await trainer.train(start, trainingExamples(events, this.model.tokenizer), options, progress);
    } else {
      // Each round samples the policy as the last round left it, the judge ranks, DPO trains (the
      // round's start is its reference: iterative DPO).
      const judge = request.judge;
      if (!judge) throw new InvalidInputError('train', 'judge', "method 'rlaif' needs a judge");
      const prompts = request.prompts ?? events.map((e) => e.prompt);
      const samples = request.samples ?? 4;
      const rounds = request.rounds ?? 1;
      const total = rounds * prompts.length * samples;
      let done = 0;
      let policy = start;
      const all: TrainResult[] = [];
      pairs = 0;
      for (let round = 0; round < rounds; round++) {
        const feeds = this.registry.feedsFor(policy);
        const judged = await rlaifPreferences({
          prompts,
          samples,
          judge,
          seed: (request.seed ?? 0) * 1_000_003 + round * prompts.length * samples,
          signal: request.signal,
          sample: async (prompt, seed) => {
            const c = await this.model.complete(
              prompt,
              {
                maxTokens: request.maxTokens ?? 64,
                temperature: request.temperature ?? 1,
                seed,
                signal: request.signal,
              },
              feeds,
            );
            onProgress?.({ stage: 'sample', done: ++done, total });
            return c.text;
          },
        });
        pairs += judged.pairs.length;
        judgedAll.push(...judged.judged);
        if (judged.pairs.length === 0) continue; // the judge preferred nothing: nothing to learn this round
        const r = await trainer.train(
          policy,
          trainingExamples(judged.pairs, this.model.tokenizer),
          options,
          progress,
        );
        all.push(r);
        policy = r.adapter;
      }
      if (all.length === 0)
        throw new InvalidInputError(
          'train',
          'judge',
          `scored every sample of every prompt alike in ${rounds} round(s): no preference to learn`,
        );
      result = {
        adapter: policy,
        losses: all.flatMap((r) => r.losses),
        skipped: all.reduce((n, r) => n + r.skipped, 0),
        examples: all.reduce((n, r) => n + r.examples, 0),
      };
    }
    const files = serializePeftAdapter(result.adapter);
    const finite = result.losses.filter(Number.isFinite);
    const version = await this.versions.commit(
      {
        parent: current?.version,
        method: request.method,
        steps: result.losses.length,
        examples: result.examples,
        ...(finite.length ? { loss: { first: finite[0], last: finite[finite.length - 1] } } : {}),
      },
      {
        config: files.get('adapter_config.json') as Uint8Array,
        weights: files.get('adapter_model.safetensors') as Uint8Array,
      },
    );
    await this.registry.replace(this.id, result.adapter);
    const active = this.registry.active();
    if ((request.activate ?? true) && !active.some((s) => s.id === this.id))
      await this.registry.activate(this.id);
    return {
      version,
      losses: result.losses,
      skipped: result.skipped,
      examples: result.examples,
      ...(pairs === undefined ? {} : { pairs, judged: judgedAll }),
      seconds: (performance.now() - t0) / 1000,
    };
  }

  private async load(version: number): Promise<PeftAdapter> {
    const files = await this.versions.files(version);
    return parsePeftAdapter({ config: files.config, weights: files.weights }, `${this.id} v${version}`);
  }
}
