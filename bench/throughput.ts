/**
 * Part 1 (issue 2): base model throughput, ours vs transformers.js on the same model files.
 *
 * Every engine x backend x threads is a live worker process (wasm threads are fixed when
 * onnxruntime-web first loads, so each thread count needs its own process); the parent steps the
 * workers in turns, one request at a time, round after round, so their samples interleave.
 *
 * Prefill = 128 / time(generate 1 token from a 128-token prompt); decode = (time(65 tokens) -
 * time(1 token)) / 64; greedy, EOS off, for both engines (ours through LanguageModel.complete,
 * transformers.js through model.generate). Ours is also measured by measureThroughput (the
 * engine's own: DecoderSession.forward, random prompt ids).
 */
import path from 'node:path';
import { serveWorker, peakRssMB, Worker } from './lib/child.js';
import { ensureModel, modelConfig, storyTokens, type ModelName } from './lib/models.js';
import {
  fmt,
  median,
  packageVersion,
  printTable,
  progress,
  quantile,
  ratio,
  sleep,
  withSpread,
} from './lib/report.js';

export const PROMPT = 128;
export const DECODE = 64;

export interface TpSpec {
  engine: 'ours' | 'tjs';
  backend: 'wasm' | 'node';
  threads: number;
  model: ModelName;
  /** Ours only: patch adapter slots (the library default) or load the bare base (slots: false). */
  slots: boolean;
}

type TpRequest = { kind: 'gen'; maxNew: number } | { kind: 'mt' };
interface GenResult {
  ms: number;
  tokens: number[];
}
interface MtResult {
  prefill: number;
  decode: number;
}

/** The worker: load, then time generate requests. */
export function tpWorker(spec: TpSpec): Promise<void> {
  return serveWorker(async () => {
    const dir = ensureModel(spec.model);
    const { prompt } = storyTokens(PROMPT);
    const t0 = performance.now();
    let gen: (maxNew: number) => Promise<number[]>;
    let mt: (() => Promise<MtResult>) | undefined;
    if (spec.engine === 'ours') {
      const { loadModel } = await import('../src/load-model.js');
      const { measureThroughput } = await import('../src/engine/throughput.js');
      const model = await loadModel(dir, {
        backend: spec.backend,
        threads: spec.threads,
        ...(spec.slots ? {} : { slots: false }),
      });
      gen = async (maxNew) =>
        (await model.complete(prompt, { maxTokens: maxNew, eosTokenIds: [], temperature: 0 })).tokens;
      mt = async () => {
        const t = await measureThroughput(model.session, {
          promptTokens: PROMPT,
          decodeTokens: DECODE,
          warmup: 0,
          repeats: 1,
        });
        return { prefill: t.prefillTokensPerSecond, decode: t.decodeTokensPerSecond };
      };
    } else {
      if (spec.backend !== 'node') throw new Error('transformers.js runs on onnxruntime-node in Node');
      const { AutoModelForCausalLM, Tensor, env } = await import('@huggingface/transformers');
      env.localModelPath = `${path.dirname(dir)}/`;
      env.allowRemoteModels = false;
      const model = await AutoModelForCausalLM.from_pretrained(spec.model, {
        device: 'cpu',
        dtype: 'fp32',
        session_options: { intraOpNumThreads: spec.threads },
      });
      const ids = BigInt64Array.from(prompt, BigInt);
      gen = async (maxNew) => {
        const out = (await model.generate({
          input_ids: new Tensor('int64', ids, [1, ids.length]),
          attention_mask: new Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]),
          max_new_tokens: maxNew,
          do_sample: false,
          eos_token_id: [],
        })) as { tolist(): bigint[][] };
        return out.tolist()[0].slice(ids.length).map(Number);
      };
    }
    const loadS = (performance.now() - t0) / 1000;
    await gen(8); // warm-up: first runs, with and without a cache
    return {
      info: { loadS, rssMB: peakRssMB() },
      handle: async (request) => {
        const r = request as TpRequest;
        if (r.kind === 'mt') {
          if (!mt) throw new Error('measureThroughput is ours only');
          return mt();
        }
        const t = performance.now();
        const tokens = await gen(r.maxNew);
        return { ms: performance.now() - t, tokens } satisfies GenResult;
      },
    };
  });
}

interface Row {
  spec: TpSpec;
  label: string;
  loadS?: number;
  worker?: Worker<TpRequest, GenResult | MtResult>;
  prefill: number[];
  decode: number[];
  decodeMs: number[];
  mtPrefill: number[];
  mtDecode: number[];
  tokens?: number[];
  error?: string;
}

const label = (s: TpSpec) =>
  s.engine === 'ours'
    ? `ours, ${s.backend === 'wasm' ? 'onnxruntime-web wasm' : 'onnxruntime-node'}${s.slots ? ', adapter slots' : ''}`
    : 'transformers.js, onnxruntime-node';

export interface TpOptions {
  models: ModelName[];
  threads: number[];
  rounds: number;
  /** Also our wasm engine with adapter slots patched in (the Runtime default). */
  slotsRows: boolean;
}

async function measure(row: Row): Promise<void> {
  const w = row.worker as Worker<TpRequest, GenResult | MtResult>;
  await sleep(50);
  const one = (await w.call({ kind: 'gen', maxNew: 1 })) as GenResult;
  await sleep(50);
  const all = (await w.call({ kind: 'gen', maxNew: DECODE + 1 })) as GenResult;
  row.tokens = all.tokens;
  row.prefill.push((PROMPT / one.ms) * 1000);
  const perToken = (all.ms - one.ms) / DECODE;
  row.decodeMs.push(perToken);
  row.decode.push(1000 / perToken);
  if (row.spec.engine === 'ours') {
    await sleep(50);
    const m = (await w.call({ kind: 'mt' })) as MtResult;
    row.mtPrefill.push(m.prefill);
    row.mtDecode.push(m.decode);
  }
}

export async function runThroughput(o: TpOptions): Promise<void> {
  for (const model of o.models) {
    ensureModel(model);
    const specs: TpSpec[] = [];
    for (const threads of o.threads) {
      specs.push({ engine: 'ours', backend: 'wasm', threads, model, slots: false });
      if (o.slotsRows) specs.push({ engine: 'ours', backend: 'wasm', threads, model, slots: true });
      specs.push({ engine: 'ours', backend: 'node', threads, model, slots: false });
      specs.push({ engine: 'tjs', backend: 'node', threads, model, slots: false });
    }
    const rows: Row[] = specs.map((spec) => ({
      spec,
      label: label(spec),
      prefill: [],
      decode: [],
      decodeMs: [],
      mtPrefill: [],
      mtDecode: [],
    }));
    for (const row of rows) {
      progress(`${model}: loading ${row.label}, ${row.spec.threads} thread(s)`);
      try {
        row.worker = await Worker.start(`${row.label} t${row.spec.threads}`, 'throughput', row.spec);
        row.loadS = row.worker.info.loadS;
      } catch (error) {
        row.error = error instanceof Error ? error.message.split('\n')[0] : String(error);
        progress(`  failed: ${row.error}`);
      }
    }
    const live = rows.filter((r) => r.worker);
    // A round measures each thread count's group (our wasm, our node, transformers.js) back to back,
    // so the pairs a ratio compares ran close in time; the order inside a group and of the groups
    // rotates from round to round.
    for (let round = 0; round < o.rounds; round++) {
      progress(`${model}: round ${round + 1}/${o.rounds}`);
      const threadOrder = round % 2 === 0 ? o.threads : [...o.threads].reverse();
      for (const threads of threadOrder) {
        const group = live.filter((r) => r.spec.threads === threads);
        for (let k = 0; k < group.length; k++) await measure(group[(k + round) % group.length]);
      }
    }
    for (const row of live) await row.worker?.stop();
    report(model, rows, o);
  }
}

function report(model: ModelName, rows: Row[], o: TpOptions): void {
  const c = modelConfig(model);
  // Per-round ratios: round k of one worker against round k of its peer (measured back to back).
  const pair = (a: number[], b: number[]) => a.map((v, i) => v / b[i]).filter(Number.isFinite);
  const spread = (xs: number[]) =>
    `${ratio(median(xs))} [${ratio(quantile(xs, 0.25))}–${ratio(quantile(xs, 0.75))}]`;
  const table: string[][] = [];
  for (const row of rows) {
    const s = row.spec;
    if (row.error) {
      table.push([row.label, String(s.threads), `failed: ${row.error}`, '', '', '', '', '', '', '']);
      continue;
    }
    const peer = rows.find((r) => r.spec.engine === 'tjs' && r.spec.threads === s.threads && !r.error);
    const ours = s.engine === 'ours' && peer !== undefined && peer.decode.length > 0;
    table.push([
      row.label,
      String(s.threads),
      fmt(row.loadS ?? NaN, 1),
      withSpread(row.prefill, 0),
      withSpread(row.decode, 1),
      fmt(median(row.decodeMs), 1),
      ours ? spread(pair(row.prefill, peer.prefill)) : '—',
      ours ? spread(pair(row.decode, peer.decode)) : '—',
      row.mtPrefill.length ? `${fmt(median(row.mtPrefill), 0)} / ${fmt(median(row.mtDecode), 1)}` : '—',
      ours && peer.tokens && row.tokens ? (peer.tokens.join() === row.tokens.join() ? 'yes' : 'no') : '—',
    ]);
  }
  const what =
    model === 'stories260K'
      ? 'llama2.c stories260K'
      : 'synthetic SmolLM2-135M (real shapes, seeded random weights)';
  printTable(
    `Base model throughput, Node: ${what} — hidden ${c.hidden_size}, ${c.num_hidden_layers} layers, vocab ${c.vocab_size}; fp32, 'standard' profile`,
    [
      'engine, backend',
      'threads',
      'load s',
      `prefill tok/s (${PROMPT})`,
      `decode tok/s (${DECODE})`,
      'decode ms/tok',
      'prefill vs transformers.js',
      'decode vs transformers.js',
      'measureThroughput prefill / decode tok/s',
      'same 65 tokens',
    ],
    table,
    [
      `${o.rounds} rounds; each engine x threads is a live worker process and the parent steps them in turn (one computes at a time), each thread count's group back to back, order rotating. Cells: median [p25–p75] over rounds. Ratios: ours / transformers.js at equal threads, per round, median [p25–p75].`,
      `prefill = ${PROMPT} / t(1 new token); decode = 64 / (t(65 new tokens) − t(1 new token)); greedy, EOS off, prompt = ${PROMPT} tok512 ids of TinyStories text. Ours: LanguageModel.complete, loadModel(dir, { backend, threads, slots: false }) — the bare graph transformers.js runs. transformers.js ${packageVersion('@huggingface/transformers')}: AutoModelForCausalLM.from_pretrained on the same folder (onnx/model.onnx is a hard link to our model.onnx), device 'cpu', dtype 'fp32', session_options { intraOpNumThreads }, model.generate.`,
      `Same engine underneath: ours on backend 'node' and transformers.js both run onnxruntime-node ${packageVersion('onnxruntime-node')} (native, CPU EP) — that ratio compares the engines. Ours on 'wasm' (onnxruntime-web ${packageVersion('onnxruntime-web')}, WebAssembly) vs transformers.js on native code compares builds, not engines; wasm vs wasm is the Chromium table.`,
      'measureThroughput = src/engine/throughput.ts (DecoderSession.forward directly, random prompt ids), one run per round, medians.',
      o.slotsRows
        ? "'adapter slots' = loadModel's default (every slot patched in, no adapter active); the decode overhead table measures that cost paired."
        : 'Adapter slots off here (slots: false); the decode overhead table measures what they cost.',
      'load s = importing the engine + loadModel / from_pretrained (read, parse, create the session), in a fresh process.',
    ],
    `onnxruntime-node ${packageVersion('onnxruntime-node')}`,
  );
}
