/**
 * Part 3 (issue 3): what adapter slots and active adapters cost per decoded token, on synth
 * SmolLM2-135M, onnxruntime-web wasm.
 *
 * Paired method: one process holds the unpatched base (loadModel slots: false) and one variant
 * session (at most two SmolLM2 sessions in the wasm heap); decode steps alternate between them
 * (base, variant, variant, base, ...), both teacher-forced on the same real-text tokens from the
 * same 128-token prompt, restarting from the prompt's cache every 64 steps. Each pair gives a ratio
 * variant / base measured under the same machine state; we report the median ratio and its spread.
 * A step is DecoderSession.forward (the engine's decode step, feeds included).
 */
import { DecoderSession, type KvCache } from '../src/engine/decoder-session.js';
import { parsePeftAdapter } from '../src/formats/peft-adapter.js';
import type { SlotOptions } from '../src/graph/adapter-slots.js';
import { loadModelWithBase } from '../src/load-model.js';
import { AdapterRegistry } from '../src/runtime.js';
import { adapterSource, loraAllLinear, loraOn, type AdapterFiles } from './lib/adapters.js';
import { peakRssMB, serveWorker, Worker } from './lib/child.js';
import { ensureModel, modelConfig, storyTokens } from './lib/models.js';
import { fmt, median, printTable, progress, quantile, ratio } from './lib/report.js';

const PROMPT = 128;
const SEGMENT = 64;
const RANK = 8;

interface Variant {
  label: string;
  /** Slot options, or false for the bare base; ignored when `declare` is set. */
  slots: SlotOptions | false;
  /** Load with only the slots these adapters need (`slots: { adapters: [configs] }`). */
  declare?: string[];
  /** Adapters to activate (ids below), or none. */
  adapters: { id: string; weight?: number }[];
}

const DEFAULT_SLOTS: SlotOptions = {};

function variants(control: boolean): Variant[] {
  const lora = [{ id: 'lora0' }];
  const blend = [0, 1, 2, 3].map((k) => ({ id: `lora${k}`, weight: 0.25 }));
  const v: Variant[] = [];
  if (control)
    v.push({ label: 'unpatched base, a second session (noise floor)', slots: false, adapters: [] });
  v.push(
    { label: 'default slots, no adapter active', slots: DEFAULT_SLOTS, adapters: [] },
    { label: `default slots, LoRA r${RANK} all-linear`, slots: DEFAULT_SLOTS, adapters: lora },
    {
      label: `default slots, blend of 4 LoRA r${RANK} all-linear (rank ${4 * RANK})`,
      slots: DEFAULT_SLOTS,
      adapters: blend,
    },
    { label: `default slots, DoRA r${RANK} all-linear`, slots: DEFAULT_SLOTS, adapters: [{ id: 'dora' }] },
    {
      label: `declared slots, LoRA r${RANK} all-linear`,
      slots: DEFAULT_SLOTS,
      declare: ['lora0'],
      adapters: lora,
    },
    {
      label: `declared slots, blend of 4 LoRA r${RANK} all-linear (rank ${4 * RANK})`,
      slots: DEFAULT_SLOTS,
      declare: ['lora0', 'lora1', 'lora2', 'lora3'],
      adapters: blend,
    },
    {
      label: `declared slots, DoRA r${RANK} all-linear`,
      slots: DEFAULT_SLOTS,
      declare: ['dora'],
      adapters: [{ id: 'dora' }],
    },
    {
      label: `declared slots, LoRA r${RANK} q_proj+v_proj`,
      slots: DEFAULT_SLOTS,
      declare: ['qv'],
      adapters: [{ id: 'qv' }],
    },
  );
  return v;
}

export interface OverheadSpec {
  threads: number;
  steps: number;
  warmup: number;
  control: boolean;
}

interface VariantResult {
  label: string;
  baseMs: number[];
  variantMs: number[];
  ratios: number[];
  activateMs: number;
}

type Request = { kind: 'variant'; index: number };

/** The worker: the base session stays loaded; each request loads one variant, measures it, releases it. */
export function overheadWorker(spec: OverheadSpec): Promise<void> {
  return serveWorker(async () => {
    const dir = ensureModel('smollm2-135m');
    const config = modelConfig('smollm2-135m');
    const { prompt, next } = storyTokens(PROMPT, SEGMENT);
    const loadedBase = await loadModelWithBase(dir, { slots: false, threads: spec.threads });
    const base = loadedBase.model.session;
    const adapters = new Map<string, AdapterFiles>([
      ...[0, 1, 2, 3].map((k): [string, AdapterFiles] => [`lora${k}`, loraAllLinear(config, RANK, k + 1)]),
      ['dora', loraAllLinear(config, RANK, 9, true)],
      ['qv', loraOn(config, ['q_proj', 'v_proj'], RANK, 11)],
    ]);
    const files = (id: string) => adapterSource(adapters.get(id) as AdapterFiles);
    const all = variants(spec.control);
    return {
      info: { rssMB: peakRssMB() },
      handle: async (request) => {
        const v = all[(request as Request).index];
        const slots = v.declare
          ? { adapters: v.declare.map((id) => parsePeftAdapter(files(id), id).config) }
          : v.slots;
        const loaded = await loadModelWithBase(dir, { slots, threads: spec.threads });
        const session = loaded.model.session;
        let activateMs = 0;
        if (v.adapters.length) {
          const registry = new AdapterRegistry(loaded.model, loaded.base);
          for (const a of v.adapters) await registry.add(a.id, files(a.id));
          const t = performance.now();
          await registry.activate(v.adapters);
          activateMs = performance.now() - t;
        }
        const r = await paired(base, session, prompt, next, spec.steps, spec.warmup);
        await session.release();
        return { label: v.label, ...r, activateMs } satisfies VariantResult;
      },
    };
  });
}

async function paired(
  a: DecoderSession,
  b: DecoderSession,
  prompt: number[],
  next: number[],
  steps: number,
  warmup: number,
): Promise<{ baseMs: number[]; variantMs: number[]; ratios: number[] }> {
  const start = async (s: DecoderSession) => (await s.forward(prompt, s.startCache())).cache;
  const [promptA, promptB] = [await start(a), await start(b)];
  let cacheA: KvCache = promptA;
  let cacheB: KvCache = promptB;
  const baseMs: number[] = [];
  const variantMs: number[] = [];
  const ratios: number[] = [];
  const step = async (s: DecoderSession, token: number, cache: KvCache): Promise<[number, KvCache]> => {
    const t = performance.now();
    const { cache: c } = await s.forward([token], cache);
    return [performance.now() - t, c];
  };
  for (let i = 0; i < warmup + steps; i++) {
    const k = i % SEGMENT;
    if (k === 0) [cacheA, cacheB] = [promptA, promptB];
    const token = next[k];
    let ta: number;
    let tb: number;
    if (i % 2 === 0) {
      [ta, cacheA] = await step(a, token, cacheA);
      [tb, cacheB] = await step(b, token, cacheB);
    } else {
      [tb, cacheB] = await step(b, token, cacheB);
      [ta, cacheA] = await step(a, token, cacheA);
    }
    if (i >= warmup) {
      baseMs.push(ta);
      variantMs.push(tb);
      ratios.push(tb / ta);
    }
  }
  return { baseMs, variantMs, ratios };
}

export interface OverheadOptions {
  threads: number[];
  steps: number;
  control: boolean;
}

export async function runOverhead(o: OverheadOptions): Promise<void> {
  ensureModel('smollm2-135m');
  for (const threads of o.threads) {
    progress(`decode overhead: loading the base, ${threads} thread(s)`);
    const spec: OverheadSpec = { threads, steps: o.steps, warmup: 6, control: o.control };
    const worker = await Worker.start<Request, VariantResult>(`overhead t${threads}`, 'overhead', spec);
    const results: VariantResult[] = [];
    const all = variants(o.control);
    for (let index = 0; index < all.length; index++) {
      progress(`decode overhead, ${threads} thread(s): ${all[index].label}`);
      results.push(await worker.call({ kind: 'variant', index }));
    }
    await worker.stop();
    report(threads, results, o.steps);
  }
}

function report(threads: number, results: VariantResult[], steps: number): void {
  const allBase = results.flatMap((r) => r.baseMs);
  const rows: string[][] = [
    [
      'unpatched base (loadModel slots: false)',
      fmt(median(allBase), 1),
      fmt(1000 / median(allBase), 1),
      fmt(median(allBase), 1),
      '1.00x (baseline)',
      '—',
      '—',
    ],
  ];
  for (const r of results) {
    const m = median(r.ratios);
    rows.push([
      r.label,
      fmt(median(r.variantMs), 1),
      fmt(1000 / median(r.variantMs), 1),
      fmt(median(r.baseMs), 1),
      `${ratio(m, 3)} [${ratio(quantile(r.ratios, 0.25), 3)}–${ratio(quantile(r.ratios, 0.75), 3)}]`,
      `${m >= 1 ? '+' : ''}${fmt((m - 1) * 100, 1)}%`,
      r.activateMs ? fmt(r.activateMs, 0) : '—',
    ]);
  }
  const c = modelConfig('smollm2-135m');
  printTable(
    `Decode overhead of adapter slots and adapters: synth SmolLM2-135M (${c.num_hidden_layers} layers, hidden ${c.hidden_size}), fp32, onnxruntime-web wasm, ${threads} thread(s)`,
    [
      'variant',
      'ms/token',
      'tok/s',
      'base ms/token, same pairs',
      'ratio to base, paired: median [p25–p75]',
      'overhead',
      'activate ms',
    ],
    rows,
    [
      `Paired: each variant session decodes alternately with the unpatched base in one process (which goes first alternates every step); ${steps} pairs per variant after 6 warm-up pairs, teacher-forced on real TinyStories tokens after a ${PROMPT}-token prompt, restarting from the prompt's cache every ${SEGMENT} steps (context ${PROMPT}–${PROMPT + SEGMENT}). ms/token and tok/s are medians of the variant's own steps, beside the base's steps of the same pairs (the first row: all base steps); the ratio is the median of per-pair ratios, robust to the machine's load changing between variants.`,
      "default slots = loadModel's default: every linear (210 + lm_head) gets a LoRA branch (lora_A/lora_B inputs, rank 0 when idle), scale_out on every linear (IA3, DoRA), scale_in on mlp.down_proj, and the prompt-embedding slot. declared slots = `slots: { adapters: [configs] }`: only what the listed adapters need (methods/slots-for.ts; LoRA: branches on its targets, no scales, no prompt slot).",
      `LoRA r${RANK} all-linear = PEFT target_modules 'all-linear' (q,k,v,o,gate,up,down of 30 layers: 210 modules), alpha ${2 * RANK}; q_proj+v_proj = PEFT's default Llama targets (60 modules). The blend feeds 4 all-linear adapters at weight 0.25 (rank concatenation: rank ${4 * RANK}).`,
      'Aim (issue 3): at most 5% slower than the base with a rank-8 LoRA active. Published peers: onnxruntime-genai multi-LoRA about 30%, llama.cpp 10–27%.',
    ],
    `backend wasm, ${threads} thread(s)`,
  );
}
