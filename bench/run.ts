/**
 * The benchmarks: markdown tables, each headed with the machine, Node, onnxruntime-web and the
 * backend, with ratios to a baseline measured in the same run (interleaved or paired, never from
 * another run). Progress goes to stderr, the report to stdout.
 *
 *   npm run bench                               # all parts (about 90 minutes on 2 cores)
 *   npm run bench -- --only throughput          # one part, or several: --only swap,decode
 *   npm run bench -- --quick                    # fewer rounds: a smoke run
 *
 * Parts (aliases in parentheses):
 *   throughput (base)      issue 2: prefill/decode tok/s, ours (wasm, node) vs transformers.js (node)
 *   swap (adapters)        issue 3: adapters.activate -> first token, per method, vs merge + rebuild
 *   decode (overhead)      issue 3: decode cost of adapter slots and active adapters, paired
 *   browser                wasm vs wasm in headless Chromium: ours vs transformers.js's web build
 *   store (browser-store)  issue 4: adapter activation from IndexedDB vs memory, IndexedDB read MB/s,
 *                          decode tok/s on wasm and WebGPU, in the worker in headless Chromium
 *   quant (qlora)          issue 5: quantized bases — kernels per backend; disk, memory, decode tok/s
 *                          of fp32 / int8 / int4 / nf4 with a LoRA active, in Node and Chromium
 *   train                  ms per training step and memory against one forward, Node and Chromium
 *   mixtures               decode cost of k active experts (an Arrow mixture of 4 LoRA, top 1/2/4)
 *                          and of static blends against one adapter, per backend; per-request routing
 *
 * Options: --models stories260K,smollm2-135m (throughput, browser)  --threads 1,2 (all; swap uses
 * the first; decode defaults to 1)  --rounds N (throughput, browser)  --steps N (decode pairs)
 * --with-slots (throughput: also our wasm engine with adapter slots patched in)
 * --quant-parts kernels,node,chromium (quant; default all).
 *
 * Generated models go to bench/out/ (gitignored). Workers are child processes of this file.
 */
import { parseArgs } from 'node:util';
import { runThroughput, tpWorker, type TpSpec } from './throughput.js';
import { runSwap, swapWorker, type SwapSpec } from './swap.js';
import { runBrowser } from './browser.js';
import { runBrowserStore } from './browser-store.js';
import { overheadWorker, runOverhead, type OverheadSpec } from './decode-overhead.js';
import { runSlotReads } from './slot-reads.js';
import { QUANT_PARTS, quantWorker, runQuant, type QuantSpec } from './quant.js';
import { runTrain, trainWorker, type TrainSpec } from './train.js';
import { mixturesWorker, runMixtures, type MixturesSpec } from './mixtures.js';
import { machineLine, progress } from './lib/report.js';
import type { ModelName } from './lib/models.js';

const PARTS = ['throughput', 'swap', 'decode', 'browser', 'store', 'quant', 'train', 'mixtures'] as const;
type Part = (typeof PARTS)[number];
const ALIASES: Record<string, Part> = {
  adapters: 'swap',
  overhead: 'decode',
  base: 'throughput',
  'browser-store': 'store',
  qlora: 'quant',
};

async function worker(kind: string, spec: string): Promise<void> {
  if (kind === 'throughput') return tpWorker(JSON.parse(spec) as TpSpec);
  if (kind === 'swap') return swapWorker(JSON.parse(spec) as SwapSpec);
  if (kind === 'overhead') return overheadWorker(JSON.parse(spec) as OverheadSpec);
  if (kind === 'quant') return quantWorker(JSON.parse(spec) as QuantSpec);
  if (kind === 'train') return trainWorker(JSON.parse(spec) as TrainSpec);
  if (kind === 'mixtures') return mixturesWorker(JSON.parse(spec) as MixturesSpec);
  throw new Error(`unknown worker kind ${kind}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      quick: { type: 'boolean' },
      models: { type: 'string' },
      threads: { type: 'string' },
      rounds: { type: 'string' },
      steps: { type: 'string' },
      'with-slots': { type: 'boolean' },
      'quant-parts': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(
      'usage: tsx bench/run.ts [--only throughput,swap,decode,browser,store,quant,train,mixtures] [--quick] [--models stories260K,smollm2-135m]\n' +
        '                        [--threads 1,2] [--rounds N] [--steps N] [--with-slots] [--quant-parts kernels,node,chromium]',
    );
    return;
  }
  const parts = new Set<Part>(
    values.only
      ? values.only.split(',').map((p) => {
          const part = ALIASES[p.trim()] ?? (p.trim() as Part);
          if (!PARTS.includes(part))
            throw new Error(`--only: unknown part "${p}"; one of ${PARTS.join(', ')}`);
          return part;
        })
      : PARTS,
  );
  const quick = values.quick ?? false;
  const models = (values.models?.split(',') ?? ['stories260K', 'smollm2-135m']) as ModelName[];
  const threads = values.threads?.split(',').map(Number) ?? [1, 2];
  const rounds = values.rounds ? Number(values.rounds) : undefined;
  console.log(`# Edge Adapters benchmarks${quick ? ' (--quick)' : ''}\n\n${machineLine()}`);
  const t0 = performance.now();
  const timed = async (part: Part, run: () => Promise<void>) => {
    if (!parts.has(part)) return;
    const t = performance.now();
    await run();
    progress(`${part}: ${((performance.now() - t) / 60000).toFixed(1)} min`);
  };
  await timed('throughput', () =>
    runThroughput({
      models,
      threads,
      rounds: rounds ?? (quick ? 2 : 3),
      slotsRows: values['with-slots'] ?? false,
    }),
  );
  await timed('swap', () =>
    runSwap({
      threads: values.threads ? threads[0] : 1,
      repeats: quick ? 3 : 5,
      mergeRepeats: quick ? 1 : 2,
    }),
  );
  await timed('decode', async () => {
    await runSlotReads(quick ? 10 : 40);
    await runOverhead({
      threads: values.threads ? threads : [1],
      steps: values.steps ? Number(values.steps) : quick ? 24 : 48,
      control: !quick,
    });
  });
  await timed('browser', () => runBrowser({ models, threads, rounds: rounds ?? (quick ? 2 : 3) }));
  await timed('store', () =>
    runBrowserStore({ rounds: rounds ?? (quick ? 3 : 7), decodeTokens: quick ? 8 : 32 }),
  );
  await timed('quant', () =>
    runQuant({
      parts: values['quant-parts']?.split(',') ?? QUANT_PARTS,
      rounds: rounds ?? (quick ? 2 : 5),
      steps: values.steps ? Number(values.steps) : quick ? 8 : 16,
      gpuRounds: quick ? 1 : 3,
      gpuSteps: quick ? 2 : 3,
    }),
  );
  await timed('train', () => runTrain({ models, threads, rounds: rounds ?? (quick ? 2 : 7), quick }));
  await timed('mixtures', () => runMixtures({ quick }));
  progress(`done in ${((performance.now() - t0) / 60000).toFixed(1)} min`);
}

const at = process.argv.indexOf('--worker');
if (at >= 0) await worker(process.argv[at + 1], process.argv[at + 2]);
else await main();
