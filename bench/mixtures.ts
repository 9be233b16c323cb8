/**
 * The cost of k active experts against one adapter, per backend: decode ms/token of a token-level
 * Arrow mixture of 4 LoRA experts (src/graph/expert-router.ts, src/mixtures/expert-feeds.ts) at top
 * 1, 2 and 4, against one LoRA r8 on the default slots graph, and what per-request routing
 * (adapters.route) adds to a request.
 *
 *   one          baseline: the default slots graph, the first expert alone active
 *   router-one   the graph with an Arrow router in every LoRA slot, the same adapter (the router idle)
 *   mix-k        the router graph, an Arrow mixture of the 4 experts, top k (k = 1, 2, 4): the graph
 *                computes every expert and weights them per token, so k changes no work
 *   blend-n      the default slots graph, a static blend of the first n experts (weights 1/n, the
 *                ranks concatenated: rank 8n)
 *
 * Models: the default model (models/default, 1.8M parameters) with its four real LoRA experts
 * (shakespeare, dog, seaside, royal; r8 on every linear), and synth SmolLM2-135M with four
 * synthetic LoRA r8 on every linear (seeds 1–4). Places: Node (onnxruntime-web wasm, 1 thread),
 * headless Chromium (wasm, 1 thread), and Chromium WebGPU for the default model (SwiftShader, a
 * software adapter: a few steps only).
 *
 * Method: per place and model, two runtimes — the default slots graph and the router graph — each
 * in its own worker process (Node) or page (Chromium), both alive. Every round steps all rows, the
 * order rotating each round: a row activates its adapters on its runtime (timed apart), then runs
 * teacher-forced decode steps after a 32-token prompt. Each round's median ms/token of a row is
 * divided by the baseline's of the same round. The prompt is real TinyStories text (lower-case, as
 * the default model was trained) in each model's own tokens.
 *
 * The check column: each row's last-position logits of the prompt — in Node against the float64
 * oracle (src/reference: PEFT's formulas, Arrow prototypes by power iteration; the default model
 * only), on the other places against Node's — so a table cannot silently time a broken graph.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { expectedShapes, type Checkpoint, type LlamaConfig } from '../src/formats/checkpoint.js';
import { decodeModel, tensorData } from '../src/formats/onnx/index.js';
import type { PeftAdapter } from '../src/formats/peft-adapter.js';
import { graphBaseModel } from '../src/graph/base-weights.js';
import { MixtureReferenceSession } from '../src/reference/mixtures.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { DEFAULT_MODEL_DIR } from '../models/default-model.js';
import { EXPERT_IDS, EXPERTS_DIR, expertTexts, SHAKESPEARE_DIR } from '../models/expert-tasks.js';
import {
  MixtureUnit,
  ROWS,
  rowSpec,
  type DecodeResult,
  type Graph,
  type MixturesPage,
  type RoutingResult,
  type RowKey,
  type RowSpec,
  type UnitLoad,
} from './browser/mixtures-page.js';
import { loraAllLinear } from './lib/adapters.js';
import { serveWorker, Worker } from './lib/child.js';
import { ensureModel, fixture, modelConfig } from './lib/models.js';
import {
  fmt,
  median,
  NODE_MODULES,
  packageVersion,
  printTable,
  progress,
  quantile,
  ratio,
} from './lib/report.js';

const PROMPT = 32;
const RANK = 8;
const TOLERANCE = 1e-4;
const GRAPHS: readonly Graph[] = ['slots', 'router'];

export interface MixturesOptions {
  quick: boolean;
  /** 'node', 'chromium', 'webgpu' (default all). */
  places?: readonly string[];
}

type ModelKey = 'default' | 'smollm2-135m';

interface Plan {
  key: ModelKey;
  label: string;
  dir: string;
  experts: { id: string; folder: string }[];
  /** Rounds and decode steps per row and round, on wasm. */
  rounds: number;
  steps: number;
  /** Repetitions of each routing step per round. */
  routingReps: number;
  /** Example prompts per expert for adapters.setExamples. */
  examples: number;
}

function plans(quick: boolean, work: string): Plan[] {
  const smolDir = ensureModel('smollm2-135m');
  const config = modelConfig('smollm2-135m');
  const smolExperts = [1, 2, 3, 4].map((seed) => {
    const folder = path.join(work, 'experts', `seed-${seed}`);
    mkdirSync(folder, { recursive: true });
    for (const [name, bytes] of loraAllLinear(config, RANK, seed))
      writeFileSync(path.join(folder, name), bytes);
    return { id: `seed-${seed}`, folder };
  });
  return [
    {
      key: 'default',
      label: `the default model (1.8M-parameter Llama), its 4 LoRA experts r${RANK} on every linear (${EXPERT_IDS.join(', ')})`,
      dir: DEFAULT_MODEL_DIR,
      experts: EXPERT_IDS.map((id) => ({
        id,
        folder: id === 'shakespeare' ? SHAKESPEARE_DIR : path.join(EXPERTS_DIR, id),
      })),
      rounds: quick ? 3 : 15,
      steps: quick ? 16 : 48,
      routingReps: quick ? 3 : 5,
      examples: 16,
    },
    {
      key: 'smollm2-135m',
      label: `synth SmolLM2-135M, 4 synthetic LoRA r${RANK} on every linear (seeds 1–4)`,
      dir: smolDir,
      experts: smolExperts,
      rounds: quick ? 2 : 6,
      steps: quick ? 4 : 16,
      routingReps: 1,
      examples: 4,
    },
  ];
}

/** WebGPU (SwiftShader, about half a second per step): the default model only, a few steps. */
const gpuPlan = (quick: boolean) => ({
  rounds: quick ? 1 : 3,
  steps: quick ? 2 : 4,
  routingReps: 1,
  examples: 4,
});

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

// ---------------------------------------------------------------------------------------------
// Rows and tables

const ROW_LABELS: Record<RowKey, string> = {
  one: `one LoRA r${RANK} (baseline)`,
  'router-one': 'the same LoRA (the router idle)',
  'mix-1': 'Arrow mixture of 4 experts, top 1',
  'mix-2': 'Arrow mixture of 4 experts, top 2',
  'mix-4': 'Arrow mixture of 4 experts, top 4',
  'blend-2': 'static blend of 2 experts (weights 1/2)',
  'blend-4': 'static blend of 4 experts (weights 1/4)',
};

const GRAPH_LABELS: Record<Graph, string> = { slots: 'default slots', router: 'Arrow router' };

function rankCell(row: RowSpec): string {
  const a = row.active;
  if (a.kind === 'one') return String(RANK);
  if (a.kind === 'blend') return String(a.n * RANK);
  return `${a.n} × ${RANK} = ${a.n * RANK}, ${a.topK} weighted per token`;
}

interface Measured {
  row: RowSpec;
  rounds: DecodeResult[];
  logits?: number[];
  /** Max |logit| difference from the check's reference (the oracle in Node, Node's elsewhere). */
  check?: number;
  note?: string;
}

interface PlaceResult {
  where: string;
  measured: Measured[];
  routing: RoutingResult[];
  loadS: Partial<Record<Graph, number>>;
  tokens: number;
}

const spread = (xs: number[]) =>
  xs.length < 3
    ? ratio(median(xs))
    : `${ratio(median(xs))} [${ratio(quantile(xs, 0.25))}–${ratio(quantile(xs, 0.75))}]`;

const exp = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? v.toExponential(1) : 'n/a');

const checkCell = (m: Measured) =>
  m.check === undefined
    ? '—'
    : `${exp(m.check)} ${m.check <= TOLERANCE ? '(ok)' : `(over ${TOLERANCE.toExponential(0)})`}`;

const maxDiff = (a: readonly number[], b: ArrayLike<number>) =>
  a.reduce((d, v, i) => Math.max(d, Math.abs(v - b[i])), 0);

function decodeTable(title: string, r: PlaceResult, checkHeader: string, notes: string[], extra: string) {
  const base = r.measured.find((m) => m.row.key === 'one');
  const rows = r.measured.map((m) => {
    const label = [ROW_LABELS[m.row.key], GRAPH_LABELS[m.row.graph], rankCell(m.row)];
    if (!m.rounds.length) return [...label, m.note ?? 'n/a', '', '', '', ''];
    const steps = m.rounds.flatMap((x) => x.ms);
    const ratios = base
      ? m.rounds
          .map((x, i) => median(x.ms) / median(base.rounds[i]?.ms ?? []))
          .filter((v) => Number.isFinite(v))
      : [];
    return [
      ...label,
      fmt(median(m.rounds.map((x) => x.activateMs)), 1),
      fmt(median(steps), 2),
      fmt(1000 / median(steps), 0),
      m === base ? '1.00x' : ratios.length ? spread(ratios) : 'n/a',
      checkCell(m),
    ];
  });
  printTable(
    title,
    [
      'active',
      'graph',
      'LoRA rank per module',
      'activate ms',
      'decode ms/token',
      'tok/s',
      'time vs baseline, same round',
      checkHeader,
    ],
    rows,
    notes,
    extra,
  );
}

// ---------------------------------------------------------------------------------------------
// A place: two units (the slots graph and the router graph), stepped in turns

interface Unit {
  loadMs: number;
  decode(key: RowKey): Promise<DecodeResult>;
  logits(key: RowKey): Promise<{ logits: number[]; oracle?: number }>;
  routing(reps: number): Promise<RoutingResult>;
  stop(): Promise<void>;
}

async function measurePlace(
  where: string,
  start: (graph: Graph) => Promise<Unit>,
  o: { rounds: number; routingReps: number },
  reference?: Map<RowKey, number[]>,
): Promise<PlaceResult> {
  const units = new Map<Graph, Unit>();
  const measured: Measured[] = ROWS.map((row) => ({ row, rounds: [] }));
  const result: PlaceResult = { where, measured, routing: [], loadS: {}, tokens: PROMPT };
  try {
    for (const graph of GRAPHS) {
      progress(`mixtures ${where}: loading the ${GRAPH_LABELS[graph]} graph`);
      try {
        const unit = await start(graph);
        units.set(graph, unit);
        result.loadS[graph] = unit.loadMs / 1000;
      } catch (error) {
        const note = `failed: ${String(error).split('\n')[0].slice(0, 200)}`;
        progress(`mixtures ${where}: ${note}`);
        for (const m of measured) if (m.row.graph === graph) m.note = note;
      }
    }
    const live = measured.filter((m) => units.has(m.row.graph));
    for (let round = 0; round < o.rounds; round++) {
      progress(`mixtures ${where}: round ${round + 1}/${o.rounds}`);
      for (let j = 0; j < live.length; j++) {
        const m = live[(j + round) % live.length];
        m.rounds.push(await (units.get(m.row.graph) as Unit).decode(m.row.key));
      }
      const slots = units.get('slots');
      if (slots) result.routing.push(await slots.routing(o.routingReps));
    }
    progress(`mixtures ${where}: logits`);
    for (const m of live) {
      const got = await (units.get(m.row.graph) as Unit).logits(m.row.key);
      m.logits = got.logits;
      const want = reference?.get(m.row.key);
      m.check = want ? maxDiff(got.logits, want) : got.oracle;
    }
    // Without a reference, the router graph's idle row still has one: the baseline's logits.
    const one = measured.find((m) => m.row.key === 'one')?.logits;
    const idle = measured.find((m) => m.row.key === 'router-one');
    if (!reference && one && idle?.logits && idle.check === undefined) idle.check = maxDiff(idle.logits, one);
  } finally {
    for (const unit of units.values()) await unit.stop();
  }
  return result;
}

function loadUnit(plan: Plan, graph: Graph, text: string, examples: string[][], steps: number): UnitLoad {
  return {
    model: plan.dir,
    graph,
    experts: plan.experts,
    backend: 'wasm',
    threads: 1,
    text,
    promptTokens: PROMPT,
    steps,
    ...(graph === 'slots' ? { examples: examples.map((e) => e.slice(0, plan.examples)) } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Node: a worker process per unit

export interface MixturesSpec {
  load: UnitLoad;
  /** Compare each row's logits with the float64 oracle (src/reference). */
  oracle: boolean;
}

type UnitRequest =
  { kind: 'decode'; key: RowKey } | { kind: 'logits'; key: RowKey } | { kind: 'routing'; reps: number };

/** The checkpoint of a model folder's decoder graph (weights in the file): what the oracle runs. */
function graphCheckpoint(dir: string): Checkpoint {
  const config = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as LlamaConfig;
  const graph = decodeModel(new Uint8Array(readFileSync(path.join(dir, 'model.onnx'))), 'model.onnx');
  const base = graphBaseModel(graph, config);
  const initializers = new Map((graph.graph?.initializer ?? []).map((t) => [t.name, t]));
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedShapes(config)) {
    const t = initializers.get(name); // the embedding and the norms; linears are stored transposed
    const data = t ? (tensorData(t, 'model.onnx').data as Float32Array) : base.weight(name.slice(0, -7));
    tensors.set(name, { shape, data });
  }
  return { config, tensors };
}

/** The float64 oracle's last-position logits of `tokens` with the row's adapters. */
function oracleLogits(ckpt: Checkpoint, row: RowSpec, experts: PeftAdapter[], tokens: number[]) {
  const a = row.active;
  const rows =
    a.kind === 'one'
      ? referenceLogitsWithAdapters(ckpt, [{ adapter: experts[0] }], tokens)
      : a.kind === 'blend'
        ? referenceLogitsWithAdapters(
            ckpt,
            experts.slice(0, a.n).map((adapter) => ({ adapter, weight: 1 / a.n })),
            tokens,
          )
        : new MixtureReferenceSession(ckpt, experts.slice(0, a.n), {
            kind: 'arrow',
            topK: a.topK,
            temperature: 1,
          }).forward(tokens);
  return rows[rows.length - 1];
}

export function mixturesWorker(spec: MixturesSpec): Promise<void> {
  return serveWorker(async () => {
    const { unit, loadMs } = await MixtureUnit.load(spec.load);
    let ckpt: Checkpoint | undefined;
    return {
      info: { loadMs },
      handle: async (request) => {
        const r = request as UnitRequest;
        if (r.kind === 'decode') return unit.decode(r.key);
        if (r.kind === 'routing') return unit.routing(r.reps);
        const logits = await unit.logits(r.key);
        if (!spec.oracle) return { logits };
        ckpt ??= graphCheckpoint(spec.load.model);
        const experts = spec.load.experts.map((e) => unit.rt.adapters.get(e.id) as PeftAdapter);
        return { logits, oracle: maxDiff(logits, oracleLogits(ckpt, rowSpec(r.key), experts, unit.prompt)) };
      },
    };
  });
}

async function nodeUnit(plan: Plan, graph: Graph, load: UnitLoad): Promise<Unit> {
  const w = await Worker.start<UnitRequest, unknown>(`mixtures ${plan.key} ${graph}`, 'mixtures', {
    load,
    oracle: plan.key === 'default',
  } satisfies MixturesSpec);
  return {
    loadMs: w.info.loadMs,
    decode: async (key) => (await w.call({ kind: 'decode', key })) as DecodeResult,
    logits: async (key) => (await w.call({ kind: 'logits', key })) as { logits: number[]; oracle?: number },
    routing: async (reps) => (await w.call({ kind: 'routing', reps })) as RoutingResult,
    stop: () => w.stop(),
  };
}

// ---------------------------------------------------------------------------------------------
// Chromium: a page per unit

type PageGlobal = { mixtures: MixturesPage };

interface Chromium {
  version: string;
  origin: string;
  /** The WebGPU adapter's vendor and architecture, once a WebGPU page loaded. */
  gpu: string;
  open(): Promise<Page>;
  /** The URL a local folder is served at (mounted at start). */
  url(folder: string): string;
  close(): Promise<void>;
}

async function startChromium(work: string, folders: string[]): Promise<Chromium> {
  const { bundle, launchBrowser, startServer } = await import('../test/browser/harness.js');
  progress('mixtures chromium: bundling the page');
  await bundle({ 'mixtures-page': 'bench/browser/mixtures-page.ts' }, path.join(work, 'app'));
  writeFileSync(
    path.join(work, 'app', 'index.html'),
    '<!doctype html><meta charset="utf-8"><title>mixtures</title><script type="module" src="mixtures-page.js"></script>',
  );
  const mounts: Record<string, string> = {
    '/app/': path.join(work, 'app'),
    '/ort/': path.join(NODE_MODULES, 'onnxruntime-web', 'dist'),
  };
  const urls = new Map<string, string>();
  folders.forEach((folder, i) => {
    mounts[`/f${i}/`] = folder;
    urls.set(folder, `/f${i}/`);
  });
  const server = await startServer(mounts);
  // Every page computes in turn; none may be throttled as a background page.
  const browser = await launchBrowser(path.join(work, 'profile'), [
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
  ]);
  return {
    version: browser.context.browser()?.version() ?? 'unknown',
    origin: server.origin,
    gpu: '',
    async open() {
      const page = await browser.context.newPage();
      await page.goto(`${server.origin}/app/index.html`);
      await page.waitForFunction(() => 'mixtures' in globalThis);
      return page;
    },
    url(folder) {
      const at = urls.get(folder);
      if (!at) throw new Error(`folder not served: ${folder}`);
      return `${server.origin}${at}`;
    },
    async close() {
      await browser.close();
      await server.close();
    },
  };
}

async function pageUnit(c: Chromium, load: UnitLoad): Promise<Unit> {
  const page = await c.open();
  const served: UnitLoad = {
    ...load,
    model: c.url(load.model),
    experts: load.experts.map((e) => ({ id: e.id, folder: c.url(e.folder) })),
    wasmPaths: `${c.origin}/ort/`,
  };
  try {
    const loaded = await page.evaluate((l) => (globalThis as unknown as PageGlobal).mixtures.load(l), served);
    c.gpu ||= loaded.gpu;
    const api = async <T>(run: (p: Page) => Promise<T>) => {
      await page.bringToFront(); // Chromium lowers the priority of background renderers
      return run(page);
    };
    return {
      loadMs: loaded.loadMs,
      decode: (key) =>
        api((p) => p.evaluate((k) => (globalThis as unknown as PageGlobal).mixtures.decode(k), key)),
      logits: async (key) => ({
        logits: await api((p) =>
          p.evaluate((k) => (globalThis as unknown as PageGlobal).mixtures.logits(k), key),
        ),
      }),
      routing: (reps) =>
        api((p) => p.evaluate((n) => (globalThis as unknown as PageGlobal).mixtures.routing(n), reps)),
      stop: () => page.close(),
    };
  } catch (error) {
    await page.close();
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------

function methodNotes(plan: Plan, rounds: number, steps: number, oneGraph: string): string[] {
  return [
    `${plural(rounds, 'round')}; in each, every row activates its adapters (activate ms: median of those calls) and then runs ${plural(steps, 'teacher-forced decode step')} after the same ${PROMPT}-token prompt (TinyStories text, lower-case, in the model's tokens), the order of the rows rotating every round. decode ms/token, tok/s: median over all steps; time vs baseline: per round, the row's median step over the baseline's of the same round, median [p25–p75] over rounds.`,
    `Two runtimes, both alive and stepped in turns (${oneGraph}): Runtime.create with the default adapter slots, and with slots: { router: 'arrow' }; adapters.activate(id), adapters.activate([{ id, weight }, ...]) for the blends, adapters.activateMixture({ experts, router: { kind: 'arrow', topK } }) for the mixtures. Experts in order: ${plan.experts.map((e) => e.id).join(', ')}; the single LoRA is the first, the blend of 2 the first two.`,
    'The router graph computes all 4 experts in one [in, 4·r] MatMul per module and weights their rank-space activations per token (src/graph/expert-router.ts): top k only changes which coefficients are zero, not the work. An activation of a mixture computes the Arrow prototypes (the top right singular vector of each expert’s B·A per module).',
  ];
}

function routingTable(results: { plan: Plan; r: PlaceResult }[]): void {
  const rows = results
    .filter(({ r }) => r.routing.length)
    .map(({ plan, r }) => {
      const all = (f: (x: RoutingResult) => number[]) => r.routing.flatMap(f);
      const prefill = all((x) => x.prefillMs);
      const vs = (xs: number[]) => spread(xs.map((v, i) => v / prefill[i]));
      const embedding = all((x) => x.embeddingMs);
      const feeds = all((x) => x.routeFeedsMs);
      return [
        plan.key === 'default' ? 'default model' : 'synth SmolLM2-135M',
        r.where,
        fmt(median(prefill), 1),
        fmt(median(embedding), 1),
        vs(embedding),
        fmt(median(all((x) => x.routeMs)), 1),
        fmt(median(feeds), 1),
        vs(feeds),
      ];
    });
  printTable(
    `Per-request routing: what adapters.route adds to a request, against the prompt's prefill (${PROMPT} tokens)`,
    [
      'model',
      'where',
      'prefill ms (one LoRA active)',
      'routingEmbedding ms',
      'vs prefill',
      'route ms (top 2)',
      'route + blend feeds ms',
      'vs prefill',
    ],
    rows,
    [
      `On the default slots graph's runtime, the first expert active. Each round: the prefill (DecoderSession.forward over the prompt from an empty cache: what every request runs), adapters.routingEmbedding(prompt) (one forward of the base over the prompt with no adapter, the last hidden state and the surprisal-weighted embedding), adapters.route(prompt, { topK: 2 }) (that, then the whitened cosines against the prototypes), and route + adapters.blend of its choice (the feeds of the 2 experts concatenated: all that complete(prompt, { adapters: 'route' }) adds before its own prefill), repeated and interleaved, the order rotating every repetition. Ratios: per repetition over the prefill of the same repetition, median [p25–p75].`,
      `Prototypes: adapters.setExamples with ${[...new Map(results.map(({ plan }) => [plan.key, plan.examples]))].map(([key, n]) => `${n} (${key})`).join(' / ')} example prompts per expert (WebGPU: ${gpuPlan(false).examples}; the default model's experts' own example prompts, the synthetic experts get theirs by position). Routing costs one base forward over the prompt: about one prefill, paid once per request, before the routed adapters' own prefill.`,
    ],
  );
}

export async function runMixtures(o: MixturesOptions): Promise<void> {
  const places = o.places ?? ['node', 'chromium', 'webgpu'];
  const work = mkdtempSync(path.join(os.tmpdir(), 'edge-adapters-mixtures-'));
  const ortWeb = packageVersion('onnxruntime-web');
  const routing: { plan: Plan; r: PlaceResult }[] = [];
  let chromium: Chromium | undefined;
  try {
    const all = plans(o.quick, work);
    const text = readFileSync(fixture('corpora/tinystories-lowercase-4MB.txt'), 'utf8').slice(0, 4000);
    const texts = expertTexts({ examples: Math.max(...all.map((p) => p.examples)), heldOut: 0 });
    const examples = EXPERT_IDS.map((id) => texts.examples[id]);
    const nodeLogits = new Map<ModelKey, Map<RowKey, number[]>>();
    const logitsOf = (r: PlaceResult) =>
      new Map(r.measured.filter((m) => m.logits).map((m) => [m.row.key, m.logits as number[]]));
    if (places.includes('node')) {
      for (const plan of all) {
        const where = 'Node wasm';
        const r = await measurePlace(
          `${plan.key} ${where}`,
          (graph) => nodeUnit(plan, graph, loadUnit(plan, graph, text, examples, plan.steps)),
          plan,
        );
        r.where = where;
        nodeLogits.set(plan.key, logitsOf(r));
        routing.push({ plan, r });
        decodeTable(
          `k active experts against one adapter: ${plan.label}; Node, onnxruntime-web ${ortWeb} wasm, 1 thread`,
          r,
          plan.key === 'default' ? 'max abs logit diff vs float64 oracle' : 'max abs logit diff vs baseline',
          [
            ...methodNotes(plan, plan.rounds, plan.steps, 'one worker process each'),
            plan.key === 'default'
              ? `Check: the last prompt position's logits against the float64 oracle with PEFT's formulas (src/reference/peft.ts for one adapter and the blends, src/reference/mixtures.ts for the mixtures: Arrow routing per token, prototypes by power iteration), on the graph's own weights; tolerance ${TOLERANCE.toExponential(0)} (largest |logit| ${exp(Math.max(...(r.measured[0].logits ?? [NaN]).map(Math.abs)))}).`
              : "Check: the router graph with the single LoRA against the baseline (the same adapter on the default slots graph: equal up to float32 rounding). No float64 oracle here: it finds the Arrow prototypes by power iteration on ΔW formed explicitly, about 12 minutes for SmolLM2-135M; the default model's table checks the same graph code against it, and the Chromium tables check against these logits.",
            `Load (Runtime.create + 4 adapters.add): ${GRAPHS.map((g) => `${GRAPH_LABELS[g]} ${fmt(r.loadS[g] ?? NaN, 1)} s`).join(', ')}.`,
          ],
          'backend wasm, 1 thread',
        );
      }
    }
    const wantChromium = places.includes('chromium') || places.includes('webgpu');
    if (wantChromium) {
      const folders = [...new Set(all.flatMap((p) => [p.dir, ...p.experts.map((e) => e.folder)]))];
      const c = await startChromium(work, folders);
      chromium = c;
      const jobs: { plan: Plan; backend: 'wasm' | 'webgpu' }[] = [];
      if (places.includes('chromium')) for (const plan of all) jobs.push({ plan, backend: 'wasm' });
      if (places.includes('webgpu')) jobs.push({ plan: all[0], backend: 'webgpu' });
      for (const { plan, backend } of jobs) {
        const gpu = backend === 'webgpu';
        const p = gpu ? { ...plan, ...gpuPlan(o.quick) } : plan;
        const where = gpu ? 'Chromium WebGPU (software)' : 'Chromium wasm';
        const reference = nodeLogits.get(plan.key);
        const r = await measurePlace(
          `${plan.key} ${where}`,
          (graph) => pageUnit(c, { ...loadUnit(p, graph, text, examples, p.steps), backend }),
          p,
          reference,
        );
        r.where = where;
        routing.push({ plan, r });
        decodeTable(
          `k active experts against one adapter: ${plan.label}; Chromium ${c.version}, onnxruntime-web ${ortWeb} ${gpu ? `WebGPU (${c.gpu || 'adapter unknown'}, software)` : 'wasm, 1 thread'}`,
          r,
          'max abs logit diff vs Node',
          [
            ...methodNotes(p, p.rounds, p.steps, 'one page each, the measured page in front'),
            reference
              ? `Check: the last prompt position's logits against Node's for the same row (onnxruntime-web wasm in Node); tolerance ${TOLERANCE.toExponential(0)}.`
              : 'Check: not run (the Node part did not run).',
            ...(gpu
              ? [
                  `WebGPU here is SwiftShader (${c.gpu || 'no adapter info'}), Vulkan implemented on the CPU (--enable-unsafe-webgpu, no GPU): its times say nothing about a hardware GPU; hence ${plural(p.rounds, 'round')} of ${plural(p.steps, 'step')}, the default model only, and ${p.examples} example prompts per expert.`,
                ]
              : ['The wasm binary is the one Node runs (onnxruntime-web), without threads.']),
            `Load (Runtime.create + 4 adapters.add, on the page): ${GRAPHS.map((g) => `${GRAPH_LABELS[g]} ${fmt(r.loadS[g] ?? NaN, 1)} s`).join(', ')}.`,
          ],
          `Chromium ${c.version}`,
        );
      }
    }
    routingTable(routing);
  } finally {
    await chromium?.close();
    rmSync(work, { recursive: true, force: true });
  }
}
