/**
 * The adapter store in the worker, in headless Chromium (test/browser/harness.ts: local server with
 * COOP/COEP, esbuild bundles, Debian's chromium):
 *
 *   - activation latency: an adapter cached in IndexedDB but not in the worker's memory (cold: read,
 *     sha256, unzip, parse, feeds, activate) against one already added (warm: activate only), and a
 *     download from the local server as a third column;
 *   - read throughput of a cached adapter: a raw IndexedDB get and AdapterStore.read (get + sha256),
 *     against fetching the same bytes from the local server;
 *   - decode tokens/s in the worker on wasm and WebGPU (headless Chromium's WebGPU adapter is
 *     SwiftShader, a software renderer: this says what the software path costs, not what a GPU does).
 *
 * Timings are taken on the page around one remote call; rounds interleave the compared variants.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { writeAdapterBundle } from '../src/store/bundle.js';
import { modelFingerprint } from '../src/store/manifest.js';
import { startHarness, type Harness } from '../test/browser/harness.js';
import type {} from './browser/store-page.js'; // declares window.bench
import { loraAllLinear } from './lib/adapters.js';
import { ensureModel, modelConfig, modelDir, storyTokens, type ModelName } from './lib/models.js';
import { fmt, median, printTable, progress, ratio, withSpread } from './lib/report.js';

const MODELS: ModelName[] = ['stories260K', 'smollm2-135m'];
const RANK = 8;
const PROMPT = 16;

export interface StoreBenchOptions {
  rounds: number;
  /** Tokens decoded per measurement on each backend. */
  decodeTokens: number;
}

interface Adapter {
  model: ModelName;
  id: string;
  sha256: string;
  bytes: number;
}

/** One LoRA r8 on every linear layer per model, as a zip bundle listed in that model's adapters.json. */
async function writeAdapters(work: string): Promise<Adapter[]> {
  const adapters: Adapter[] = [];
  for (const model of MODELS) {
    const config = modelConfig(model);
    const zip = writeAdapterBundle(loraAllLinear(config, RANK, 1));
    const id = `${model}-lora-r${RANK}`; // ids are the cache's keys: one per adapter across manifests
    const sha256 = createHash('sha256').update(zip).digest('hex');
    const base = await modelFingerprint(
      JSON.parse(readFileSync(path.join(modelDir(model), 'config.json'), 'utf8')) as object,
    );
    mkdirSync(path.join(work, model), { recursive: true });
    writeFileSync(path.join(work, model, `${id}.zip`), zip);
    const entry = {
      id,
      version: 1,
      method: 'LORA',
      base,
      url: `${id}.zip`,
      sha256,
      bytes: zip.length,
      format: 'zip',
    };
    writeFileSync(
      path.join(work, model, 'adapters.json'),
      JSON.stringify({ version: 1, base: { fingerprint: base }, adapters: [entry] }),
    );
    adapters.push({ model, id, sha256, bytes: zip.length });
  }
  return adapters;
}

const modelUrl = (model: ModelName) => `/bench/out/models/${model}/`;

export async function runBrowserStore(o: StoreBenchOptions): Promise<void> {
  for (const model of MODELS) ensureModel(model);
  let adapters: Adapter[] = [];
  progress('browser-store: bundling and starting Chromium');
  const h: Harness = await startHarness(
    async (work) => {
      adapters = await writeAdapters(work);
    },
    { page: 'bench/browser/store-page.ts', global: 'bench' },
  );
  const page = h.page;
  const version = h.context.browser()?.version() ?? 'unknown';
  try {
    for (const model of MODELS)
      await page.evaluate(([m, url, manifest]) => window.bench.load(m, url, manifest, 'wasm'), [
        model,
        modelUrl(model),
        `/served/${model}/adapters.json`,
      ] as const);

    progress('browser-store: activation, cold vs warm');
    const activation = new Map<string, { network: number; cold: number[]; warm: number[] }>();
    for (const a of adapters) {
      const network = await page.evaluate(([m, id]) => window.bench.network(m, id), [a.model, a.id] as const);
      activation.set(a.model, { network, cold: [], warm: [] });
    }
    for (let round = 0; round < o.rounds; round++)
      for (const a of adapters) {
        const row = activation.get(a.model) as { cold: number[]; warm: number[] };
        row.cold.push(await page.evaluate(([m, id]) => window.bench.cold(m, id), [a.model, a.id] as const));
        row.warm.push(await page.evaluate(([m, id]) => window.bench.warm(m, id), [a.model, a.id] as const));
      }

    progress('browser-store: reading a cached adapter');
    const reads = new Map<string, { fetch: number[]; raw: number[]; verified: number[] }>();
    for (const a of adapters) reads.set(a.model, { fetch: [], raw: [], verified: [] });
    for (let round = 0; round < o.rounds; round++)
      for (const a of adapters) {
        const row = reads.get(a.model) as { fetch: number[]; raw: number[]; verified: number[] };
        row.fetch.push(
          await page.evaluate((url) => window.bench.fetch(url), `/served/${a.model}/${a.id}.zip`),
        );
        const r = await page.evaluate(([id, sha]) => window.bench.read(id, sha), [a.id, a.sha256] as const);
        if (r.bytes !== a.bytes) throw new Error(`${a.id}: read ${r.bytes} bytes, stored ${a.bytes}`);
        row.raw.push(r.rawMs);
        row.verified.push(r.verifiedMs);
      }
    for (const model of MODELS) await page.evaluate((m) => window.bench.release(m), model);

    progress('browser-store: decode on wasm and WebGPU (stories260K)');
    const { prompt } = storyTokens(PROMPT);
    const decode = { wasm: [] as number[], webgpu: [] as number[] };
    for (const backend of ['wasm', 'webgpu'] as const)
      await page.evaluate(([b, url, manifest]) => window.bench.load(b, url, manifest, b), [
        backend,
        modelUrl('stories260K'),
        '/served/stories260K/adapters.json',
      ] as const);
    for (let round = 0; round < o.rounds; round++)
      for (const backend of round % 2 ? (['webgpu', 'wasm'] as const) : (['wasm', 'webgpu'] as const)) {
        const { first, all } = await page.evaluate(([b, p, n]) => window.bench.decode(b, p, n), [
          backend,
          prompt,
          o.decodeTokens,
        ] as const);
        decode[backend].push((o.decodeTokens / (all - first)) * 1000);
      }

    const mb = (bytes: number, ms: number[]) => ms.map((t) => bytes / 2 ** 20 / (t / 1000));
    printTable(
      `Adapter activation in the worker: from IndexedDB (cold) vs from memory (warm), LoRA r${RANK} on every linear`,
      [
        'model',
        'zip bytes',
        'warm: activate ms',
        'cold: IndexedDB → active ms',
        'cold vs warm',
        'download → active ms',
      ],
      adapters.map((a) => {
        const r = activation.get(a.model) as { network: number; cold: number[]; warm: number[] };
        return [
          a.model,
          a.bytes.toLocaleString('en-US'),
          withSpread(r.warm, 1),
          withSpread(r.cold, 1),
          ratio(median(r.cold) / median(r.warm), 0),
          fmt(r.network, 0),
        ];
      }),
      [
        `Headless Chromium ${version}, wasm, 1 thread; ${o.rounds} interleaved rounds, median [p25–p75], timed on the page around the remote calls.`,
        'warm: `adapters.activate(id)` of an adapter already added (feeds computed at add) plus saving the selection to IndexedDB. cold: `adapters.install(id)` from IndexedDB (read, sha256, unzip, parse, feeds) + activate. download: `install` from the local server (fetch, sha256, cache write) + activate, once.',
      ],
      `Chromium ${version}`,
    );
    printTable(
      'Reading a cached adapter on the page: IndexedDB vs fetching it from the local server',
      [
        'model',
        'bytes',
        'fetch 127.0.0.1 MB/s',
        'IndexedDB get MB/s',
        'vs fetch',
        'AdapterStore.read (get + sha256) MB/s',
        'vs fetch',
      ],
      adapters.map((a) => {
        const r = reads.get(a.model) as { fetch: number[]; raw: number[]; verified: number[] };
        const [f, raw, verified] = [mb(a.bytes, r.fetch), mb(a.bytes, r.raw), mb(a.bytes, r.verified)];
        return [
          a.model,
          a.bytes.toLocaleString('en-US'),
          withSpread(f, 0),
          withSpread(raw, 0),
          ratio(median(raw) / median(f)),
          withSpread(verified, 0),
          ratio(median(verified) / median(f)),
        ];
      }),
      [
        `Headless Chromium ${version}; ${o.rounds} rounds; the server sends Cache-Control: no-store, so every fetch reaches it.`,
      ],
      `Chromium ${version}`,
    );
    printTable(
      `Decode in the worker: wasm vs WebGPU (stories260K, ${PROMPT}-token prompt, ${o.decodeTokens} tokens)`,
      ['backend', 'decode tok/s', 'vs wasm'],
      (['wasm', 'webgpu'] as const).map((b) => [
        b === 'wasm' ? 'wasm (1 thread)' : 'webgpu (SwiftShader, software)',
        withSpread(decode[b], 1),
        ratio(median(decode[b]) / median(decode.wasm)),
      ]),
      [
        `Headless Chromium ${version} with --enable-unsafe-webgpu: its only WebGPU adapter is SwiftShader, a software renderer on the CPU, so WebGPU here measures the software path, not a GPU. decode = n / (t(n + 1) − t(1)), greedy, EOS ignored; ${o.rounds} interleaved rounds.`,
      ],
      `Chromium ${version}`,
    );
  } finally {
    await h.close();
  }
}
