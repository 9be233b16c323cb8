/**
 * Part 2 (issue 3): adapter swap latency on synth SmolLM2-135M, onnxruntime-web wasm.
 *
 * With an adapter already added (in memory), the time from `adapters.activate(id)` to the first
 * token of the next request (`complete(prompt, { maxTokens: 1 })`), per method, paired with the
 * same request on the base without a swap (so the swap's own cost is the difference). Against what
 * a user would do without hot swap: merge the LoRA into the weights and rebuild the session
 * (merged checkpoint -> checkpointToModelFolder -> loadModel({ slots: false }) -> first token).
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { checkpointToModelFolder } from '../src/convert.js';
import type { Checkpoint } from '../src/formats/checkpoint.js';
import { memorySource } from '../src/formats/files.js';
import { adapterTensor, loraModules, parsePeftAdapter } from '../src/formats/peft-adapter.js';
import type { LoraConfig } from '../src/formats/peft-config.js';
import { loadModel } from '../src/load-model.js';
import { loraScaling } from '../src/methods/targets.js';
import { Runtime } from '../src/runtime.js';
import {
  adapterSource,
  ia3Adapter,
  loraAllLinear,
  prefixTuningAdapter,
  promptTuningAdapter,
  type AdapterFiles,
} from './lib/adapters.js';
import { peakRssMB, serveWorker, Worker } from './lib/child.js';
import { ensureModel, modelConfig, smolCheckpoint, storyTokens } from './lib/models.js';
import { fmt, median, NODE_MODULES, printTable, progress, withSpread } from './lib/report.js';

const PROMPT = 32;
const VIRTUAL = 20;
const RANK = 8;

export interface SwapSpec {
  threads: number;
  repeats: number;
  mergeRepeats: number;
}

interface AdapterCase {
  id: string;
  label: string;
  files: () => AdapterFiles;
}

function cases(): AdapterCase[] {
  const c = modelConfig('smollm2-135m');
  return [
    { id: 'lora', label: `LoRA r${RANK}, all-linear`, files: () => loraAllLinear(c, RANK, 1) },
    { id: 'dora', label: `DoRA r${RANK}, all-linear`, files: () => loraAllLinear(c, RANK, 2, true) },
    { id: 'ia3', label: 'IA3 (k_proj, v_proj, down_proj)', files: () => ia3Adapter(c, 3) },
    {
      id: 'prompt',
      label: `prompt tuning, ${VIRTUAL} virtual tokens`,
      files: () => promptTuningAdapter(c, VIRTUAL, 4),
    },
    {
      id: 'prefix',
      label: `prefix tuning, ${VIRTUAL} virtual tokens`,
      files: () => prefixTuningAdapter(c, VIRTUAL, 5),
    },
  ];
}

interface CaseResult {
  id: string;
  label: string;
  bytes: number;
  addMs: number;
  activateMs: number[];
  firstTokenMs: number[];
  totalMs: number[];
  /** The same request right after, the adapter still active: no swap. */
  steadyMs: number[];
  /** The same request on the base. */
  baseMs: number[];
}

interface MergeResult {
  mergeMs: number[];
  buildMs: number[];
  loadMs: number[];
  firstTokenMs: number[];
  totalMs: number[];
}

type Request = { kind: 'case'; id: string } | { kind: 'merge' };

const ms = (t: number) => performance.now() - t;

/** W += s · B A for every module of a LoRA adapter, on a copy of the base weights. */
function mergeLora(base: Checkpoint, files: AdapterFiles): Checkpoint {
  const adapter = parsePeftAdapter(adapterSource(files), 'lora');
  const config = adapter.config as LoraConfig;
  const tensors = new Map(base.tensors);
  for (const [module, t] of loraModules(adapter)) {
    const name = `${module}.weight`;
    const w = base.tensors.get(name);
    if (!w) throw new Error(`no base weight ${name}`);
    const a = adapterTensor(adapter, t.a); // [r, in]
    const b = adapterTensor(adapter, t.b); // [out, r]
    const s = loraScaling(config, module);
    const merged = Float32Array.from(w.data);
    const { rank: r, in: n, out } = t;
    const row = new Float64Array(n);
    for (let o = 0; o < out; o++) {
      row.fill(0);
      for (let k = 0; k < r; k++) {
        const bk = s * b[o * r + k];
        const ak = k * n;
        for (let i = 0; i < n; i++) row[i] += bk * a[ak + i];
      }
      const wo = o * n;
      for (let i = 0; i < n; i++) merged[wo + i] += row[i];
    }
    tensors.set(name, { shape: w.shape, data: merged });
  }
  return { config: base.config, tensors };
}

export function swapWorker(spec: SwapSpec): Promise<void> {
  return serveWorker(async () => {
    const dir = ensureModel('smollm2-135m');
    const { prompt } = storyTokens(PROMPT);
    const rt = await Runtime.create({ model: dir, threads: spec.threads });
    await rt.complete(prompt, { maxTokens: 2 }); // warm-up
    const all = cases();
    const files = new Map(all.map((c) => [c.id, c.files()]));
    let base: Checkpoint | undefined;
    return {
      info: { rssMB: peakRssMB() },
      handle: async (request) => {
        const r = request as Request;
        if (r.kind === 'case') {
          const c = all.find((x) => x.id === r.id) as AdapterCase;
          const f = files.get(c.id) as AdapterFiles;
          let t = performance.now();
          const info = await rt.adapters.add(c.id, adapterSource(f));
          const addMs = ms(t);
          const out: CaseResult = {
            id: c.id,
            label: c.label,
            bytes: info.bytes,
            addMs,
            activateMs: [],
            firstTokenMs: [],
            totalMs: [],
            steadyMs: [],
            baseMs: [],
          };
          // One untimed swap first (the first run with the adapter's input shapes), then the repeats:
          // activate -> first token (the swap), the same request again with the adapter still active
          // (steady state, no swap), then back to the base (so the next activate is a real switch).
          await rt.adapters.activate(c.id);
          await rt.complete(prompt, { maxTokens: 1 });
          rt.adapters.deactivate();
          await rt.complete(prompt, { maxTokens: 1 });
          for (let k = 0; k < spec.repeats; k++) {
            t = performance.now();
            await rt.adapters.activate(c.id);
            const t1 = performance.now();
            await rt.complete(prompt, { maxTokens: 1 });
            out.activateMs.push(t1 - t);
            out.firstTokenMs.push(ms(t1));
            out.totalMs.push(ms(t));
            t = performance.now();
            await rt.complete(prompt, { maxTokens: 1 });
            out.steadyMs.push(ms(t));
            rt.adapters.deactivate();
            t = performance.now();
            await rt.complete(prompt, { maxTokens: 1 });
            out.baseMs.push(ms(t));
          }
          await rt.adapters.remove(c.id);
          return out;
        }
        // The merge-and-rebuild baseline, with the Runtime's session still alive (two in the heap).
        base ??= smolCheckpoint();
        const out: MergeResult = { mergeMs: [], buildMs: [], loadMs: [], firstTokenMs: [], totalMs: [] };
        for (let k = 0; k < spec.mergeRepeats; k++) {
          const t0 = performance.now();
          const merged = mergeLora(base, files.get('lora') as AdapterFiles);
          const t1 = performance.now();
          const folder = checkpointToModelFolder(merged, {
            tokenizerFiles: new Map([
              ['tokenizer.bin', new Uint8Array(readFileSync(path.join(dir, 'tokenizer.bin')))],
            ]),
          });
          const t2 = performance.now();
          const model = await loadModel(memorySource(folder, 'merged'), {
            slots: false,
            threads: spec.threads,
          });
          const t3 = performance.now();
          await model.complete(prompt, { maxTokens: 1 });
          const t4 = performance.now();
          await model.release();
          out.mergeMs.push(t1 - t0);
          out.buildMs.push(t2 - t1);
          out.loadMs.push(t3 - t2);
          out.firstTokenMs.push(t4 - t3);
          out.totalMs.push(t4 - t0);
        }
        return out;
      },
    };
  });
}

/** Whether onnxruntime's JS API (onnxruntime-common's type declarations) has any LoRA adapter API. */
export function ortHasLoraApi(): boolean {
  const dir = path.join(NODE_MODULES, 'onnxruntime-common', 'dist', 'esm');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.d.ts'))
    .some((f) => /lora/i.test(readFileSync(path.join(dir, f), 'utf8')));
}

export interface SwapOptions {
  threads: number;
  repeats: number;
  mergeRepeats: number;
}

export async function runSwap(o: SwapOptions): Promise<void> {
  ensureModel('smollm2-135m');
  progress(`swap: loading the Runtime (SmolLM2-135M, default slots), ${o.threads} thread(s)`);
  const spec: SwapSpec = { threads: o.threads, repeats: o.repeats, mergeRepeats: o.mergeRepeats };
  const worker = await Worker.start<Request, CaseResult | MergeResult>('swap', 'swap', spec);
  const results: CaseResult[] = [];
  for (const c of cases()) {
    progress(`swap: ${c.label}`);
    results.push((await worker.call({ kind: 'case', id: c.id })) as CaseResult);
  }
  progress(`swap: merge LoRA into the weights and rebuild the session (x${o.mergeRepeats})`);
  const merge = (await worker.call({ kind: 'merge' })) as MergeResult;
  await worker.stop();

  const baseFirst = median(results.flatMap((r) => r.baseMs));
  const rows: string[][] = results.map((r) => {
    const cost = r.totalMs.map((v, i) => v - r.steadyMs[i]);
    return [
      `hot swap: ${r.label}`,
      fmt(r.bytes / 2 ** 20, 2),
      fmt(r.addMs, 0),
      withSpread(r.activateMs, 0),
      withSpread(r.firstTokenMs, 0),
      withSpread(r.totalMs, 0),
      withSpread(r.steadyMs, 0),
      withSpread(cost, 0),
      `${fmt(median(merge.totalMs) / median(r.totalMs), 0)}x`,
    ];
  });
  rows.push([
    `merge LoRA r${RANK} into W + rebuild session`,
    '—',
    '—',
    `merge ${fmt(median(merge.mergeMs), 0)} + graph ${fmt(median(merge.buildMs), 0)} + loadModel ${fmt(median(merge.loadMs), 0)}`,
    withSpread(merge.firstTokenMs, 0),
    withSpread(merge.totalMs, 0),
    '—',
    withSpread(
      merge.totalMs.map((v) => v - baseFirst),
      0,
    ),
    '1x (baseline)',
  ]);
  const lora = ortHasLoraApi();
  printTable(
    `Adapter swap latency: synth SmolLM2-135M, fp32, onnxruntime-web wasm, ${o.threads} thread(s)`,
    [
      'how',
      'adapter MB',
      'add ms (once)',
      'activate ms',
      'first token ms',
      'activate → first token ms',
      'first token, already active ms',
      'swap cost ms',
      'speed-up vs merge + rebuild',
    ],
    rows,
    [
      `Adapters already added (parsed, validated, in memory). activate → first token = adapters.activate(id), then complete(prompt, { maxTokens: 1 }) with a ${PROMPT}-token prompt of TinyStories text. 'already active' = the same request right after, no swap; swap cost = (activate → first token) − already active, per repeat. The same request on the base takes ${fmt(baseFirst, 0)} ms (median). Prompt and prefix tuning add ${VIRTUAL} virtual tokens, so their requests prefill (prompt) or attend over (prefix) more positions.`,
      `${o.repeats} repeats per adapter (after one untimed swap; between repeats the base is active again), median [p25–p75]; merge baseline ${o.mergeRepeats} repeat(s): W + (alpha/r)·B·A on a copy of the base weights for the 210 modules, checkpointToModelFolder (build + serialize the graph, in memory), loadModel(memorySource, { slots: false }) (parse + session), first token; the Runtime's session stays alive meanwhile, as it would in an app; its swap cost subtracts the base's first token (the merged graph is the base graph with other weights).`,
      'DoRA activation recomputes ||W + s·B·A|| per output row for every module (methods/dora.ts), in JavaScript, on every activate.',
      lora
        ? 'onnxruntime-common declares a LoRA adapter API: compare with it.'
        : "onnxruntime-web 1.30's JS API (onnxruntime-common type declarations) has no LoraAdapter / RunOptions adapter API — that is onnxruntime's C/C++/Python (and onnxruntime-genai) only — so onnxruntime's own LoRA switching is not a baseline available to a web runtime.",
    ],
    `backend wasm, ${o.threads} thread(s)`,
  );
}
