/**
 * The browser test harness: a static server with cross-origin isolation, an esbuild bundle of the
 * worker and the test page, and Debian's headless Chromium driven by playwright-core.
 *
 *   const h = await startHarness({ mounts: { '/served/': dir } });
 *   await h.page.evaluate(...);
 *   await h.close();
 */
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** The project root, served at `/`. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The Chromium Debian's `chromium` package installs. */
export const CHROMIUM = '/usr/bin/chromium';

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.txt': 'text/plain; charset=utf-8',
};

export interface Server {
  origin: string;
  /** Requests served, by path, for checks on where files came from. */
  requests: string[];
  close(): Promise<void>;
}

/**
 * Serves `mounts` (URL prefix ending in '/' -> folder) on 127.0.0.1 at a free port, with the COOP/COEP
 * headers that make the page cross-origin isolated (SharedArrayBuffer, wasm threads). Paths that
 * leave their folder are refused.
 */
export async function startServer(mounts: Record<string, string>): Promise<Server> {
  const requests: string[] = [];
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  const server = http.createServer((req, res) => {
    void (async () => {
      const pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      requests.push(pathname);
      res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
      res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
      res.setHeader('Cache-Control', 'no-store');
      const prefix = prefixes.find((p) => pathname.startsWith(p));
      const file =
        prefix === undefined
          ? undefined
          : path.resolve(mounts[prefix], `.${pathname.slice(prefix.length - 1)}`);
      const inside =
        file !== undefined && prefix !== undefined && file.startsWith(path.resolve(mounts[prefix]));
      const info = inside ? await stat(file).catch(() => undefined) : undefined;
      if (req.method !== 'GET' || !info?.isFile()) {
        res.writeHead(req.method !== 'GET' ? 405 : 404, { 'Content-Type': 'text/plain' }).end('not found');
        return;
      }
      res.writeHead(200, {
        'Content-Type': MIME[path.extname(file as string)] ?? 'application/octet-stream',
        'Content-Length': info.size,
      });
      createReadStream(file as string).pipe(res);
    })().catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(e));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Bundles entry points (path relative to the project root -> output name) into `outdir` for the
 * browser. onnxruntime-web is taken in its "extern wasm" build, which loads its `.mjs` glue and `.wasm`
 * from `env.wasm.wasmPaths` at run time (here: the served node_modules/onnxruntime-web/dist/).
 */
export async function bundle(entries: Record<string, string>, outdir: string): Promise<void> {
  await build({
    entryPoints: Object.entries(entries).map(([out, entry]) => ({ in: path.join(ROOT, entry), out })),
    outdir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    conditions: ['onnxruntime-web-use-extern-wasm'],
    // Node-only branches (folders on disk) are never taken in the browser; splitting keeps them in
    // chunks that are never loaded.
    external: ['node:*'],
    splitting: true,
    logLevel: 'error',
    sourcemap: 'linked',
  });
}

export interface Browser {
  context: BrowserContext;
  page: Page;
  /** Console messages and page errors, for failure messages. */
  log: string[];
  close(): Promise<void>;
}

/**
 * Headless Chromium with a fresh profile, no network beyond the test server, and WebGPU enabled
 * (`--enable-unsafe-webgpu`: headless Chromium then offers SwiftShader's software Vulkan adapter).
 * `profile`: the user-data-dir to use (default: a new temp folder, removed on close); `args`: more
 * Chromium flags (the benches add those that keep background pages from being throttled).
 */
export async function launchBrowser(profile?: string, args: readonly string[] = []): Promise<Browser> {
  const dir = profile ?? mkdtempSync(path.join(tmpdir(), 'edge-adapters-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--enable-unsafe-webgpu',
      ...args,
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const log: string[] = [];
  page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  return {
    context,
    page,
    log,
    async close() {
      await context.close().catch(() => undefined);
      if (profile === undefined) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A tmpfs of `size` (e.g. '48m') mounted on a new temp folder: a disk that really fills up, so that
 * a Chromium profile on it meets a real QuotaExceededError. Needs the privilege to mount (root);
 * throws saying so otherwise. `unmount()` removes it.
 */
export function mountTmpfs(size: string): { dir: string; unmount(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'edge-adapters-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(
      `mounting a ${size} tmpfs failed (the quota test needs root, or CAP_SYS_ADMIN in a container): ${String((e as { stderr?: unknown }).stderr ?? e)}`,
    );
  }
  return {
    dir,
    unmount() {
      execFileSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Harness extends Browser {
  server: Server;
  /** The temp folder served at /served/ (bundles in /served/bundle/). */
  work: string;
  origin: string;
}

/** Where the test page is served. */
export const PAGE_PATH = '/served/bundle/index.html';

/** Opens the test page and waits until its script has set `window[global]` (default 'edge'). */
export async function openTestPage(page: Page, origin: string, global = 'edge'): Promise<void> {
  await page.goto(`${origin}${PAGE_PATH}`);
  await page.waitForFunction((name) => name in window, global, { timeout: 30_000 });
}

export interface HarnessOptions {
  /** The test page's entry (default test/browser/page.ts, which sets `window.edge`). */
  page?: string;
  /** The global the page's script sets when it is ready (default 'edge'). */
  global?: string;
}

/**
 * Everything a browser test needs: a temp folder served at /served/ (`prepare` fills it), bundles of the
 * worker and the test page in it (opened at `${origin}${PAGE_PATH}`), the server, the browser, and the
 * page opened.
 */
export async function startHarness(
  prepare: (work: string) => Promise<void> | void,
  options: HarnessOptions = {},
): Promise<Harness> {
  const work = mkdtempSync(path.join(tmpdir(), 'edge-adapters-browser-'));
  let server: Server | undefined;
  let browser: Browser | undefined;
  try {
    await prepare(work);
    await bundle(
      { worker: 'workers/runtime.worker.ts', page: options.page ?? 'test/browser/page.ts' },
      path.join(work, 'bundle'),
    );
    writeFileSync(
      path.join(work, 'bundle', 'index.html'),
      '<!doctype html><meta charset="utf-8"><title>edge-adapters browser tests</title><script type="module" src="page.js"></script>',
    );
    server = await startServer({ '/': ROOT, '/served/': work });
    browser = await launchBrowser();
    await openTestPage(browser.page, server.origin, options.global);
    const s = server;
    const b = browser;
    return {
      ...b,
      server: s,
      work,
      origin: s.origin,
      async close() {
        await b.close();
        await s.close();
        rmSync(work, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await browser?.close();
    await server?.close();
    rmSync(work, { recursive: true, force: true });
    throw e;
  }
}
