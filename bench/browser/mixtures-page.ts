/**
 * One runtime of bench/mixtures.ts: a model loaded with the default adapter slots or with an Arrow
 * router, its experts added, and the rows of that graph (which adapters are active) stepped one
 * call at a time. The same class runs in the bench's Node workers (paths) and on its Chromium pages
 * (URLs, `window.mixtures`).
 */
import { Runtime } from '../../src/runtime.js';
import { timeDecode } from '../lib/decode-steps.js';

export type Graph = 'slots' | 'router';

export type RowKey = 'one' | 'router-one' | 'mix-1' | 'mix-2' | 'mix-4' | 'blend-2' | 'blend-4';

export interface RowSpec {
  key: RowKey;
  graph: Graph;
  /** What is active: the first expert alone, a static blend of the first n, or an Arrow mixture of n. */
  active: { kind: 'one' } | { kind: 'blend'; n: number } | { kind: 'mixture'; n: number; topK: number };
}

/** The rows, baseline first. */
export const ROWS: readonly RowSpec[] = [
  { key: 'one', graph: 'slots', active: { kind: 'one' } },
  { key: 'router-one', graph: 'router', active: { kind: 'one' } },
  { key: 'mix-1', graph: 'router', active: { kind: 'mixture', n: 4, topK: 1 } },
  { key: 'mix-2', graph: 'router', active: { kind: 'mixture', n: 4, topK: 2 } },
  { key: 'mix-4', graph: 'router', active: { kind: 'mixture', n: 4, topK: 4 } },
  { key: 'blend-2', graph: 'slots', active: { kind: 'blend', n: 2 } },
  { key: 'blend-4', graph: 'slots', active: { kind: 'blend', n: 4 } },
];

export const rowSpec = (key: RowKey): RowSpec => ROWS.find((r) => r.key === key) as RowSpec;

export interface UnitLoad {
  /** The model folder: a path (Node) or a URL (a page). */
  model: string;
  graph: Graph;
  /** The experts in order (the first is the single adapter of the 'one' rows): id and PEFT folder. */
  experts: { id: string; folder: string }[];
  backend: 'wasm' | 'webgpu';
  threads: number;
  wasmPaths?: string;
  /** Text the prompt and the teacher-forced continuation are cut from (in the model's tokens). */
  text: string;
  promptTokens: number;
  steps: number;
  /** Example prompts per expert (same order), for per-request routing (the slots graph only). */
  examples?: string[][];
}

export interface DecodeResult {
  /** ms of the activation call before the steps. */
  activateMs: number;
  /** ms of each teacher-forced decode step. */
  ms: number[];
}

export interface RoutingResult {
  /** Per repetition: the prompt's prefill with the first expert active (a fresh cache). */
  prefillMs: number[];
  /** adapters.routingEmbedding(prompt): the base's forward over the prompt and the embedding. */
  embeddingMs: number[];
  /** adapters.route(prompt, { topK: 2 }): the embedding and the router. */
  routeMs: number[];
  /** route and the blend feeds of its choice: what complete({ adapters: 'route' }) adds before its prefill. */
  routeFeedsMs: number[];
}

export class MixtureUnit {
  /** routing() calls so far: the order of its steps rotates across calls too. */
  private routings = 0;

  private constructor(
    readonly rt: Runtime,
    private readonly o: UnitLoad,
    readonly prompt: number[],
    readonly next: number[],
  ) {}

  static async load(o: UnitLoad): Promise<{ unit: MixtureUnit; loadMs: number }> {
    const t = performance.now();
    const rt = await Runtime.create({
      model: o.model,
      backend: o.backend,
      threads: o.threads,
      wasmPaths: o.wasmPaths,
      ...(o.graph === 'router' ? { slots: { router: 'arrow' as const } } : {}),
    });
    for (const e of o.experts) await rt.adapters.add(e.id, e.folder);
    const loadMs = performance.now() - t;
    const ids = rt.model.tokenizer.encode(o.text, { bos: true });
    if (ids.length < o.promptTokens + o.steps) throw new Error(`the text has ${ids.length} tokens only`);
    const unit = new MixtureUnit(
      rt,
      o,
      ids.slice(0, o.promptTokens),
      ids.slice(o.promptTokens, o.promptTokens + o.steps),
    );
    if (o.examples) {
      for (const [i, e] of o.experts.entries()) await rt.adapters.setExamples(e.id, o.examples[i]);
      await rt.adapters.route(unit.prompt); // fits the router's whitening once
    }
    for (const row of ROWS) if (row.graph === o.graph) await unit.decode(row.key, 2); // warm-up
    return { unit, loadMs };
  }

  /** Makes the row's adapters active. */
  async activate(key: RowKey): Promise<void> {
    const row = rowSpec(key);
    if (row.graph !== this.o.graph) throw new Error(`row ${key} runs on the ${row.graph} graph`);
    const ids = this.o.experts.map((e) => e.id);
    const a = row.active;
    if (a.kind === 'one') await this.rt.adapters.activate(ids[0]);
    else if (a.kind === 'blend')
      await this.rt.adapters.activate(ids.slice(0, a.n).map((id) => ({ id, weight: 1 / a.n })));
    else
      await this.rt.adapters.activateMixture({
        experts: ids.slice(0, a.n),
        router: { kind: 'arrow', topK: a.topK },
      });
  }

  /** Activates the row, then times `steps` teacher-forced decode steps after the prompt. */
  async decode(key: RowKey, steps = this.next.length): Promise<DecodeResult> {
    const t = performance.now();
    await this.activate(key);
    const activateMs = performance.now() - t;
    const ms = await timeDecode(this.rt.model.session, this.prompt, this.next.slice(0, steps));
    return { activateMs, ms };
  }

  /** The last prompt position's logits with the row active. */
  async logits(key: RowKey): Promise<number[]> {
    await this.activate(key);
    const rows = await this.rt.logits(this.prompt);
    return Array.from(rows[rows.length - 1]);
  }

  /** `reps` repetitions of each per-request routing step, interleaved, with the first expert active. */
  async routing(reps: number): Promise<RoutingResult> {
    await this.activate('one');
    const session = this.rt.model.session;
    const adapters = this.rt.adapters;
    const out: RoutingResult = { prefillMs: [], embeddingMs: [], routeMs: [], routeFeedsMs: [] };
    const steps: [number[], () => Promise<unknown>][] = [
      [
        out.prefillMs,
        async () => session.dispose((await session.forward(this.prompt, session.startCache())).cache),
      ],
      [out.embeddingMs, () => adapters.routingEmbedding(this.prompt)],
      [out.routeMs, () => adapters.route(this.prompt, { topK: 2 })],
      [out.routeFeedsMs, async () => adapters.blend(await adapters.route(this.prompt, { topK: 2 }))],
    ];
    for (let r = 0; r < reps; r++) {
      const turn = this.routings++;
      for (let j = 0; j < steps.length; j++) {
        const [ms, run] = steps[(j + turn) % steps.length];
        const t = performance.now();
        await run();
        ms.push(performance.now() - t);
      }
    }
    return out;
  }
}

/** What the page exposes as `window.mixtures`. */
export interface MixturesPage {
  /** Loads the unit; the load time and, on WebGPU, the adapter's vendor and architecture. */
  load(o: UnitLoad): Promise<{ loadMs: number; gpu: string }>;
  decode(key: RowKey): Promise<DecodeResult>;
  logits(key: RowKey): Promise<number[]>;
  routing(reps: number): Promise<RoutingResult>;
}

if (typeof document !== 'undefined') {
  let unit: MixtureUnit | undefined;
  const loaded = () => {
    if (!unit) throw new Error('load first');
    return unit;
  };
  const page: MixturesPage = {
    async load(o) {
      const done = await MixtureUnit.load(o);
      unit = done.unit;
      const nav = navigator as Navigator & {
        gpu?: { requestAdapter(): Promise<{ info?: { architecture?: string; vendor?: string } } | null> };
      };
      const info = o.backend === 'webgpu' ? (await nav.gpu?.requestAdapter())?.info : undefined;
      return {
        loadMs: done.loadMs,
        gpu: info ? `${info.vendor ?? ''} ${info.architecture ?? ''}`.trim() : '',
      };
    },
    decode: (key) => loaded().decode(key),
    logits: (key) => loaded().logits(key),
    routing: (reps) => loaded().routing(reps),
  };
  (globalThis as unknown as { mixtures: MixturesPage }).mixtures = page;
}
