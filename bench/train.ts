/**
 * Training on the device: ms per training step and peak memory against one inference forward of the
 * same batch, on stories260K and on synth SmolLM2-135M (a new LoRA r8 on the 7 projections of the
 * last 2 layers), onnxruntime-web wasm in Node (1 and 2 threads) and in headless Chromium (1 thread).
 *
 * The batch: rows of 64 tokens of TinyStories text (BOS, then 63 tokens of the corpus; the completion,
 * scored, from token 32), 4 rows for stories260K and 2 for SmolLM2. Every variant runs these rows:
 *
 *   score        the baseline: one forward of the batch through the scoring graph (Trainer.logProbs:
 *                the training graph's decoder with the adapter's slots and log-prob head, no gradients)
 *   prefill      a second baseline: the inference session's prefill of each row (DecoderSession.forward
 *                from an empty cache, the bare base as loadModelWithBase(…, { slots: false }) makes it)
 *   sft          one optimizer step (Trainer.train) on the batch
 *   dpo, kto     stories260K: dpo on the rows as 2 pairs (the step's graph runs the same 4 rows), kto
 *                on the rows rated up and down (its step adds two scoring runs for the KL estimate)
 *   sft-beside-model   sft in a process that also holds the inference session (memory of an app that
 *                trains beside the model it serves)
 *
 * One process (Node) or page (Chromium) per variant, all alive together and stepped in turns with the
 * order rotating each round; each round's times are divided by the scoring forward's of the same
 * round. bench/lib/train-steps.ts is what runs inside (and how a step's parts and the session build
 * are timed, and how the wasm heap is read).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { folderSource } from '../src/formats/files-node.js';
import type { TrainingRow } from '../src/train/batch.js';
import type { TrainPage } from './browser/train-page.js';
import { peakRssMB, serveWorker, Worker } from './lib/child.js';
import { ensureModel, MODELS, OUT, storyTokens, type ModelName } from './lib/models.js';
import {
  fmt,
  median,
  NODE_MODULES,
  packageVersion,
  printTable,
  progress,
  quantile,
  ratio,
  withSpread,
} from './lib/report.js';
// Types only: the instrumentation in train-steps.ts loads in the train workers alone (trainWorker).
import type { Loaded, RoundResult, StepSpec, Variant } from './lib/train-steps.js';

const RANK = 8;
const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const LAST_LAYERS = 2;
const ROW_TOKENS = 64;
const COMPLETION_START = 32;
const BATCH: Record<ModelName, number> = { stories260K: 4, 'smollm2-135m': 2 };
const MB = 2 ** 20;

export interface TrainBenchOptions {
  models: readonly ModelName[];
  /** Node's thread counts (Chromium runs 1). */
  threads: readonly number[];
  rounds: number;
  quick: boolean;
  /** 'node', 'chromium' (default both). */
  places?: readonly string[];
}

/** Repetitions per round: stories260K's units take milliseconds, SmolLM2's seconds. */
const repsOf = (model: ModelName, quick: boolean) => (model === 'stories260K' ? (quick ? 2 : 5) : 1);

/**
 * Repetitions run but not counted at the start of each round: stories260K's first forward or step
 * after its process sat idle runs cold (caches, CPU frequency); SmolLM2's take seconds.
 */
const dropOf = (model: ModelName) => (model === 'stories260K' ? 1 : 0);

/** The batch: `n` rows of BOS + 63 consecutive corpus tokens. */
function batchRows(n: number): TrainingRow[] {
  const body = ROW_TOKENS - 1;
  const ids = storyTokens(n * body + 1).prompt;
  return Array.from({ length: n }, (_, k) => ({
    tokens: [ids[0], ...ids.slice(1 + k * body, 1 + (k + 1) * body)],
    completionStart: COMPLETION_START,
  }));
}

function variantsOf(model: ModelName, beside: boolean): Variant[] {
  const out: Variant[] = ['score', 'prefill', 'sft'];
  if (model === 'stories260K') out.push('dpo', 'kto');
  if (beside) out.push('sft-beside-model');
  return out;
}

const LABELS: Record<Variant, string> = {
  score: 'forward: scoring graph, whole batch (baseline)',
  prefill: 'forward: inference prefill, row by row',
  sft: 'SFT step',
  dpo: 'DPO step',
  kto: 'KTO step',
  'sft-beside-model': 'SFT step beside the inference session',
};

function label(v: Variant, rows: number): string {
  if (v === 'dpo') return `${LABELS.dpo} (${rows / 2} pairs = the same ${rows} rows)`;
  if (v === 'kto') return `${LABELS.kto} (+ 2 scoring runs of ${rows} rows for z)`;
  return LABELS[v];
}

/** What a place measured for one variant. */
interface Measured {
  model: ModelName;
  variant: Variant;
  rows: number;
  loaded?: Loaded;
  rounds: RoundResult[];
  memory?: Record<string, number>;
  note?: string;
}

/** A place runs the variants: starts one, steps it, reads its memory, stops it. */
interface Runner {
  start(spec: StepSpec, model: ModelName): Promise<Loaded>;
  repeat(reps: number): Promise<RoundResult>;
  memory(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

async function measurePlace(
  where: string,
  o: TrainBenchOptions,
  threads: number,
  beside: boolean,
  runner: () => Runner,
): Promise<Measured[]> {
  const all: Measured[] = [];
  for (const model of o.models) {
    const rows = batchRows(BATCH[model]);
    const reps = repsOf(model, o.quick);
    const drop = dropOf(model);
    const live: { m: Measured; r: Runner }[] = [];
    try {
      for (const variant of variantsOf(model, beside)) {
        const m: Measured = { model, variant, rows: rows.length, rounds: [] };
        all.push(m);
        progress(`train ${where}: ${model} ${variant}: loading, building, warm-up`);
        const r = runner();
        try {
          m.loaded = await r.start(
            { variant, rows, rank: RANK, targets: TARGETS, lastLayers: LAST_LAYERS, threads },
            model,
          );
          live.push({ m, r });
        } catch (error) {
          m.note = `failed: ${String(error).split('\n')[0].slice(0, 200)}`;
          await r.stop().catch(() => undefined);
        }
      }
      for (let round = 0; round < o.rounds; round++) {
        progress(`train ${where}: ${model} round ${round + 1}/${o.rounds}`);
        for (let j = 0; j < live.length; j++) {
          const { m, r } = live[(j + round) % live.length];
          const got = await r.repeat(reps + drop);
          m.rounds[round] = { ...got, ms: got.ms.slice(drop), runMs: got.runMs.slice(drop) };
        }
      }
      for (const { m, r } of live) m.memory = await r.memory();
    } finally {
      for (const { r } of live) await r.stop();
    }
  }
  return all;
}

// ---------------------------------------------------------------------------------------------
// Tables

const spread = (xs: number[]) =>
  xs.length < 3
    ? ratio(median(xs))
    : `${ratio(median(xs))} [${ratio(quantile(xs, 0.25))}–${ratio(quantile(xs, 0.75))}]`;

const baselineOf = (all: Measured[], m: Measured) =>
  all.find((b) => b.model === m.model && b.variant === 'score' && b.rounds.length);

/** Per round: the variant's median over the scoring forward's median of the same round. */
function roundRatios(m: Measured, base: Measured): number[] {
  return m.rounds
    .map((r, i) => (base.rounds[i] ? median(r.ms) / median(base.rounds[i].ms) : NaN))
    .filter(Number.isFinite);
}

const modelCell = (m: Measured) => `${m.model}, ${m.rows}×${ROW_TOKENS}`;

function timingTable(title: string, all: Measured[], extra: string, notes: string[]): void {
  const rows = all.map((m) => {
    if (!m.rounds.length) return [modelCell(m), label(m.variant, m.rows), m.note ?? 'n/a', '', '', ''];
    const ms = m.rounds.flatMap((r) => r.ms);
    const run = m.rounds.flatMap((r) => r.runMs);
    const js = m.rounds.flatMap((r) => r.ms.map((t, i) => t - r.runMs[i]));
    const base = baselineOf(all, m);
    return [
      modelCell(m),
      label(m.variant, m.rows),
      withSpread(ms, 1),
      m.variant === 'score' ? '1.00x' : base ? spread(roundRatios(m, base)) : 'n/a',
      run.length ? fmt(median(run), 1) : '—',
      run.length ? fmt(median(js), 1) : '—',
    ];
  });
  printTable(
    title,
    [
      'model, batch',
      'what runs',
      'ms',
      'vs scoring forward, same round',
      'onnxruntime run ms',
      'JS ms (batch, feeds, grads → PEFT, clip, AdamW)',
    ],
    rows,
    notes,
    extra,
  );
}

const memoryRatio = (all: Measured[], m: Measured, key: string) => {
  const base = baselineOf(all, m)?.memory?.[key];
  const v = m.memory?.[key];
  return m.variant === 'score' ? '1.00x' : base && v ? ratio(v / base) : 'n/a';
};

function lossNote(all: Measured[]): string {
  const parts = all
    .filter((m) => m.rounds.some((r) => r.losses.length))
    .map((m) => {
      const losses = m.rounds.flatMap((r) => r.losses);
      return `${m.model} ${m.variant} ${fmt(losses[0], 3)} → ${fmt(losses[losses.length - 1], 3)}`;
    });
  return `Loss over the measured steps (each round continues from the adapter the last one returned; lr 1e-3, constant): ${parts.join('; ')}.`;
}

function buildTable(places: { where: string; all: Measured[] }[]): void {
  const rows: string[][] = [];
  for (const { where, all } of places) {
    for (const m of all) {
      if (!m.loaded) continue;
      const s = (ms: number) => fmt(ms / 1000, 2);
      if (m.variant === 'prefill')
        rows.push([
          where,
          m.model,
          'inference session (loadModelWithBase: read, decode, create)',
          '',
          '',
          '',
          '',
          s(m.loaded.loadMs),
        ]);
      if (m.variant === 'sft-beside-model') continue;
      for (const b of m.loaded.builds) {
        if (b.kind === 'scoring' && m.variant !== 'score') continue;
        const what =
          b.kind === 'scoring' ? 'scoring graph (logps)' : `${m.variant.toUpperCase()} training graph`;
        rows.push([
          where,
          m.model,
          what,
          b.nodes.toLocaleString('en-US'),
          s(b.graphMs),
          s(b.serializeMs),
          s(b.createMs),
          s(b.graphMs + b.serializeMs + b.createMs),
        ]);
      }
    }
  }
  printTable(
    'Session build of the training graphs: graph construction + onnxruntime session create (s)',
    [
      'where',
      'model',
      'session',
      'ONNX nodes',
      'graph construction s',
      'serialize s',
      'onnxruntime create s',
      'total s',
    ],
    rows,
    [
      `Measured once per process or page, at its first Trainer call (a LoRA r${RANK} on ${TARGETS.join(', ')} of the last ${LAST_LAYERS} layers). Graph construction: adapter slots, log-prob head, objective and reverse-mode autodiff (src/train/training-graph.ts), from the Trainer call to TrainingSession.create; serialize: the ModelProto encoded for onnxruntime (its weights as external data past 256 MB); onnxruntime create: InferenceSession.create (graph optimizations, weights copied into the wasm heap). Built once per adapter shape and objective, then kept by the Trainer.`,
      'Inference session: loadModelWithBase(dir, { slots: false }) — read and decode the folder, create the bare base session — for comparison.',
    ],
    'onnxruntime-web wasm',
  );
}

// ---------------------------------------------------------------------------------------------
// Node

export interface TrainSpec extends StepSpec {
  dir: string;
}

type TrainRequest = { kind: 'repeat'; reps: number } | { kind: 'memory' } | { kind: 'loaded' };

export function trainWorker(spec: TrainSpec): Promise<void> {
  return serveWorker(async () => {
    const { StepBench, wasmBytes } = await import('./lib/train-steps.js');
    let rssMax = 0;
    const sample = () => (rssMax = Math.max(rssMax, process.memoryUsage().rss));
    const { bench, loaded } = await StepBench.load(spec, folderSource(spec.dir), {}, sample);
    rssMax = 0; // the rounds' maximum, not the build's
    return {
      info: { loadMs: loaded.loadMs },
      handle: async (request) => {
        const r = request as TrainRequest;
        if (r.kind === 'loaded') return loaded;
        if (r.kind === 'memory')
          return { wasmMB: wasmBytes() / MB, rssMB: rssMax / MB, peakRssMB: peakRssMB() };
        return bench.repeat(r.reps);
      },
    };
  });
}

function nodeRunner(): Runner {
  let w: Worker<TrainRequest, unknown> | undefined;
  return {
    async start(spec, model) {
      w = await Worker.start<TrainRequest, unknown>(`train ${model} ${spec.variant}`, 'train', {
        ...spec,
        dir: ensureModel(model),
      } satisfies TrainSpec);
      return (await w.call({ kind: 'loaded' })) as Loaded;
    },
    repeat: async (reps) => (await w?.call({ kind: 'repeat', reps })) as RoundResult,
    memory: async () => (await w?.call({ kind: 'memory' })) as Record<string, number>,
    stop: async () => w?.stop(),
  };
}

function nodeMemoryTable(where: string, all: Measured[], extra: string): void {
  printTable(
    `Memory while training vs while only running forward: Node, onnxruntime-web ${packageVersion('onnxruntime-web')} wasm, ${where}`,
    [
      'model, batch',
      'process runs',
      'wasm heap MB',
      'vs scoring forward',
      'RSS MB during the rounds',
      'vs scoring forward',
      'peak RSS MB (build included)',
    ],
    all.map((m) => [
      modelCell(m),
      label(m.variant, m.rows),
      fmt(m.memory?.wasmMB ?? NaN, 0),
      memoryRatio(all, m, 'wasmMB'),
      fmt(m.memory?.rssMB ?? NaN, 0),
      memoryRatio(all, m, 'rssMB'),
      fmt(m.memory?.peakRssMB ?? NaN, 0),
    ]),
    [
      'One process per row, holding only what its row needs: score and the training rows read the folder\'s graph and weights (no inference session); prefill and "beside the inference session" hold the inference session (loadModelWithBase).',
      "wasm heap: the size of onnxruntime-web's WebAssembly.Memory (captured when its module creates it) after the rounds. It never shrinks, so it is the high-water mark since the process started, the sessions' creation included (onnxruntime copies the model bytes in and then the weights out of them). RSS during the rounds: the maximum of the resident set sampled after every forward or step; peak RSS: the process's maximum (getrusage), graph construction and session creation included. Both include Node and tsx (about 200 MB) and the JS copy of the graph and base weights the Trainer keeps.",
      "Every session holds its own copy of the base weights in the wasm heap: the training session holds SmolLM2-135M's 540 MB of fp32 weights again, beside the inference session's (the \"beside\" row). DPO and KTO hold the scoring session (their reference log-probs, KTO's z) and the training session.",
    ],
    extra,
  );
}

// ---------------------------------------------------------------------------------------------
// Chromium

type PageGlobal = { train: TrainPage };

async function runChromium(o: TrainBenchOptions): Promise<{ version: string; all: Measured[] }> {
  const { bundle, launchBrowser, startServer } = await import('../test/browser/harness.js');
  for (const model of o.models) ensureModel(model);
  const work = mkdtempSync(path.join(os.tmpdir(), 'edge-adapters-train-'));
  progress('train chromium: bundling the page');
  await bundle({ 'train-page': 'bench/browser/train-page.ts' }, path.join(work, 'app'));
  writeFileSync(
    path.join(work, 'app', 'index.html'),
    '<!doctype html><meta charset="utf-8"><title>train</title><script type="module" src="train-page.js"></script>',
  );
  const server = await startServer({
    '/app/': path.join(work, 'app'),
    '/models/': path.join(OUT, 'models'),
    '/ort/': path.join(NODE_MODULES, 'onnxruntime-web', 'dist'),
  });
  const { context, close } = await launchBrowser(path.join(work, 'profile'), [
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
    // measureUserAgentSpecificMemory answers at once instead of at the next scheduled GC.
    '--enable-blink-features=ForceEagerMeasureMemory',
  ]);
  const version = context.browser()?.version() ?? 'unknown';
  const pageRunner = (): Runner => {
    let page: Page | undefined;
    const api = <T>(run: (p: Page) => Promise<T>) => {
      if (!page) throw new Error('no page');
      return run(page);
    };
    return {
      async start(spec, model) {
        page = await context.newPage();
        await page.goto(`${server.origin}/app/index.html`);
        await page.waitForFunction(() => 'train' in globalThis);
        return page.evaluate(([s, m, w]) => (globalThis as unknown as PageGlobal).train.load(s, m, w), [
          spec,
          `${server.origin}/models/${model}/`,
          `${server.origin}/ort/`,
        ] as const);
      },
      repeat: (reps) =>
        api(async (p) => {
          await p.bringToFront(); // Chromium lowers the priority of background renderers
          return p.evaluate((n) => (globalThis as unknown as PageGlobal).train.repeat(n), reps);
        }),
      memory: () => api((p) => p.evaluate(() => (globalThis as unknown as PageGlobal).train.memory())),
      stop: async () => {
        await page?.close();
        page = undefined;
      },
    };
  };
  try {
    const all = await measurePlace(`chromium`, o, 1, true, pageRunner);
    return { version, all };
  } finally {
    await close();
    await server.close();
    rmSync(work, { recursive: true, force: true });
  }
}

function chromiumMemoryTable(version: string, all: Measured[]): void {
  printTable(
    `Memory while training vs while only running forward: Chromium ${version}, onnxruntime-web ${packageVersion('onnxruntime-web')} wasm, 1 thread`,
    [
      'model, batch',
      'page runs',
      'page memory MB',
      'vs scoring forward',
      'wasm heap MB',
      'vs scoring forward',
      'JS MB (page − wasm)',
    ],
    all.map((m) => [
      modelCell(m),
      label(m.variant, m.rows),
      fmt(m.memory?.pageMB ?? NaN, 0),
      memoryRatio(all, m, 'pageMB'),
      fmt(m.memory?.wasmMB ?? NaN, 0),
      memoryRatio(all, m, 'wasmMB'),
      fmt((m.memory?.pageMB ?? NaN) - (m.memory?.wasmMB ?? NaN), 0),
    ]),
    [
      "One page per row, all open together. Page memory: performance.measureUserAgentSpecificMemory() after the rounds (the page's JS heap and wasm memory), as bench/quant.ts measures it. wasm heap: onnxruntime-web's WebAssembly.Memory in the page (its high-water mark, session creation included). JS: the rest of the page memory — the JS heap after a GC, with the ArrayBuffers of the graph and base weights the Trainer keeps (none in the prefill page).",
    ],
    `Chromium ${version}`,
  );
}

// ---------------------------------------------------------------------------------------------

export async function runTrain(o: TrainBenchOptions): Promise<void> {
  const places = o.places ?? ['node', 'chromium'];
  const models = MODELS.filter((m) => o.models.includes(m));
  const opts = { ...o, models };
  const rowsNote = `Batch: ${models.map((m) => `${m} ${BATCH[m]} rows`).join(', ')} of ${ROW_TOKENS} tokens (BOS + TinyStories text; the completion, scored, from token ${COMPLETION_START}); a new LoRA r${RANK} (alpha ${2 * RANK}, initLora) on ${TARGETS.join(', ')} of the last ${LAST_LAYERS} layers; ${o.rounds} interleaved rounds of ${models.map((m) => `${repsOf(m, o.quick)} (${m}${dropOf(m) ? `, after ${dropOf(m)} not counted` : ''})`).join(' / ')} forwards or steps per process; cells: median [p25–p75] over all of them; the ratio: per round, the row's median over the scoring forward's median in the same round, median [p25–p75] over rounds.`;
  const what = [
    "Baselines: the scoring graph (Trainer.logProbs) is the training graph's decoder — the adapter's slots on the last layers and the log-prob head — run forward only, the whole batch in one run; the inference prefill is the inference session (the bare base, no slots) run on each row from an empty cache (DecoderSession.forward, logits of every position and the KV cache).",
    "A step: Trainer.train's batch, adapter feeds, one onnxruntime run of the training graph (loss, log-probs, gradients of the slot inputs), the gradients taken back to the PEFT tensors, clipping and AdamW. onnxruntime run: the time inside TrainingSession.run (feeds wrapped, run, outputs read); for KTO it includes the two scoring runs of the KL estimate. JS: the rest of the step.",
  ];
  const built: { where: string; all: Measured[] }[] = [];
  if (places.includes('node')) {
    for (const threads of o.threads) {
      const where = `${threads} thread${threads > 1 ? 's' : ''}`;
      const all = await measurePlace(`node ${where}`, opts, threads, threads === o.threads[0], nodeRunner);
      const extra = `backend wasm, ${where}`;
      timingTable(
        `Training on the device: ms per step against one forward of the same batch, Node, onnxruntime-web ${packageVersion('onnxruntime-web')} wasm, ${where}`,
        all,
        extra,
        [
          rowsNote,
          ...what,
          lossNote(all),
          'One worker process per row, stepped in turns (the order rotates every round).',
        ],
      );
      if (threads === o.threads[0]) nodeMemoryTable(where, all, extra);
      built.push({ where: `Node, ${where}`, all });
    }
  }
  if (places.includes('chromium')) {
    const { version, all } = await runChromium(opts);
    timingTable(
      `Training on the device: ms per step against one forward of the same batch, Chromium ${version}, onnxruntime-web ${packageVersion('onnxruntime-web')} wasm, 1 thread`,
      all,
      `Chromium ${version}`,
      [
        rowsNote,
        ...what,
        lossNote(all),
        'One page per row, all open and stepped in turns (the measured page in front); timed on the page. The wasm binary is the one Node runs, without threads.',
      ],
    );
    chromiumMemoryTable(version, all);
    built.push({ where: `Chromium, 1 thread`, all });
  }
  buildTable(built);
}
