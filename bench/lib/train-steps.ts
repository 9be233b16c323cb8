/**
 * The measured side of bench/train.ts, shared by its Node workers and its Chromium pages: one
 * variant per process or page (so the memory read is the variant's), stepped by the parent in turns.
 *
 *   prefill             the inference session (loadModelWithBase, bare base): DecoderSession.forward
 *                       of each row of the batch, one row at a time from an empty cache
 *   score               the scoring graph (Trainer.logProbs: the same decoder with the adapter's
 *                       slots and the log-prob head, no gradients) on the whole batch in one run
 *   sft, dpo, kto       Trainer.train steps on the batch (dpo: its rows as pairs; kto: desirable and
 *                       undesirable rows, and two scoring runs per step for the KL estimate)
 *   sft-beside-model    sft in a process that also holds the inference session, as an app that
 *                       trains beside the model it chats with
 *
 * Only prefill and sft-beside-model create the inference session; the others read the folder's graph
 * and base weights (as loadModelWithBase does) and build nothing else than the Trainer's sessions.
 *
 * Instrumentation (in this process or page only): onnxruntime-web's WebAssembly.Memory is captured
 * when its module creates it (its size never shrinks: the high-water mark of the wasm heap),
 * TrainingSession.run is timed (the onnxruntime run with its feeds and outputs: the rest of a step
 * is JavaScript — batch, adapter feeds, gradients back to the PEFT tensors, clipping, AdamW), and
 * TrainingSession.create is timed, split into the ONNX serialization and onnxruntime's
 * InferenceSession.create; the graph construction (slots, log-prob head, objective, autodiff) is
 * the time from the Trainer call to TrainingSession.create.
 */
import type * as ort from 'onnxruntime-web';
import { loadBackend, type Backend, type BackendOptions } from '../../src/engine/backend.js';
import type { LanguageModel } from '../../src/engine/language-model.js';
import { TrainingSession } from '../../src/engine/training-session.js';
import type { LlamaConfig } from '../../src/formats/checkpoint.js';
import type { FileSource } from '../../src/formats/files.js';
import { readModelFolder } from '../../src/formats/model-folder.js';
import { decodeModel, encodeModel, internalizeData } from '../../src/formats/onnx/index.js';
import type { ModelProto } from '../../src/formats/onnx/onnx_pb.js';
import type { PeftAdapter } from '../../src/formats/peft-adapter.js';
import { graphBaseModel } from '../../src/graph/base-weights.js';
import { GraphBuilder } from '../../src/graph/builder.js';
import { loadModelWithBase } from '../../src/load-model.js';
import type { BaseModel } from '../../src/methods/feeds.js';
import type { TrainingRow } from '../../src/train/batch.js';
import type { Examples } from '../../src/train/examples.js';
import { initLora } from '../../src/train/init-lora.js';
import { Trainer } from '../../src/train/trainer.js';

export const VARIANTS = ['prefill', 'score', 'sft', 'dpo', 'kto', 'sft-beside-model'] as const;
export type Variant = (typeof VARIANTS)[number];

/** What every variant of a model gets: the same rows, the same adapter. */
export interface StepSpec {
  variant: Variant;
  /** The batch: every variant runs these rows (dpo pairs them, kto rates them). */
  rows: TrainingRow[];
  rank: number;
  targets: string[];
  lastLayers: number;
  threads: number;
}

export interface RoundResult {
  /** ms of each repetition: the batch's forward, or one optimizer step. */
  ms: number[];
  /** ms inside TrainingSession.run in each repetition (every run of a step: kto's scoring runs too). */
  runMs: number[];
  /** The training loss of each step. */
  losses: number[];
}

export interface SessionBuild {
  kind: 'training' | 'scoring';
  /** Nodes of the graph onnxruntime gets. */
  nodes: number;
  /** Graph construction: adapter slots, log-prob head, objective, autodiff (JS). */
  graphMs: number;
  /** The ModelProto encoded for onnxruntime (protobuf, external data split). */
  serializeMs: number;
  /** onnxruntime-web's InferenceSession.create. */
  createMs: number;
}

export interface Loaded {
  /**
   * Reading the folder (and, for prefill and sft-beside-model, creating the inference session);
   * onnxruntime's wasm module is started before.
   */
  loadMs: number;
  builds: SessionBuild[];
  /** The first repetition, the sessions' build included (not in any round). */
  warmupMs: number;
}

// ---------------------------------------------------------------------------------------------
// Instrumentation

const memories: WebAssembly.Memory[] = [];
{
  const wasm = globalThis.WebAssembly as unknown as { Memory: typeof WebAssembly.Memory };
  if (!(wasm.Memory as unknown as { captured?: boolean }).captured) {
    const Original = wasm.Memory;
    wasm.Memory = new Proxy(Original, {
      construct(target, args: [WebAssembly.MemoryDescriptor]) {
        const memory = Reflect.construct(target, args) as WebAssembly.Memory;
        memories.push(memory);
        return memory;
      },
      get: (target, key, receiver) => (key === 'captured' ? true : Reflect.get(target, key, receiver)),
    });
  }
}

/** Bytes of the WebAssembly memories created in this realm (onnxruntime-web's heap): never shrinks. */
export const wasmBytes = (): number => memories.reduce((n, m) => n + m.buffer.byteLength, 0);

interface Run {
  end: number;
  ms: number;
}

const runs: Run[] = [];
const builds: SessionBuild[] = [];
/** Where the next graph construction started (a Trainer call, or the end of the last build). */
let buildFrom = 0;
let ortCreateMs = 0;

{
  const proto = TrainingSession.prototype as { run: TrainingSession['run'] };
  const run = proto.run;
  proto.run = async function (this: TrainingSession, ...args: Parameters<TrainingSession['run']>) {
    const t = performance.now();
    const out = await run.apply(this, args);
    const end = performance.now();
    runs.push({ end, ms: end - t });
    return out;
  };
  const statics = TrainingSession as { create: typeof TrainingSession.create };
  const create = statics.create;
  statics.create = async (...args: Parameters<typeof TrainingSession.create>) => {
    const t = performance.now();
    ortCreateMs = 0;
    const session = await create.apply(TrainingSession, args);
    const end = performance.now();
    builds.push({
      kind: session.gradients.size > 0 ? 'training' : 'scoring',
      nodes: args[1].graph?.node.length ?? 0,
      graphMs: t - buildFrom,
      serializeMs: end - t - ortCreateMs,
      createMs: ortCreateMs,
    });
    buildFrom = end;
    return session;
  };
}

/** The backend with onnxruntime's InferenceSession.create timed (into the current build). */
function timedBackend(backend: Backend): Backend {
  const sessions = backend.ort.InferenceSession;
  const create = (async (...args: unknown[]) => {
    const t = performance.now();
    const session = await (sessions.create as (...a: unknown[]) => Promise<ort.InferenceSession>)(...args);
    ortCreateMs += performance.now() - t;
    return session;
  }) as typeof sessions.create;
  const InferenceSession = new Proxy(sessions, {
    get: (target, key, receiver) => (key === 'create' ? create : Reflect.get(target, key, receiver)),
  });
  return { ...backend, ort: { Tensor: backend.ort.Tensor, InferenceSession } };
}

// ---------------------------------------------------------------------------------------------
// The variants

/** The folder's config, graph (weights in memory) and base weights, as loadModelWithBase reads them. */
async function readTrainable(source: FileSource) {
  const folder = await readModelFolder(source);
  const file = `${folder.label}/${folder.onnxFile}`;
  const graph = decodeModel(folder.onnx, file);
  const external = new Map(folder.externalData.map((f) => [f.path, f.data]));
  const weights = external.size ? internalizeData(graph, (location) => external.get(location), file) : graph;
  return { config: folder.config, graph: weights, base: graphBaseModel(weights, folder.config, file) };
}

/**
 * Starts onnxruntime-web's wasm module (fetch, compile, instantiate) with a one-node session, so that
 * no session build timed here includes it.
 */
async function startOrt(backend: Backend): Promise<void> {
  const g = new GraphBuilder();
  const x = g.input('x', 'float32', [1]);
  g.node('Identity', [x], { name: 'identity', outputs: ['y'] });
  g.output('y', 'float32', [1]);
  const session = await backend.ort.InferenceSession.create(encodeModel(g.build()), backend.sessionOptions);
  await session.release();
}

/** The batch as each objective's examples: dpo pairs row 2k with 2k + 1, kto rates every other row down. */
export function batchExamples(rows: readonly TrainingRow[]): Examples {
  return {
    sft: [...rows],
    kto: rows.map((r, i) => ({ ...r, desirable: i % 2 === 0 })),
    dpo: Array.from({ length: Math.floor(rows.length / 2) }, (_, k) => ({
      chosen: rows[2 * k],
      rejected: rows[2 * k + 1],
    })),
  };
}

export class StepBench {
  private adapter: PeftAdapter;
  private readonly examples: Examples;
  private round = 0;

  private constructor(
    private readonly spec: StepSpec,
    private readonly trainer: Trainer | undefined,
    private readonly model: LanguageModel | undefined,
    config: LlamaConfig,
    /** Called after every repetition (the place samples its memory). */
    private readonly sample: () => void,
  ) {
    this.adapter = initLora(config, {
      rank: spec.rank,
      targets: spec.targets,
      lastLayers: spec.lastLayers,
      seed: 1,
    });
    this.examples = batchExamples(spec.rows);
  }

  /** Loads the variant, builds its sessions and runs one warm-up repetition. */
  static async load(
    spec: StepSpec,
    source: FileSource,
    backendOptions: BackendOptions,
    sample: () => void = () => undefined,
  ): Promise<{ bench: StepBench; loaded: Loaded }> {
    const options = { ...backendOptions, backend: 'wasm' as const, threads: spec.threads };
    const backend = await loadBackend(options);
    await startOrt(backend);
    const t0 = performance.now();
    let model: LanguageModel | undefined;
    let config: LlamaConfig;
    let graph: ModelProto | undefined;
    let base: BaseModel | undefined;
    if (spec.variant === 'prefill' || spec.variant === 'sft-beside-model') {
      const loaded = await loadModelWithBase(source, { ...options, slots: false });
      model = loaded.model;
      config = loaded.model.config;
      if (spec.variant !== 'prefill') ({ graph, base } = loaded);
    } else {
      ({ config, graph, base } = await readTrainable(source));
    }
    const trainer = graph && base ? new Trainer(timedBackend(backend), graph, config, base) : undefined;
    const loadMs = performance.now() - t0;
    const bench = new StepBench(spec, trainer, model, config, sample);
    const first = builds.length;
    const t1 = performance.now();
    buildFrom = t1;
    await bench.repeat(1);
    const warmupMs = performance.now() - t1;
    return { bench, loaded: { loadMs, builds: builds.slice(first), warmupMs } };
  }

  private get method(): 'sft' | 'dpo' | 'kto' {
    const v = this.spec.variant;
    return v === 'dpo' || v === 'kto' ? v : 'sft';
  }

  /** `reps` repetitions of the variant's unit: a forward of the batch, or an optimizer step. */
  async repeat(reps: number): Promise<RoundResult> {
    const out: RoundResult = { ms: [], runMs: [], losses: [] };
    const runMsBetween = (from: number, to: number) =>
      runs.filter((r) => r.end > from && r.end <= to).reduce((n, r) => n + r.ms, 0);
    const { variant, rows } = this.spec;
    if (variant === 'prefill') {
      const session = (this.model as LanguageModel).session;
      for (let i = 0; i < reps; i++) {
        const t = performance.now();
        for (const row of rows)
          session.dispose((await session.forward(row.tokens, session.startCache())).cache);
        out.ms.push(performance.now() - t);
        this.sample();
      }
      return out;
    }
    const trainer = this.trainer as Trainer;
    if (variant === 'score') {
      for (let i = 0; i < reps; i++) {
        const t = performance.now();
        await trainer.logProbs(this.adapter, rows, rows.length);
        const end = performance.now();
        out.ms.push(end - t);
        out.runMs.push(runMsBetween(t, end));
        this.sample();
      }
      return out;
    }
    // One train() call of `reps` steps, continuing from the adapter the last call returned. A step
    // ends at its progress callback; the first starts at the call (sft) or, for dpo and kto, once
    // the reference log-probs of the examples (one scoring run, before the first step) are done.
    const method = this.method;
    const t0 = performance.now();
    const firstRun = runs.length;
    const ends: number[] = [];
    const result = await trainer.train(
      this.adapter,
      this.examples,
      {
        method,
        steps: reps,
        batchSize: method === 'dpo' ? this.examples.dpo.length : rows.length,
        lr: 1e-3,
        seed: this.round++,
      },
      () => {
        ends.push(performance.now());
        this.sample();
      },
    );
    this.adapter = result.adapter;
    const start = method === 'sft' ? t0 : runs[firstRun].end;
    ends.forEach((end, i) => {
      const from = i === 0 ? start : ends[i - 1];
      out.ms.push(end - from);
      out.runMs.push(runMsBetween(from, end));
    });
    out.losses = result.losses;
    return out;
  }
}
