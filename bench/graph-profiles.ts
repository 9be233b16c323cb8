/**
 * Decoder op profiles ('standard' vs 'contrib') on onnxruntime-web wasm in Node, for a random
 * checkpoint shaped like SmolLM2-135M: prefill tokens/s (128 tokens, empty past) and decode tokens/s
 * (one token at a time after a 128-token prompt), with 1 and 2 wasm threads, then session options.
 * Also the cost of building + serializing the model and of creating the session.
 *
 *   npx tsx bench/graph-profiles.ts            # everything (~10 minutes on 2 cores)
 *   npx tsx bench/graph-profiles.ts --quick    # profiles x threads only
 *
 * Every measurement runs in a fresh child process: wasm threads are fixed when onnxruntime first
 * loads, and peak memory (maxRSS) must not carry over from the previous case.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { toBinary } from '@bufbuild/protobuf';
import type * as ortTypes from 'onnxruntime-web';
import { headDim, type LlamaConfig } from '../src/formats/checkpoint.js';
import { ModelProtoSchema } from '../src/formats/onnx/onnx_pb.js';
import { synthCheckpoint, synthConfig } from '../src/formats/synth.js';
import { buildLlamaDecoder, type DecoderProfile } from '../src/graph/llama.js';

const SHAPE = 'smollm2-135m';
const PREFILL = 128;
const PREFILL_LONG = 512;
const DECODE_STEPS = 16;

type SessionOptions = ortTypes.InferenceSession.SessionOptions;
interface BuildJob {
  kind: 'build';
  profile: DecoderProfile;
  file: string;
}
interface RunJob {
  kind: 'run';
  file: string;
  threads: number;
  options: SessionOptions;
}
type Job = BuildJob | RunJob;

const seconds = (t0: number) => (performance.now() - t0) / 1000;
const peakMB = () => process.resourceUsage().maxRSS / 1024;

async function build(job: BuildJob) {
  let t0 = performance.now();
  const ckpt = synthCheckpoint(SHAPE, 1);
  const synth = seconds(t0);
  t0 = performance.now();
  const model = buildLlamaDecoder(ckpt, { profile: job.profile });
  const graph = seconds(t0);
  t0 = performance.now();
  const bytes = toBinary(ModelProtoSchema, model);
  const serialize = seconds(t0);
  writeFileSync(job.file, bytes);
  return {
    synth,
    graph,
    serialize,
    mb: bytes.byteLength / 2 ** 20,
    peak: peakMB(),
    nodes: model.graph?.node.length,
  };
}

async function run(job: RunJob) {
  const ort = await import('onnxruntime-web');
  ort.env.wasm.numThreads = job.threads;
  const c: LlamaConfig = synthConfig(SHAPE);
  const bytes = readFileSync(job.file);
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(bytes, job.options);
  const create = seconds(t0);
  const peakCreate = peakMB();

  const int64 = (values: number[], dims: number[]) =>
    new ort.Tensor('int64', BigInt64Array.from(values, BigInt), dims);
  const step = async (tokens: number[], start: number, cache: Map<string, ortTypes.Tensor>) => {
    const feeds: Record<string, ortTypes.Tensor> = {
      input_ids: int64(tokens, [1, tokens.length]),
      position_ids: int64(
        tokens.map((_, i) => start + i),
        [1, tokens.length],
      ),
      attention_mask: int64(new Array<number>(start + tokens.length).fill(1), [1, start + tokens.length]),
    };
    for (const [name, t] of cache) feeds[name] = t;
    const out = await session.run(feeds);
    const next = new Map<string, ortTypes.Tensor>();
    for (const name of cache.keys()) next.set(name, out[name.replace('past_key_values', 'present')]);
    return next;
  };
  const empty = new Map<string, ortTypes.Tensor>();
  for (let i = 0; i < c.num_hidden_layers; i++) {
    for (const kind of ['key', 'value']) {
      const dims = [1, c.num_key_value_heads, 0, headDim(c)];
      empty.set(`past_key_values.${i}.${kind}`, new ort.Tensor('float32', new Float32Array(0), dims));
    }
  }
  const prompt = Array.from({ length: PREFILL }, (_, i) => (i * 7919) % c.vocab_size);

  const timed = async <T>(f: () => Promise<T>): Promise<[number, T]> => {
    const t = performance.now();
    const result = await f();
    return [seconds(t), result];
  };
  const prompted = await step(prompt, 0, empty); // warm-up; its cache seeds the decode rounds
  let prefill = Infinity;
  for (let r = 0; r < 3; r++) prefill = Math.min(prefill, (await timed(() => step(prompt, 0, empty)))[0]);
  const longPrompt = Array.from({ length: PREFILL_LONG }, (_, i) => (i * 104729) % c.vocab_size);
  const [prefillLong] = await timed(() => step(longPrompt, 0, empty));
  // Decode: rounds of DECODE_STEPS single-token steps from the prompt's cache; the median step of
  // the best round (other processes share the cores).
  let decodeStep = Infinity;
  for (let round = 0; round < 3; round++) {
    let cache = prompted;
    const times: number[] = [];
    for (let k = 0; k < DECODE_STEPS; k++) {
      const [t, next] = await timed(() => step([(k * 31) % c.vocab_size], PREFILL + k, cache));
      times.push(t);
      cache = next;
    }
    times.sort((a, b) => a - b);
    decodeStep = Math.min(decodeStep, times[times.length >> 1]);
  }
  await session.release();
  return {
    create,
    peakCreate,
    prefillTps: PREFILL / prefill,
    prefillLongTps: PREFILL_LONG / prefillLong,
    decodeTps: 1 / decodeStep,
    peak: peakMB(),
  };
}

function child<T>(job: Job): Promise<T> {
  return new Promise((resolve, reject) => {
    const p = fork(fileURLToPath(import.meta.url), ['--child', JSON.stringify(job)], { stdio: 'inherit' });
    p.once('message', (m) => resolve(m as T));
    p.once('exit', (code) =>
      code === 0 ? undefined : reject(new Error(`child exited with ${code}: ${JSON.stringify(job)}`)),
    );
  });
}

function table(header: string[], rows: (string | number)[][]): void {
  const cells = [
    header,
    ...rows.map((r) =>
      r.map((v) => (typeof v !== 'number' ? v : Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1))),
    ),
  ];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  for (const [k, r] of cells.entries()) {
    console.log(r.map((v, i) => (i === 0 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  '));
    if (k === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
  console.log();
}

async function main(quick: boolean) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'graph-profiles-'));
  const ortVersion = JSON.parse(
    readFileSync(new URL('../node_modules/onnxruntime-web/package.json', import.meta.url), 'utf8'),
  ).version;
  const c = synthConfig(SHAPE);
  console.log(
    `# Decoder profiles: ${SHAPE} (hidden ${c.hidden_size}, ${c.num_hidden_layers} layers, ${c.num_attention_heads}/${c.num_key_value_heads} heads, vocab ${c.vocab_size}), float32`,
  );
  console.log(
    `machine: ${os.cpus()[0]?.model} x${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GB, Node ${process.version}, onnxruntime-web ${ortVersion} wasm\n`,
  );
  try {
    const profiles: DecoderProfile[] = ['standard', 'contrib'];
    const files = new Map<DecoderProfile, string>();
    const buildRows: (string | number)[][] = [];
    for (const profile of profiles) {
      const file = path.join(dir, `${profile}.onnx`);
      const b = await child<Awaited<ReturnType<typeof build>>>({ kind: 'build', profile, file });
      files.set(profile, file);
      buildRows.push([profile, b.nodes ?? 0, b.mb, b.synth, b.graph, b.serialize, b.peak]);
    }
    console.log('## Build (fresh process each): synthesize checkpoint, build graph, serialize');
    table(['profile', 'nodes', 'model MB', 'synth s', 'build s', 'toBinary s', 'peak RSS MB'], buildRows);

    const runs: { label: string; profile: DecoderProfile; threads: number; options: SessionOptions }[] = [];
    for (const threads of [1, 2])
      for (const profile of profiles) runs.push({ label: 'default', profile, threads, options: {} });
    if (!quick) {
      const variants: [string, SessionOptions][] = [
        ["graphOptimizationLevel 'basic'", { graphOptimizationLevel: 'basic' }],
        ["graphOptimizationLevel 'disabled'", { graphOptimizationLevel: 'disabled' }],
        ['enableCpuMemArena false', { enableCpuMemArena: false }],
        ['freeDimensionOverrides batch_size 1', { freeDimensionOverrides: { batch_size: 1 } }],
      ];
      for (const [label, options] of variants)
        for (const profile of profiles) runs.push({ label, profile, threads: 2, options });
    }
    const rows: (string | number)[][] = [];
    let base: { prefillTps: number; decodeTps: number } | undefined;
    for (const r of runs) {
      const m = await child<Awaited<ReturnType<typeof run>>>({
        kind: 'run',
        file: files.get(r.profile)!,
        threads: r.threads,
        options: r.options,
      });
      base ??= m;
      rows.push([
        r.profile,
        r.threads,
        r.label,
        m.prefillTps,
        m.prefillTps / base.prefillTps,
        m.prefillLongTps,
        m.decodeTps,
        m.decodeTps / base.decodeTps,
        m.create,
        m.peakCreate,
        m.peak,
      ]);
      process.stdout.write('.');
    }
    console.log('\n');
    console.log(
      `## Speed: prefill ${PREFILL} tokens (empty past), decode ${DECODE_STEPS} steps after a ${PREFILL}-token prompt; x = ratio to the first row`,
    );
    table(
      [
        'profile',
        'threads',
        'session options',
        `prefill ${PREFILL} tok/s`,
        'x',
        `prefill ${PREFILL_LONG} tok/s`,
        'decode tok/s',
        'x',
        'create s',
        'RSS@create MB',
        'peak RSS MB',
      ],
      rows,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const at = process.argv.indexOf('--child');
if (at >= 0) {
  const job = JSON.parse(process.argv[at + 1]) as Job;
  const result = job.kind === 'build' ? await build(job) : await run(job);
  process.send?.(result, () => process.exit(0));
} else {
  await main(process.argv.includes('--quick'));
}
