/**
 * The demo PWA, offline, in headless Chromium. The demo is built (demo/build.ts) into a temp folder
 * and served with COOP/COEP (demo/server.ts). Online, the service worker precaches the app shell,
 * onnxruntime-web's wasm and the model, and the page caches two adapters in IndexedDB. Offline, a reload
 * loads all of it from the service worker and IndexedDB, with the server down, and
 * generates the same greedy text as online, and as Node's Runtime on the same files. A changed build
 * served afterwards is offered as an update, which the page applies.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Page, Response } from 'playwright-core';
import { Runtime } from '../../src/runtime.js';
import { readAdapterBundle } from '../../src/store/bundle.js';
import { buildDemo } from '../../demo/build.js';
import { startDemoServer, type DemoServer } from '../../demo/server.js';
import { launchBrowser, type Browser } from './harness.js';

const PROMPT = 'once upon a time';
const TOKENS = 40;

let out: string;
let server: DemoServer;
let browser: Browser;
let page: Page;
let node: Runtime;
/** What the page generated online, per adapter id ('base' = none). */
const online = new Map<string, string>();

beforeAll(async () => {
  out = mkdtempSync(path.join(tmpdir(), 'edge-adapters-demo-'));
  await buildDemo({ out, version: 'one' });
  server = await startDemoServer(out);
  browser = await launchBrowser();
  page = browser.page;
  node = await Runtime.create({ model: path.join(out, 'model') });
  await node.adapters.add('dog-stories', path.join(out, 'adapters/dog-stories'));
  await node.adapters.add(
    'shakespeare',
    readAdapterBundle(readFileSync(path.join(out, 'adapters/shakespeare.zip')), 'shakespeare'),
  );
}, 120_000);

afterAll(async () => {
  await node?.release();
  await browser?.close();
  await server?.close();
  if (out) rmSync(out, { recursive: true, force: true });
});

/** Node's greedy continuation of PROMPT with `adapter` active ('base': none). */
async function nodeText(adapter: string): Promise<string> {
  if (adapter === 'base') node.adapters.deactivate();
  else await node.adapters.activate(adapter);
  return (await node.complete(PROMPT, { maxTokens: TOKENS })).text;
}

/** Generates through the page's form; returns the streamed text. */
async function generate(): Promise<string> {
  await page.fill('#prompt', PROMPT);
  await page.fill('#max-tokens', String(TOKENS));
  await page.click('#run');
  await page.waitForSelector('#output[data-state=done]');
  expect(
    await page.getAttribute('#output', 'data-finish'),
    (await page.textContent('#error')) ?? undefined,
  ).toBe('length');
  return (await page.textContent('#output')) ?? '';
}

/** Clicks an adapter's "Use" button; resolves with the row's state once it is active or failed. */
async function useAdapter(id: string) {
  const row = `#adapters li[data-id="${id}"]`;
  await page.click(`${row} button.use`);
  await page.waitForSelector(`${row}:is([data-state=active], [data-state=failed])`);
  return page.$eval(row, (li) => ({
    state: (li as HTMLElement).dataset.state,
    from: (li as HTMLElement).dataset.from,
    progress: (li.querySelector('progress') as HTMLProgressElement).value,
    error: li.querySelector('.error')?.textContent ?? '',
  }));
}

const rowStates = () =>
  page.$$eval('#adapters li', (rows) =>
    Object.fromEntries(rows.map((li) => [(li as HTMLElement).dataset.id, (li as HTMLElement).dataset.state])),
  );

/** Paths of every request held in the Cache Storage (the service worker's caches). */
const cachedPaths = () =>
  page.evaluate(async () => {
    const paths: string[] = [];
    for (const name of await caches.keys())
      for (const request of await (await caches.open(name)).keys()) paths.push(new URL(request.url).pathname);
    return paths.sort();
  });

async function waitForModel(): Promise<void> {
  await page.waitForSelector('#status:is([data-state=ready], [data-state=failed])');
  expect(
    await page.getAttribute('#status', 'data-state'),
    (await page.textContent('#status')) ?? undefined,
  ).toBe('ready');
  await page.waitForSelector('#adapters li, #adapters-status:not(:empty)');
  expect(await page.$$('#adapters li'), (await page.textContent('#adapters-status')) ?? '').not.toEqual([]);
}

describe('the demo PWA', () => {
  it('online: cross-origin isolated; the service worker precaches the shell, onnxruntime and the model', async () => {
    await page.goto(`${server.origin}/`);
    await waitForModel();
    expect(await page.evaluate(() => crossOriginIsolated)).toBe(true);
    expect(await page.textContent('#version')).toBe('one');
    expect(await page.getAttribute('#backend', 'data-name')).toBe('wasm');
    expect((await page.textContent('#backend-reason'))?.length).toBeGreaterThan(0);

    await page.waitForSelector('#sw[data-state=ready]');
    expect(await page.evaluate(async () => (await navigator.serviceWorker.ready).active?.state)).toBe(
      'activated',
    );
    const cached = await cachedPaths();
    expect(cached).toEqual(
      expect.arrayContaining([
        '/index.html',
        '/main.js',
        '/worker.js',
        '/ort/ort-wasm-simd-threaded.mjs',
        '/ort/ort-wasm-simd-threaded.wasm',
        '/model/config.json',
        '/model/model.onnx',
        '/model/tokenizer.json',
        '/model/tokenizer_config.json',
        '/model/generation_config.json',
      ]),
    );
    expect(cached.filter((p) => p.startsWith('/adapters'))).toEqual([]);

    const base = await generate();
    expect(base).toBe(await nodeText('base'));
    online.set('base', base);
  });

  it('online: adapters download with progress, are cached in IndexedDB, and change the text as in Node', async () => {
    const manifest = JSON.parse(readFileSync(path.join(out, 'adapters.json'), 'utf8')) as {
      adapters: { id: string; bytes: number }[];
    };
    const bytes = Object.fromEntries(manifest.adapters.map((a) => [a.id, a.bytes]));
    expect(await rowStates()).toEqual({
      shakespeare: 'remote',
      'happy-ending': 'remote',
      'short-answer': 'remote',
      'dog-stories': 'remote',
      seaside: 'remote',
    });
    for (const id of ['dog-stories', 'shakespeare']) {
      expect(await useAdapter(id)).toEqual({
        state: 'active',
        from: 'network',
        progress: bytes[id],
        error: '',
      });
      const text = await generate();
      expect(text).toBe(await nodeText(id));
      expect(text).not.toBe(online.get('base'));
      online.set(id, text);
    }
    expect(await rowStates()).toEqual({
      shakespeare: 'active',
      'happy-ending': 'remote',
      'short-answer': 'remote',
      'dog-stories': 'cached',
      seaside: 'remote',
    });
    // adapters and their manifest live in IndexedDB, not in the service worker's caches
    expect((await cachedPaths()).filter((p) => p.startsWith('/adapters'))).toEqual([]);
  });

  it('offline: a reload loads the shell, the model and the cached adapters, and generates the same text', async () => {
    // The network is gone: the browser is offline and the server is down (the browser's own service
    // worker update check is not covered by setOffline).
    await server.close();
    const responses: Response[] = [];
    const failed: string[] = [];
    page.on('response', (r) => responses.push(r));
    page.on('requestfailed', (r) => failed.push(new URL(r.url()).pathname));
    await browser.context.setOffline(true);
    try {
      await page.reload();
      await waitForModel();
      expect(await page.evaluate(() => crossOriginIsolated)).toBe(true);
      expect(await page.evaluate(() => navigator.serviceWorker.controller !== null)).toBe(true);
      // the last session's adapter is active again, from IndexedDB
      expect(await rowStates()).toEqual({
        shakespeare: 'active',
        'happy-ending': 'remote',
        'short-answer': 'remote',
        'dog-stories': 'cached',
        seaside: 'remote',
      });
      expect(await page.textContent('#adapters-status')).toMatch(
        /restored from the last session: shakespeare/,
      );
      expect(await generate()).toBe(online.get('shakespeare'));

      await page.click('#base');
      await page.waitForFunction(() => !document.querySelector('#adapters li[data-state=active]'));
      expect(await generate()).toBe(online.get('base'));
      expect(await useAdapter('dog-stories')).toMatchObject({ state: 'active', from: 'cache', error: '' });
      expect(await generate()).toBe(online.get('dog-stories'));
      // an adapter never downloaded cannot load: the network is really gone
      const seaside = await useAdapter('seaside');
      expect(seaside.state).toBe('failed');
      expect(seaside.error).toMatch(/^FetchError: .*network error/);

      // what the page and its workers got came from the service worker; what failed is the manifest
      // (the runtime then read its copy in IndexedDB) and the adapter that was never downloaded
      const ok = responses.filter((r) => r.ok());
      expect(ok.map((r) => new URL(r.url()).pathname)).toEqual(
        expect.arrayContaining([
          '/',
          '/main.js',
          '/worker.js',
          '/model/model.onnx',
          '/ort/ort-wasm-simd-threaded.mjs',
          '/ort/ort-wasm-simd-threaded.wasm',
        ]),
      );
      expect(ok.filter((r) => !r.fromServiceWorker()).map((r) => r.url())).toEqual([]);
      expect(failed).toContain('/adapters.json');
      // (and the model folder's tokenizer.bin: the folder has none, and offline the probe fails)
      expect(
        failed.filter(
          (p) =>
            p !== '/adapters.json' && p !== '/model/tokenizer.bin' && !p.startsWith('/adapters/seaside/'),
        ),
      ).toEqual([]);
    } finally {
      page.removeAllListeners('response');
      page.removeAllListeners('requestfailed');
      await browser.context.setOffline(false);
      server = await startDemoServer(out, { port: server.port }); // the same origin, for the next test
    }
  });

  it('a changed build is offered as an update; accepting it activates it and reloads', async () => {
    await buildDemo({ out, version: 'two' });
    await page.reload();
    await page.waitForSelector('#update', { state: 'visible' });
    expect(await page.textContent('#version')).toBe('one'); // still the old version, until accepted
    expect(await page.getAttribute('#sw', 'data-state')).toBe('update-waiting');
    await Promise.all([page.waitForEvent('load'), page.click('#update-accept')]);
    expect(await page.textContent('#version')).toBe('two');
    await waitForModel();
    expect(await page.isVisible('#update')).toBe(false);
    // the cached adapters and the last selection survive the update
    expect(await rowStates()).toEqual({
      shakespeare: 'cached',
      'happy-ending': 'remote',
      'short-answer': 'remote',
      'dog-stories': 'active',
      seaside: 'remote',
    });
  });
});
