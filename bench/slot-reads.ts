/**
 * Part of `decode` (issue 3): what one LoRA branch costs onnxruntime-web per run, depending on how its
 * A and B reach the MatMuls. A chain of 210 branches `x += (x · A_k) · B_k` (SmolLM2-135M's count of
 * linears; A [576, 8], B [8, 576]: 7.7 MB of adapter per run) against a chain of 210 Adds:
 *
 *   initializers      A_k, B_k baked into the graph: the cost of the MatMuls and the Add alone
 *   one shared input  every branch reads the same small fed A, B: a fed (non-constant) MatMul
 *   packed + Split    the slot layout (graph/adapter-slots.ts): 2 packed inputs, one Split each
 *   packed + Gather   the previous layout: one Gather per branch and input
 *   one input each    420 separate inputs
 *   inputs, unused    the packed inputs fed and not read: the copy into the wasm heap alone
 *
 * The gap between "initializers" and "packed + Split" is the price of feeding an adapter per run
 * rather than building it into the session: copying its bytes in, cutting them into blocks, and
 * reading them from memory rather than cache.
 */
import * as ort from 'onnxruntime-web';
import { encodeModel } from '../src/formats/onnx/index.js';
import { GraphBuilder } from '../src/graph/builder.js';
import { fmt, median, printTable, progress } from './lib/report.js';

const BRANCHES = 210;
const IN = 576;
const RANK = 8;

type Layout = 'adds' | 'initializers' | 'shared' | 'split' | 'gather' | 'separate' | 'unused';

const LABELS: Record<Layout, string> = {
  adds: 'no branch: 210 Adds (baseline)',
  initializers: 'A, B as initializers',
  shared: 'one shared fed A, B',
  split: 'packed inputs + one Split each (current)',
  gather: 'packed inputs + a Gather per branch (previous)',
  separate: '420 separate inputs',
  unused: 'packed inputs fed, not read (copy only)',
};

function build(layout: Layout): { model: Uint8Array; feeds: Record<string, ort.Tensor> } {
  const g = new GraphBuilder();
  let x = g.input('x', 'float32', [1, 1, IN]);
  const feeds: Record<string, ort.Tensor> = {
    x: new ort.Tensor('float32', new Float32Array(IN).fill(0.01), [1, 1, IN]),
  };
  const fill = (n: number) => new Float32Array(n).fill(1e-3);
  const feed = (name: string, dims: number[]) => {
    g.input(name, 'float32', dims);
    feeds[name] = new ort.Tensor('float32', fill(dims[0] * dims[1]), dims);
    return name;
  };
  let a: (k: number) => string = () => '';
  let b: (k: number) => string = () => '';
  if (layout === 'initializers') {
    a = (k) => g.initializer(`A${k}`, fill(IN * RANK), [IN, RANK]);
    b = (k) => g.initializer(`B${k}`, fill(RANK * IN), [RANK, IN]);
  } else if (layout === 'shared') {
    const [sa, sb] = [feed('A', [IN, RANK]), feed('B', [RANK, IN])];
    [a, b] = [() => sa, () => sb];
  } else if (layout === 'split' || layout === 'unused') {
    feed('A', [BRANCHES * IN, RANK]);
    feed('B', [BRANCHES * RANK, IN]);
    if (layout === 'split') {
      const as = g.node('Split', ['A', g.ints(Array(BRANCHES).fill(IN))], {
        attrs: { axis: 0 },
        outputs: BRANCHES,
      });
      const bs = g.node('Split', ['B', g.ints(Array(BRANCHES).fill(RANK))], {
        attrs: { axis: 0 },
        outputs: BRANCHES,
      });
      [a, b] = [(k) => as[k], (k) => bs[k]];
    }
  } else if (layout === 'gather') {
    g.input('A', 'float32', [BRANCHES, IN, RANK]);
    g.input('B', 'float32', [BRANCHES, RANK, IN]);
    feeds.A = new ort.Tensor('float32', fill(BRANCHES * IN * RANK), [BRANCHES, IN, RANK]);
    feeds.B = new ort.Tensor('float32', fill(BRANCHES * RANK * IN), [BRANCHES, RANK, IN]);
    a = (k) => g.node('Gather', ['A', g.ints(k, [])])[0];
    b = (k) => g.node('Gather', ['B', g.ints(k, [])])[0];
  } else if (layout === 'separate') {
    a = (k) => feed(`A${k}`, [IN, RANK]);
    b = (k) => feed(`B${k}`, [RANK, IN]);
  }
  const c = g.floats(Array(IN).fill(1e-3), [IN]);
  for (let k = 0; k < BRANCHES; k++) {
    const branch = layout !== 'adds' && layout !== 'unused';
    const d = branch ? g.node('MatMul', [g.node('MatMul', [x, a(k)])[0], b(k)])[0] : c;
    x = g.node('Add', [x, d])[0];
  }
  g.output(x, 'float32', [1, 1, IN]);
  return { model: encodeModel(g.build()), feeds };
}

export async function runSlotReads(rounds: number): Promise<void> {
  progress('decode: slot reads (one LoRA branch per linear, fed in different layouts)');
  ort.env.wasm.numThreads = 1;
  const layouts = Object.keys(LABELS) as Layout[];
  const sessions = [];
  for (const layout of layouts) {
    const { model, feeds } = build(layout);
    const session = await ort.InferenceSession.create(model, {
      executionProviders: ['wasm'],
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3, // the Adds baseline has an unused constant onnxruntime warns about
    });
    await session.run(feeds);
    sessions.push({ layout, session, feeds, ms: [] as number[] });
  }
  // Interleaved: every round runs each layout once, so load changes hit all alike.
  for (let round = 0; round < rounds + 5; round++) {
    for (const s of sessions) {
      const t = performance.now();
      await s.session.run(s.feeds);
      if (round >= 5) s.ms.push(performance.now() - t);
    }
  }
  const base = median(sessions[0].ms);
  printTable(
    `What a LoRA branch costs onnxruntime-web per run, by how A and B are fed: ${BRANCHES} branches, A [${IN}, ${RANK}], B [${RANK}, ${IN}] (${fmt((BRANCHES * 2 * IN * RANK * 4) / 1e6, 1)} MB per run)`,
    ['layout', 'ms per run', 'µs per branch over the Adds'],
    sessions.map((s) => [
      LABELS[s.layout],
      fmt(median(s.ms), 2),
      s.layout === 'adds' ? '—' : fmt(((median(s.ms) - base) / BRANCHES) * 1000, 1),
    ]),
    [
      `Medians of ${rounds} interleaved runs per layout, wasm, 1 thread. "copy only" has no branches: it is the cost of copying the packed inputs into the wasm heap on every run.`,
    ],
    'backend wasm, 1 thread',
  );
  for (const s of sessions) await s.session.release();
}
