/**
 * Part 4: wasm vs wasm in Chromium — our engine and transformers.js, both on onnxruntime-web's
 * WebAssembly backend, in the same headless browser, on the same model files.
 *
 * A small node:http server on 127.0.0.1 serves, with COOP/COEP (cross-origin isolation, which wasm
 * threads need): the model folders, onnxruntime-web's dist/ (ours: the project's onnxruntime-web;
 * transformers.js: the build it depends on), transformers.js's self-contained web build, and our
 * engine bundled for the browser by esbuild. Each engine x thread count is its own page (threads
 * are fixed when onnxruntime-web starts in a page); the pages stay open and are stepped in turns.
 */
import { mkdtempSync, rmSync, statSync, createReadStream } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchPage } from './browser/page-api.js';
import { ensureModel, modelConfig, OUT, storyTokens, type ModelName } from './lib/models.js';
import {
  fmt,
  median,
  NODE_MODULES,
  packageVersion,
  printTable,
  progress,
  quantile,
  ratio,
  sleep,
  withSpread,
} from './lib/report.js';

const PROMPT = 128;
const DECODE = 64;
const CHROMIUM = '/usr/bin/chromium';
const HERE = fileURLToPath(new URL('.', import.meta.url));
const TJS_DIR = path.join(NODE_MODULES, '@huggingface', 'transformers');
const TJS_ORT = path.join(TJS_DIR, 'node_modules', 'onnxruntime-web');

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.map': 'application/json',
};

/** URL prefix -> folder. Nothing outside these folders is served. */
function routes(): [string, string][] {
  return [
    ['/models/', path.join(OUT, 'models')],
    ['/ort/', path.join(NODE_MODULES, 'onnxruntime-web', 'dist')],
    ['/tjs-ort/', path.join(TJS_ORT, 'dist')],
    ['/tjs/', path.join(TJS_DIR, 'dist')],
    ['/page/', path.join(HERE, 'browser')],
  ];
}

const PAGE = (script: string) =>
  `<!doctype html><meta charset="utf-8"><title>bench</title><script type="module" src="${script}"></script>`;

function serve(app: ReadonlyMap<string, Uint8Array>): Promise<{ server: Server; origin: string }> {
  const table = routes();
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
    res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    res.setHeader('Cache-Control', 'no-store');
    if (url.pathname === '/ours.html' || url.pathname === '/tjs.html') {
      res.setHeader('Content-Type', MIME['.html']);
      res.end(PAGE(url.pathname === '/ours.html' ? '/app/ours.js' : '/page/tjs-page.js'));
      return;
    }
    const built = app.get(url.pathname);
    if (built) {
      res.setHeader('Content-Type', MIME['.js']);
      res.end(built);
      return;
    }
    const route = table.find(([prefix]) => url.pathname.startsWith(prefix));
    const rel = route ? decodeURIComponent(url.pathname.slice(route[0].length)) : '';
    const file = route ? path.join(route[1], rel) : '';
    if (!route || rel.split('/').includes('..') || !file.startsWith(route[1])) {
      res.statusCode = 404;
      res.end();
      return;
    }
    let size: number;
    try {
      const st = statSync(file);
      if (!st.isFile()) throw new Error('not a file');
      size = st.size;
    } catch {
      res.statusCode = 404;
      res.end();
      return;
    }
    res.setHeader('Content-Type', MIME[path.extname(file)] ?? 'application/octet-stream');
    res.setHeader('Content-Length', size);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }),
    ),
  );
}

/**
 * Our engine for the browser: one ES module, nothing external but what cannot run in a page. Kept in
 * memory and served as /app/ours.js (a bundle on disk would be linted as project source).
 */
async function bundleOurs(): Promise<Uint8Array> {
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    entryPoints: [path.join(HERE, 'browser', 'ours-entry.ts')],
    outfile: 'ours.js',
    write: false,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    // The native backend and Node's folder reader sit behind dynamic imports a page never reaches.
    external: ['onnxruntime-node'],
    plugins: [
      {
        name: 'node-only',
        setup(build) {
          build.onResolve({ filter: /files-node\.js$/ }, (args) => ({ path: args.path, external: true }));
        },
      },
    ],
    logLevel: 'warning',
  });
  const [file] = result.outputFiles;
  if (!file) throw new Error('esbuild produced no output');
  return file.contents;
}

type Engine = 'ours' | 'tjs';
interface PageRow {
  engine: Engine;
  threads: number;
  label: string;
  page?: { evaluate: <R, A>(f: (a: A) => R | Promise<R>, arg: A) => Promise<R> };
  loadMs?: number;
  isolated?: boolean;
  prefill: number[];
  decode: number[];
  tokens?: number[];
  error?: string;
}

export interface BrowserOptions {
  models: ModelName[];
  threads: number[];
  rounds: number;
}

export async function runBrowser(o: BrowserOptions): Promise<void> {
  const { chromium } = await import('playwright-core');
  progress('browser: bundling our engine with esbuild');
  const ours = await bundleOurs();
  const { server, origin } = await serve(new Map([['/app/ours.js', ours]]));
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'edge-adapters-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      // Every page computes in turn; none may be throttled as a background page.
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
    ],
  });
  const browserVersion = context.browser()?.version() ?? 'unknown';
  try {
    for (const model of o.models) {
      ensureModel(model);
      const { prompt } = storyTokens(PROMPT);
      const rows: PageRow[] = [];
      for (const threads of o.threads)
        for (const engine of ['ours', 'tjs'] as Engine[])
          rows.push({
            engine,
            threads,
            label:
              engine === 'ours'
                ? 'ours (onnxruntime-web wasm)'
                : 'transformers.js web build (its onnxruntime-web, wasm)',
            prefill: [],
            decode: [],
          });
      for (const row of rows) {
        progress(`browser ${model}: loading ${row.engine}, ${row.threads} thread(s)`);
        const page = await context.newPage();
        const errors: string[] = [];
        page.on('pageerror', (e) => errors.push(e.message));
        page.on('console', (m) => {
          if (m.type() === 'error') errors.push(m.text());
        });
        try {
          await page.goto(`${origin}/${row.engine}.html`);
          await page.waitForFunction(() => 'bench' in globalThis, undefined, { timeout: 60_000 });
          const ortUrl = `${origin}${row.engine === 'ours' ? '/ort/' : '/tjs-ort/'}`;
          const loaded = await page.evaluate(
            ({ url, threads, ort }) =>
              (globalThis as unknown as { bench: BenchPage }).bench.load(url, threads, ort),
            { url: `${origin}/models/${model}/`, threads: row.threads, ort: ortUrl },
          );
          row.loadMs = loaded.loadMs;
          row.isolated = loaded.crossOriginIsolated;
          row.page = page as unknown as PageRow['page'];
          await page.bringToFront();
          await generate(row, prompt, DECODE + 1); // warm-up
        } catch (error) {
          row.error = `${error instanceof Error ? error.message.split('\n')[0] : String(error)}${errors.length ? ` (page: ${errors.slice(0, 2).join('; ')})` : ''}`;
          progress(`  failed: ${row.error}`);
          await page.close();
        }
      }
      const live = rows.filter((r) => r.page);
      for (let round = 0; round < o.rounds; round++) {
        progress(`browser ${model}: round ${round + 1}/${o.rounds}`);
        const threadOrder = round % 2 === 0 ? o.threads : [...o.threads].reverse();
        for (const threads of threadOrder) {
          const group = live.filter((r) => r.threads === threads);
          for (let k = 0; k < group.length; k++) {
            const row = group[(k + round) % group.length];
            // The page measured is the foreground one: Chromium lowers the priority of background renderers.
            await (row.page as unknown as { bringToFront(): Promise<void> }).bringToFront();
            await sleep(50);
            const one = await generate(row, prompt, 1);
            await sleep(50);
            const all = await generate(row, prompt, DECODE + 1);
            row.tokens = all.tokens;
            row.prefill.push((PROMPT / one.ms) * 1000);
            row.decode.push((DECODE / (all.ms - one.ms)) * 1000);
          }
        }
      }
      for (const row of live) await (row.page as unknown as { close(): Promise<void> }).close();
      report(model, rows, o, browserVersion);
    }
  } finally {
    await context.close();
    server.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

function generate(row: PageRow, ids: number[], maxNew: number) {
  const page = row.page;
  if (!page) throw new Error('no page');
  return page.evaluate(
    ({ ids, maxNew }) => (globalThis as unknown as { bench: BenchPage }).bench.generate(ids, maxNew),
    { ids, maxNew },
  );
}

function report(model: ModelName, rows: PageRow[], o: BrowserOptions, browserVersion: string): void {
  const c = modelConfig(model);
  const pair = (a: number[], b: number[]) => a.map((v, i) => v / b[i]).filter(Number.isFinite);
  const table = rows.map((row) => {
    if (row.error) return [row.label, String(row.threads), `failed: ${row.error}`, '', '', '', '', '', ''];
    const peer = rows.find((r) => r.engine === 'tjs' && r.threads === row.threads && !r.error);
    const mine = row.engine === 'ours' && peer;
    const d = mine ? pair(row.decode, peer.decode) : [];
    return [
      row.label,
      String(row.threads),
      row.isolated ? 'yes' : 'no',
      fmt((row.loadMs ?? NaN) / 1000, 1),
      withSpread(row.prefill, 0),
      withSpread(row.decode, 1),
      mine ? ratio(median(pair(row.prefill, peer.prefill))) : '—',
      mine ? `${ratio(median(d))} [${ratio(quantile(d, 0.25))}–${ratio(quantile(d, 0.75))}]` : '—',
      mine && peer.tokens && row.tokens ? (peer.tokens.join() === row.tokens.join() ? 'yes' : 'no') : '—',
    ];
  });
  printTable(
    `wasm vs wasm in Chromium: ${model} (hidden ${c.hidden_size}, ${c.num_hidden_layers} layers, vocab ${c.vocab_size}), fp32`,
    [
      'engine',
      'threads',
      'crossOriginIsolated',
      'load s',
      `prefill tok/s (${PROMPT})`,
      `decode tok/s (${DECODE})`,
      'prefill vs transformers.js',
      'decode vs transformers.js',
      'same 65 tokens',
    ],
    table,
    [
      `Headless Chromium ${browserVersion}; pages served from 127.0.0.1 with COOP/COEP; ${o.rounds} interleaved rounds, median [p25–p75]; ratios per round at equal threads. Same measurement as the Node table: prefill = ${PROMPT} / t(1 new token), decode = 64 / (t(65) − t(1)), greedy, EOS off.`,
      `Ours: src/load-model.ts bundled by esbuild, urlSource, slots: false, onnxruntime-web ${packageVersion('onnxruntime-web')} (the wasm build). transformers.js ${packageVersion('@huggingface/transformers')}: dist/transformers.js (its self-contained web build), device 'wasm', dtype 'fp32', onnxruntime-web ${packageVersion('onnxruntime-web', path.join(TJS_DIR, 'node_modules'))} as it pins it — the WebGPU bundle, whose wasm binary is the asyncify build, used for the wasm device too.`,
    ],
    `Chromium ${browserVersion}`,
  );
}
