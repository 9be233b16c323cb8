/**
 * Part 5 (issue 5): quantized bases (QLoRA) on synth SmolLM2-135M — which execution of a quantized
 * linear is fastest per backend, and what each base format costs on disk, in memory and per token.
 *
 *   kernels   one linear of the model's shapes, every candidate execution, on onnxruntime-web wasm
 *             and onnxruntime-node, one thread, all sessions in this process: interleaved rounds,
 *             each candidate's time over the float32 MatMul's of the same round (a float32 MatMul is
 *             what a base dequantized at load runs), and whether it computes with the dequantized
 *             weights (its output against x · W_dequantized in float64).
 *   node      the whole model with a LoRA r8 on every linear active: fp32, and int8 / int4 / nf4
 *             (embedding quantized too) with kernels 'native' and 'dequantize', on wasm (and on
 *             onnxruntime-node). One worker process per row, so its memory is the row's; the workers
 *             decode in turns, and each round's ms/token is divided by the fp32 worker's of the round.
 *   chromium  the same rows in headless Chromium, on wasm and on WebGPU (SwiftShader, a software
 *             adapter), one page per row, stepped in turns.
 *
 * The quantized folders are bench/out/models/smollm2-135m-{int8,int4,nf4}: `edge-adapters quantize
 * --embeddings` with the default blocks (int4 32, nf4 64).
 */
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { create } from '@bufbuild/protobuf';
import type * as ort from 'onnxruntime-web';
import type { Page } from 'playwright-core';
import { loadBackend, type Backend } from '../src/engine/backend.js';
import { folderSource } from '../src/formats/files-node.js';
import { encodeModel, NodeProtoSchema, withFields, type ModelProto } from '../src/formats/onnx/index.js';
import { attribute, GraphBuilder } from '../src/graph/builder.js';
import { dequantizedFormats } from '../src/graph/dequantize-weights.js';
import { linearNodes } from '../src/graph/llama.js';
import { linearWeight, quantizeLinears, type GraphQuantizeOptions } from '../src/graph/quantized-linear.js';
import type { QuantFormat } from '../src/quant/index.js';
import { quantizeModelFolder } from '../src/quantize-folder.js';
import { Runtime } from '../src/runtime.js';
import type { QuantLoad, QuantPage } from './browser/quant-page.js';
import { adapterSource, loraAllLinear } from './lib/adapters.js';
import { peakRssMB, serveWorker, Worker } from './lib/child.js';
import { timeDecode } from './lib/decode-steps.js';
import { ensureModel, modelConfig, OUT, ROOT, storyTokens } from './lib/models.js';
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

const MODEL = 'smollm2-135m';
const RANK = 8;
const PROMPT = 32;
/** WebGPU (SwiftShader) takes seconds per token: a shorter prompt before its decode steps. */
const GPU_PROMPT = 8;
/** The logits compared between rows: the last position of the first 8 prompt tokens. */
const LOGITS_PROMPT = 8;
type Format = 'fp32' | QuantFormat;
type Execution = 'native' | 'dequantize';

export interface QuantOptions {
  parts: readonly string[];
  rounds: number;
  /** Decode steps per row and round (Node, Chromium wasm). */
  steps: number;
  /** Rounds and decode steps per row and round on WebGPU (SwiftShader takes seconds per token). */
  gpuRounds: number;
  gpuSteps: number;
}

export const QUANT_PARTS = ['kernels', 'node', 'chromium'] as const;

export async function runQuant(o: QuantOptions): Promise<void> {
  if (o.parts.includes('kernels')) await runKernels(o.rounds * 3);
  if (o.parts.includes('node')) await runNode(o);
  if (o.parts.includes('chromium')) await runChromium(o);
}

const spread = (xs: number[], digits = 2) =>
  `${ratio(median(xs), digits)} [${ratio(quantile(xs, 0.25), digits)}–${ratio(quantile(xs, 0.75), digits)}]`;

// ---------------------------------------------------------------------------------------------
// The model folders

function folderStamp(format: QuantFormat, fp32: string): string {
  const h = createHash('sha256')
    .update(format)
    .update(readFileSync(path.join(fp32, '.stamp')));
  const sources = [
    ...readdirSync(path.join(ROOT, 'src', 'quant')).map((f) => path.join('src', 'quant', f)),
    'src/graph/quantized-linear.ts',
    'src/graph/quantized-embedding.ts',
    'src/quantize-folder.ts',
  ];
  for (const file of sources) h.update(readFileSync(path.join(ROOT, file)));
  return h.digest('hex').slice(0, 16);
}

/** The fp32 folder, or its quantized copy (rebuilt when the fp32 folder or the quantizers change). */
async function ensureFolder(format: Format): Promise<string> {
  const fp32 = ensureModel(MODEL);
  if (format === 'fp32') return fp32;
  const dir = path.join(OUT, 'models', `${MODEL}-${format}`);
  const stamp = folderStamp(format, fp32);
  const stampFile = path.join(dir, '.stamp');
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return dir;
  progress(`quant: quantizing ${MODEL} to ${format}, embedding included`);
  const files = await quantizeModelFolder(folderSource(fp32), { format, embeddings: true });
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of files) writeFileSync(path.join(dir, name), bytes);
  writeFileSync(stampFile, stamp);
  return dir;
}

/** Bytes of the ONNX files (model.onnx and external data): what a browser downloads and caches. */
function onnxBytes(dir: string): number {
  return readdirSync(dir)
    .filter((f) => /\.onnx(_data)?$/.test(f))
    .reduce((n, f) => n + statSync(path.join(dir, f)).size, 0);
}

// ---------------------------------------------------------------------------------------------
// kernels: one linear

const SHAPES = [
  { label: 'q/o_proj 576×576', k: 576, n: 576, m: 1 },
  { label: 'gate/up_proj 576×1536', k: 576, n: 1536, m: 1 },
  { label: 'down_proj 1536×576', k: 1536, n: 576, m: 1 },
  { label: 'lm_head 576×49152', k: 576, n: 49152, m: 1 },
  { label: 'gate/up_proj, 128-token prefill', k: 576, n: 1536, m: 128 },
];

interface Candidate {
  label: string;
  quantize?: GraphQuantizeOptions;
  /** int8 with 8-bit activations: DynamicQuantizeLinear + MatMulInteger (bench-only graph). */
  w8a8?: boolean;
}

const CANDIDATES: Candidate[] = [
  { label: 'float32 MatMul = dequantized at load' },
  { label: 'int4 MatMulNBits, block 32', quantize: { format: 'int4', blockSize: 32 } },
  { label: 'int4 MatMulNBits, block 64', quantize: { format: 'int4', blockSize: 64 } },
  { label: 'int4 MatMulNBits, block 128', quantize: { format: 'int4', blockSize: 128 } },
  { label: 'nf4 MatMulBnb4, block 64', quantize: { format: 'nf4' } },
  { label: 'int8 DequantizeLinear + MatMul', quantize: { format: 'int8' } },
  {
    label: 'int8 DynamicQuantizeLinear + MatMulInteger',
    quantize: { format: 'int8' },
    w8a8: true,
  },
];

/** x [m, k] -> y [m, n] through `/lm_head/MatMul` (a linear module name quantizeLinears knows). */
function floatLinear(k: number, n: number, m: number): ModelProto {
  const g = new GraphBuilder();
  const x = g.input('x', 'float32', [m, k]);
  const w = Float32Array.from({ length: k * n }, (_, i) => Math.sin(i * 0.37) * 0.05);
  g.initializer('lm_head.weight.T', w, [k, n]);
  g.node('MatMul', [x, 'lm_head.weight.T'], { name: '/lm_head/MatMul', outputs: ['y'] });
  g.output('y', 'float32', [m, n]);
  return g.build();
}

/** The int8 graph with 8-bit dynamic activations: y = (MatMulInteger(q(x), W_q) as float) · s_x · s_w. */
function w8a8(model: ModelProto): ModelProto {
  const graph = model.graph as NonNullable<ModelProto['graph']>;
  const dq = graph.node.find((n) => n.opType === 'DequantizeLinear');
  if (!dq) throw new Error('no DequantizeLinear');
  const node = (opType: string, input: string[], output: string[], attrs: Record<string, number> = {}) =>
    create(NodeProtoSchema, {
      name: `/w8a8/${opType}_${output[0]}`,
      opType,
      input,
      output,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
  const nodes = [
    node('DynamicQuantizeLinear', ['x'], ['xq', 'xs', 'xzp']),
    node('MatMulInteger', ['xq', dq.input[0], 'xzp'], ['acc']),
    node('Cast', ['acc'], ['accf'], { to: 1 }),
    node('Mul', ['xs', dq.input[1]], ['scale']),
    node('Mul', ['accf', 'scale'], ['y']),
  ];
  return withFields(model, { graph: withFields(graph, { node: nodes }) });
}

interface KernelSession {
  candidate: Candidate;
  session: ort.InferenceSession;
  /** max |y - x · W_dequantized| / max |x · W_dequantized|. */
  error: number;
  ms: number[];
}

async function runKernels(rounds: number): Promise<void> {
  const backends = [
    {
      label: `onnxruntime-web ${packageVersion('onnxruntime-web')} wasm`,
      backend: await loadBackend({ backend: 'wasm', threads: 1 }),
    },
  ];
  try {
    backends.push({
      label: `onnxruntime-node ${packageVersion('onnxruntime-node')}`,
      backend: await loadBackend({ backend: 'node', threads: 1 }),
    });
  } catch (error) {
    progress(`quant kernels: onnxruntime-node unavailable (${String(error)})`);
  }
  const cells = new Map<string, string[]>(); // row label -> cells per shape
  const errors = new Map<string, number>();
  for (const { label: backendLabel, backend } of backends) {
    for (const shape of SHAPES) {
      progress(`quant kernels: ${backendLabel}, ${shape.label}`);
      const sessions = await kernelSessions(backend, shape.k, shape.n, shape.m);
      const x = new backend.ort.Tensor(
        'float32',
        Float32Array.from({ length: shape.m * shape.k }, (_, i) => Math.cos(i)),
        [shape.m, shape.k],
      );
      const run = (s: KernelSession) => s.session.run({ x });
      for (const s of sessions) await run(s); // warm-up
      const t0 = performance.now();
      await run(sessions[0]);
      const reps = Math.min(20, Math.max(1, Math.ceil(10 / (performance.now() - t0))));
      for (let round = 0; round < rounds; round++) {
        for (let j = 0; j < sessions.length; j++) {
          const s = sessions[(j + round) % sessions.length];
          const t = performance.now();
          for (let r = 0; r < reps; r++) await run(s);
          s.ms.push((performance.now() - t) / reps);
        }
      }
      const base = sessions[0].ms;
      for (const s of sessions) {
        const row = `${backendLabel} | ${s.candidate.label}`;
        const cell =
          s === sessions[0]
            ? `${fmt(median(base), 2)} ms`
            : spread(
                s.ms.map((v, i) => v / base[i]),
                1,
              );
        cells.set(row, [...(cells.get(row) ?? []), cell]);
        errors.set(row, Math.max(errors.get(row) ?? 0, s.error));
        await s.session.release();
      }
    }
  }
  printTable(
    `Kernels for one linear of synth SmolLM2-135M, one thread: time over a float32 MatMul (the weights dequantized at load), same round`,
    ['backend', 'execution', ...SHAPES.map((s) => s.label), 'max error vs x·W_dequantized (relative)'],
    [...cells].map(([row, c]) => {
      const [backendLabel, candidate] = row.split(' | ');
      const e = errors.get(row) ?? NaN;
      return [
        backendLabel,
        candidate,
        ...c,
        e < 1e-5 ? `${e.toExponential(0)} (exact)` : `${e.toExponential(1)} (not exact)`,
      ];
    }),
    [
      `${rounds} interleaved rounds in one process (the order rotates every round); each cell: the candidate's ms per run over the float32 MatMul's in the same round, median [p25–p75]; the float32 row: its median ms per run. Decode = one token (M = 1).`,
      'Error: the output against x · W in float64, W = the weights the candidate dequantizes to (src/quant), relative to max |x · W|. Exact = float32 rounding only; int8 with 8-bit activations (DynamicQuantizeLinear) is not the dequantized-weight product a QLoRA adapter was trained against.',
      'W8A8 is a bench-only graph (bench/quant.ts); onnxruntime-node fuses the int8 DequantizeLinear + MatMul pattern into the same kind of 8-bit-activation kernel.',
    ],
    'backend wasm and node, 1 thread',
  );
}

async function kernelSessions(backend: Backend, k: number, n: number, m: number): Promise<KernelSession[]> {
  const float = floatLinear(k, n, m);
  const x = Float64Array.from({ length: m * k }, (_, i) => Math.cos(i));
  const out: KernelSession[] = [];
  for (const candidate of CANDIDATES) {
    const quantized = candidate.quantize ? quantizeLinears(float, candidate.quantize).model : float;
    const node = linearNodes(quantized)[0].node;
    const w = linearWeight(quantized, 'lm_head', node); // [n, k]
    const model = candidate.w8a8 ? w8a8(quantized) : quantized;
    const session = await backend.ort.InferenceSession.create(encodeModel(model), backend.sessionOptions);
    const y = (await session.run({ x: new backend.ort.Tensor('float32', Float32Array.from(x), [m, k]) })).y
      .data as Float32Array;
    let maxRef = 0;
    let maxErr = 0;
    for (let r = 0; r < m; r++) {
      for (let o = 0; o < n; o++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += Math.fround(x[r * k + i]) * w[o * k + i];
        maxRef = Math.max(maxRef, Math.abs(s));
        maxErr = Math.max(maxErr, Math.abs(y[r * n + o] - s));
      }
    }
    out.push({ candidate, session, error: maxErr / maxRef, ms: [] });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// node and chromium: the whole model

interface Row {
  format: Format;
  execution: Execution;
  backend: 'wasm' | 'node' | 'webgpu';
}

/** fp32, and every quantized format both ways. */
function rows(backend: Row['backend']): Row[] {
  const out: Row[] = [{ format: 'fp32', execution: 'native', backend }];
  for (const format of ['int8', 'int4', 'nf4'] as const)
    for (const execution of ['dequantize', 'native'] as const) out.push({ format, execution, backend });
  return out;
}

const isAuto = (r: Row) =>
  r.format !== 'fp32' &&
  dequantizedFormats('auto', r.backend).includes(r.format) === (r.execution === 'dequantize');

const rowLabel = (r: Row) =>
  r.format === 'fp32'
    ? 'fp32'
    : `${r.format}, ${r.execution === 'native' ? 'quantized ops' : 'dequantized at load'}${isAuto(r) ? ' (auto)' : ''}`;

interface Measured {
  row: Row;
  bytes: number;
  loadS: number;
  /** Resident memory after load (MB): RSS after a GC in Node, measureUserAgentSpecificMemory in Chromium. */
  memoryMB: number;
  peakMB?: number;
  /** ms/token of every step, by round. */
  rounds: number[][];
  /** The last prompt position's logits with the adapter active. */
  logits?: number[];
  /** The same without the adapter (Chromium), to compare backends. */
  baseLogits?: number[];
  note?: string;
}

/** Per-round ratio of a row's median ms/token to the fp32 row's of the same round. */
function roundRatios(m: Measured, fp32: Measured): number[] {
  return m.rounds.map((r, i) => median(r) / median(fp32.rounds[i])).filter(Number.isFinite);
}

const exp = (v: number) => (Number.isFinite(v) ? v.toExponential(1) : 'n/a');

/** The largest |logit| of the fp32 row: the scale of the logit differences. */
const logitScale = (measured: Measured[]) =>
  exp(Math.max(...(measured.find((m) => m.row.format === 'fp32')?.logits ?? [NaN]).map(Math.abs)));

const maxDiff = (a: number[] | undefined, b: number[] | undefined) =>
  a && b ? a.reduce((d, v, i) => Math.max(d, Math.abs(v - b[i])), 0) : NaN;

/** Max |logit diff| from the same format dequantized at load ('—' for fp32 and those rows). */
function vsDequantized(measured: Measured[]): (m: Measured) => string {
  return (m) => {
    const peer = measured.find((p) => p.row.format === m.row.format && p.row.execution === 'dequantize');
    return m.row.format === 'fp32' || m === peer ? '—' : exp(maxDiff(m.logits, peer?.logits));
  };
}

function wholeModelTable(
  title: string,
  measured: Measured[],
  memoryHeader: string,
  notes: string[],
  extra: string,
  check: { header: string; cell: (m: Measured) => string },
): void {
  const fp32 = measured.find((m) => m.row.format === 'fp32');
  const table = measured.map((m) => {
    if (m.note?.startsWith('failed'))
      return [rowLabel(m.row), fmt(m.bytes / 2 ** 20, 0), m.note, '', '', '', '', '', ''];
    const steps = m.rounds.flat();
    return [
      rowLabel(m.row) + (m.note ? ` (${m.note})` : ''),
      fmt(m.bytes / 2 ** 20, 0),
      fp32 ? ratio(fp32.bytes / m.bytes, 1) : '—',
      `${fmt(m.memoryMB, 0)}${m.peakMB ? ` / ${fmt(m.peakMB, 0)}` : ''}`,
      fmt(m.loadS, 1),
      fmt(median(steps), 1),
      fmt(1000 / median(steps), 1),
      fp32 && m !== fp32 ? spread(roundRatios(m, fp32)) : m === fp32 ? '1.00x' : '—',
      check.cell(m),
    ];
  });
  printTable(
    title,
    [
      'base',
      'model.onnx MB',
      'smaller than fp32',
      memoryHeader,
      'load s',
      'decode ms/token',
      'tok/s',
      'time vs fp32, same round',
      check.header,
    ],
    table,
    notes,
    extra,
  );
}

// node

export interface QuantSpec {
  row: Row;
  dir: string;
  steps: number;
}

type QuantRequest = { kind: 'decode' } | { kind: 'logits' };

/** RSS after a full garbage collection, MB. */
function residentMB(): number {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
  return process.memoryUsage().rss / 2 ** 20;
}

export function quantWorker(spec: QuantSpec): Promise<void> {
  return serveWorker(async () => {
    const config = modelConfig(MODEL);
    const { prompt, next } = storyTokens(PROMPT, spec.steps);
    const t0 = performance.now();
    const rt = await Runtime.create({
      model: spec.dir,
      backend: spec.row.backend as 'wasm' | 'node',
      kernels: spec.row.execution,
      threads: 1,
    });
    await rt.adapters.add('lora', adapterSource(loraAllLinear(config, RANK, 1)));
    await rt.adapters.activate('lora');
    const loadS = (performance.now() - t0) / 1000;
    await timeDecode(rt.model.session, prompt, next.slice(0, 2)); // warm-up
    return {
      info: { loadS, memoryMB: residentMB(), peakMB: peakRssMB() },
      handle: async (request) => {
        if ((request as QuantRequest).kind === 'logits') {
          const logits = await rt.logits(prompt.slice(0, LOGITS_PROMPT));
          return Array.from(logits[logits.length - 1]);
        }
        return timeDecode(rt.model.session, prompt, next);
      },
    };
  });
}

async function runNode(o: QuantOptions): Promise<void> {
  const dirs = new Map<Format, string>();
  for (const format of ['fp32', 'int8', 'int4', 'nf4'] as const) dirs.set(format, await ensureFolder(format));
  for (const backend of ['wasm', 'node'] as const) {
    const measured: Measured[] = [];
    const workers: Worker<QuantRequest, number[]>[] = [];
    for (const row of rows(backend)) {
      const dir = dirs.get(row.format) as string;
      const m: Measured = { row, bytes: onnxBytes(dir), loadS: NaN, memoryMB: NaN, rounds: [] };
      measured.push(m);
      progress(`quant node: loading ${backend} ${rowLabel(row)}`);
      try {
        const w = await Worker.start<QuantRequest, number[]>(`${backend} ${rowLabel(row)}`, 'quant', {
          row,
          dir,
          steps: o.steps,
        } satisfies QuantSpec);
        workers.push(w);
        Object.assign(m, { loadS: w.info.loadS, memoryMB: w.info.memoryMB, peakMB: w.info.peakMB });
        m.logits = await w.call({ kind: 'logits' });
      } catch (error) {
        m.note = `failed: ${String(error).split('\n')[0]}`;
        workers.push(undefined as unknown as Worker<QuantRequest, number[]>);
      }
    }
    for (let round = 0; round < o.rounds; round++) {
      progress(`quant node ${backend}: round ${round + 1}/${o.rounds}`);
      for (let j = 0; j < measured.length; j++) {
        const k = (j + round) % measured.length;
        if (workers[k]) measured[k].rounds.push(await workers[k].call({ kind: 'decode' }));
      }
    }
    for (const w of workers) await w?.stop();
    wholeModelTable(
      `Quantized bases in Node, ${backend === 'wasm' ? `onnxruntime-web ${packageVersion('onnxruntime-web')} wasm` : `onnxruntime-node ${packageVersion('onnxruntime-node')}`}, 1 thread: synth SmolLM2-135M, LoRA r${RANK} on every linear active`,
      measured,
      'RSS MB after load / peak',
      [
        `One worker process per row (its memory is the row's), all alive together and stepped in turns: ${o.rounds} rounds of ${o.steps} teacher-forced decode steps after a ${PROMPT}-token prompt; ms/token and tok/s: median over all steps; time vs fp32: per round, the row's median step over the fp32 row's of the same round, median [p25–p75] over rounds.`,
        `Folders: \`edge-adapters quantize --format F --embeddings\` of the fp32 folder (int4 block 32, nf4 block 64, int8 per channel; the embedding as GatherBlockQuantized, int4 for nf4 bases). Loaded by Runtime.create({ kernels, threads: 1 }) with the default adapter slots, a PEFT LoRA r${RANK} (alpha ${2 * RANK}) on all 210 linears added and activated. The prompt slot needs a float embedding Gather, so the embedding is dequantized at load in every row.`,
        `RSS: resident set after load, adapter activation, two decode steps and a full GC (\`global.gc\`); it includes Node itself (about 50 MB) and the model file's bytes, which the runtime keeps for DoRA's weight norms. Peak: the process's maximum RSS (load included).`,
        `logit diff vs dequantized at load: max |logit| difference at the last of ${LOGITS_PROMPT} prompt tokens between the row and the same format dequantized at load (the fp32 row's largest |logit|: ${logitScale(measured)}) — float32 rounding when the quantized op computes with the dequantized weights.`,
        "(auto): what kernels: 'auto' runs on this backend (src/graph/dequantize-weights.ts AUTO_DEQUANTIZE).",
      ],
      `backend ${backend}, 1 thread`,
      { header: 'max abs logit diff vs dequantized at load', cell: vsDequantized(measured) },
    );
  }
}

// chromium

type PageGlobal = { quant: QuantPage };

/** onnxruntime's WebGPU provider log while it creates a session for `url`: the op types it leaves to the CPU. */
async function cpuOps(page: Page, url: string, wasmPaths: string): Promise<string[]> {
  const lines = await page.evaluate(([u, w]) => (globalThis as unknown as PageGlobal).quant.placement(u, w), [
    url,
    wasmPaths,
  ] as const);
  const ops = lines
    .map((l) => /kernel not found in registries for Op type: (\S+)/.exec(l)?.[1])
    .filter((op) => op !== undefined);
  return [...new Set(ops)].sort();
}

async function runChromium(o: QuantOptions): Promise<void> {
  const { bundle, launchBrowser, startServer } = await import('../test/browser/harness.js');
  const dirs = new Map<Format, string>();
  for (const format of ['fp32', 'int8', 'int4', 'nf4'] as const) dirs.set(format, await ensureFolder(format));
  const work = mkdtempSync(path.join(os.tmpdir(), 'edge-adapters-quant-'));
  const adapterDir = path.join(work, 'adapter');
  mkdirSync(adapterDir);
  for (const [name, bytes] of loraAllLinear(modelConfig(MODEL), RANK, 1))
    writeFileSync(path.join(adapterDir, name), bytes);
  progress('quant chromium: bundling the page');
  await bundle({ 'quant-page': 'bench/browser/quant-page.ts' }, path.join(work, 'app'));
  writeFileSync(
    path.join(work, 'app', 'index.html'),
    '<!doctype html><meta charset="utf-8"><title>quant</title><script type="module" src="quant-page.js"></script>',
  );
  const server = await startServer({
    '/app/': path.join(work, 'app'),
    '/adapter/': adapterDir,
    '/models/': path.join(OUT, 'models'),
    '/ort/': path.join(NODE_MODULES, 'onnxruntime-web', 'dist'),
  });
  // Every page computes in turn; none may be throttled as a background page.
  const { context, close: closeBrowser } = await launchBrowser(path.join(work, 'profile'), [
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows',
  ]);
  const version = context.browser()?.version() ?? 'unknown';
  const wasmPaths = `${server.origin}/ort/`;
  const stories = storyTokens(PROMPT, o.steps);
  const openPage = async (): Promise<Page> => {
    const page = await context.newPage();
    await page.goto(`${server.origin}/app/index.html`);
    await page.waitForFunction(() => 'quant' in globalThis);
    return page;
  };
  const wasmLogits = new Map<string, number[]>();
  const key = (m: Measured) => `${m.row.format}/${m.row.execution}`;
  try {
    for (const backend of ['wasm', 'webgpu'] as const) {
      const steps = backend === 'webgpu' ? o.gpuSteps : o.steps;
      const rounds = backend === 'webgpu' ? o.gpuRounds : o.rounds;
      const prompt = stories.prompt.slice(0, backend === 'webgpu' ? GPU_PROMPT : PROMPT);
      const next = stories.next.slice(0, steps);
      const measured: Measured[] = [];
      const pages: (Page | undefined)[] = [];
      let gpu = '';
      for (const row of rows(backend)) {
        const dir = dirs.get(row.format) as string;
        const m: Measured = { row, bytes: onnxBytes(dir), loadS: NaN, memoryMB: NaN, rounds: [] };
        measured.push(m);
        progress(`quant chromium: loading ${backend} ${rowLabel(row)}`);
        const load: QuantLoad = {
          model: `${server.origin}/models/${path.basename(dir)}/`,
          adapter: `${server.origin}/adapter/`,
          backend,
          kernels: row.execution,
          wasmPaths,
        };
        const start = async (l: QuantLoad) => {
          const page = await openPage();
          try {
            const loaded = await page.evaluate((a) => (globalThis as unknown as PageGlobal).quant.load(a), l);
            const warm = [prompt, next.slice(0, 1)] as const;
            await page.evaluate(([p, n]) => (globalThis as unknown as PageGlobal).quant.decode(p, n), warm);
            return { page, loaded };
          } catch (error) {
            await page.close();
            throw error;
          }
        };
        try {
          const { page, loaded } = await start(load);
          gpu ||= loaded.gpu;
          m.loadS = loaded.loadMs / 1000;
          const logits = await page.evaluate(
            (p) => (globalThis as unknown as PageGlobal).quant.logits(p),
            prompt.slice(0, LOGITS_PROMPT),
          );
          m.logits = logits.adapter;
          m.baseLogits = logits.base;
          m.memoryMB =
            (await page.evaluate(() => (globalThis as unknown as PageGlobal).quant.memory())) / 2 ** 20;
          pages.push(page);
        } catch (error) {
          m.note = `failed: ${String(error).split('\n')[0].slice(0, 200)}`;
          pages.push(undefined);
        }
      }
      for (let round = 0; round < rounds; round++) {
        progress(`quant chromium ${backend}: round ${round + 1}/${rounds}`);
        for (let j = 0; j < measured.length; j++) {
          const k = (j + round) % measured.length;
          const page = pages[k];
          if (!page) continue;
          await page.bringToFront(); // Chromium lowers the priority of background renderers
          const ms = await page.evaluate(
            ([p, n]) => (globalThis as unknown as PageGlobal).quant.decode(p, n),
            [prompt, next] as const,
          );
          measured[k].rounds.push(ms);
        }
      }
      for (const page of pages) await page?.close();
      const notes = [
        `One page per row, all open and stepped in turns (the measured page in front): ${rounds} rounds of ${steps} teacher-forced decode steps after a ${prompt.length}-token prompt; time vs fp32 per round as in the Node table.`,
        "Page memory: performance.measureUserAgentSpecificMemory() after load (the page's JS heap and wasm memory; not GPU buffers).",
      ];
      if (backend === 'wasm') {
        for (const m of measured) if (m.baseLogits) wasmLogits.set(key(m), m.baseLogits);
        notes.push('The wasm binary is the one Node runs (onnxruntime-web), without threads.');
      } else {
        const placement: string[] = [];
        for (const format of ['int8', 'int4', 'nf4'] as const) {
          const page = await openPage();
          const url = `${server.origin}/models/${path.basename(dirs.get(format) as string)}/model.onnx`;
          placement.push(`${format}: ${(await cpuOps(page, url, wasmPaths)).join(', ') || 'none'}`);
          await page.close();
        }
        notes.push(
          `WebGPU here is SwiftShader (${gpu || 'no adapter'}), Vulkan implemented on the CPU (--enable-unsafe-webgpu, no GPU): its times say nothing about a hardware GPU, and backend "auto" never picks it. Logit diff vs wasm: the base's logits (adapter deactivated) against the same row on wasm (the fp32 row's largest |logit|: ${exp(Math.max(...(wasmLogits.get('fp32/native') ?? [NaN]).map(Math.abs)))}), the check that every op of the graph computes as on wasm.`,
          `Op types the WebGPU provider leaves to the CPU, per quantized model.onnx (no adapter slots): ${placement.join('; ')} (the shape arithmetic of the attention mask, which it places on the CPU in the fp32 graph too).`,
        );
      }
      wholeModelTable(
        `Quantized bases in Chromium ${version}, onnxruntime-web ${packageVersion('onnxruntime-web')} ${backend === 'wasm' ? 'wasm, 1 thread' : 'WebGPU (software adapter)'}: synth SmolLM2-135M, LoRA r${RANK} on every linear active`,
        measured,
        'page memory MB',
        notes,
        `Chromium ${version}`,
        backend === 'wasm'
          ? { header: 'max abs logit diff vs dequantized at load', cell: vsDequantized(measured) }
          : {
              header: 'max abs logit diff vs wasm (base)',
              cell: (m) => exp(maxDiff(m.baseLogits, wasmLogits.get(key(m)))),
            },
      );
    }
  } finally {
    await closeBrowser();
    await server.close();
    rmSync(work, { recursive: true, force: true });
  }
}
