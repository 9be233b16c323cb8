/**
 * The demo PWA, driven like a user in headless Chromium: the demo is built (demo/build.ts) into a temp
 * folder and served with COOP/COEP (demo/server.ts). It loads the model in the worker, downloads and
 * switches adapters from the gallery, streams chat replies, logs a thumbs-up and an edit, trains the
 * personal adapter twice ("Train now"), rolls back, exports, blends with sliders, evicts an adapter
 * in the storage panel, then reloads offline. Oracles: Node's Runtime on the same files (the same
 * greedy text for every adapter and blend, the same training losses from the same feedback), the
 * PEFT format (the export parsed by parsePeftAdapter and loaded in Node), Chromium's own PNG decoder
 * and web-manifest parser, and the worker's state read through `window.demo.rt`.
 *
 * It takes the README's screenshots; with UPDATE_SCREENSHOTS=1 it writes them to docs/screenshots/
 * (otherwise to a temp folder, so a test run leaves the tree as it was).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { unzipSync } from 'fflate';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemo } from '../../demo/build.js';
import { LEARNING_RATES, PERSONAL_LORA } from '../../demo/learning.js';
import { startDemoServer, type DemoServer } from '../../demo/server.js';
import { parsePeftAdapter } from '../../src/formats/peft-adapter.js';
import { Runtime, type ActiveSpec } from '../../src/runtime.js';
import { readAdapterBundle } from '../../src/store/bundle.js';
import type { FeedbackEvent } from '../../src/train/feedback.js';
import { launchBrowser, ROOT, type Browser } from './harness.js';

const PROMPT = 'once upon a time';
const TOKENS = 40;
const SHOTS = process.env.UPDATE_SCREENSHOTS
  ? path.join(ROOT, 'docs', 'screenshots')
  : mkdtempSync(path.join(tmpdir(), 'edge-adapters-screenshots-'));

let out: string;
let server: DemoServer;
let browser: Browser;
let page: Page;
/** Node's runtime on the built demo's model and adapters: the oracle for every text. */
let node: Runtime;
let manifestBytes: Record<string, number>;
/** What the page generated, by what was active. */
const texts = new Map<string, string>();
/** The feedback the page logged, and the exported v1 (as PEFT files). */
const feedback: FeedbackEvent[] = [];
let v1Files: { config: Uint8Array; weights: Uint8Array };

beforeAll(async () => {
  out = mkdtempSync(path.join(tmpdir(), 'edge-adapters-demo-ui-'));
  await buildDemo({ out, version: 'demo-test' });
  server = await startDemoServer(out);
  browser = await launchBrowser();
  page = browser.page;
  await page.setViewportSize({ width: 1200, height: 800 });
  node = await Runtime.create({ model: path.join(out, 'model') });
  await node.adapters.add('dog-stories', path.join(out, 'adapters/dog-stories'));
  await node.adapters.add(
    'shakespeare',
    readAdapterBundle(readFileSync(path.join(out, 'adapters/shakespeare.zip')), 'shakespeare'),
  );
  const manifest = JSON.parse(readFileSync(path.join(out, 'adapters.json'), 'utf8')) as {
    adapters: { id: string; bytes: number }[];
  };
  manifestBytes = Object.fromEntries(manifest.adapters.map((a) => [a.id, a.bytes]));
  mkdirSync(SHOTS, { recursive: true });
}, 120_000);

afterAll(async () => {
  await node?.release();
  await browser?.close();
  await server?.close();
  if (out) rmSync(out, { recursive: true, force: true });
});

const failureMessage = () => browser.log.slice(-20).join('\n');

/** Node's greedy continuation of `prompt` with `active` (empty: the base). */
async function nodeText(active: ActiveSpec[], maxTokens = TOKENS, prompt = PROMPT): Promise<string> {
  if (active.length === 0) node.adapters.deactivate();
  else await node.adapters.activate(active);
  return (await node.complete(prompt, { maxTokens })).text;
}

/** The worker's state, through the page's runtime handle. */
const workerActive = () => page.evaluate(() => window.demo!.rt.adapters.active());
const workerCatalog = () => page.evaluate(() => window.demo!.rt.adapters.catalog());

/** Sends a prompt in the chat; the reply streamed in (the number of updates of #output, and its text). */
async function ask(maxTokens = TOKENS, prompt = PROMPT): Promise<{ text: string; updates: number }> {
  await page.fill('#prompt', prompt);
  await page.fill('#max-tokens', String(maxTokens));
  await page.evaluate(() => {
    const w = window as unknown as { updates: number; observer?: MutationObserver };
    w.updates = 0;
    w.observer?.disconnect();
    w.observer = new MutationObserver((records) => {
      for (const r of records) if (r.target instanceof Element && r.target.id === 'output') w.updates++;
    });
    w.observer.observe(document.getElementById('log') as HTMLElement, { subtree: true, childList: true });
  });
  await page.click('#run');
  await page.waitForSelector('#output[data-state=done]');
  expect(await page.getAttribute('#output', 'data-finish'), (await page.textContent('#error')) ?? '').toBe(
    'length',
  );
  return {
    text: (await page.textContent('#output')) ?? '',
    updates: await page.evaluate(() => (window as unknown as { updates: number }).updates),
  };
}

const row = (id: string) => `#adapters li[data-id="${id}"]`;
const rowInfo = (id: string) =>
  page.$eval(row(id), (li) => ({
    state: (li as HTMLElement).dataset.state,
    cache: (li as HTMLElement).dataset.cache,
    added: (li as HTMLElement).dataset.added,
    from: (li as HTMLElement).dataset.from,
    label: li.querySelector('.tag.state')?.textContent,
    progress: (li.querySelector('progress') as HTMLProgressElement).value,
    error: li.querySelector('.error')?.textContent ?? '',
  }));
const rowStates = () =>
  page.$$eval('#adapters li', (rows) =>
    Object.fromEntries(rows.map((li) => [(li as HTMLElement).dataset.id, (li as HTMLElement).dataset.state])),
  );

/**
 * Every value the row's progress bar took while `action` ran (progress.value reflects to its
 * attribute), and whether the row showed the adapter as added at that moment.
 */
async function progressDuring(
  id: string,
  action: () => Promise<void>,
): Promise<{ value: number; added: boolean }[]> {
  await page.$eval(row(id), (li) => {
    const bar = li.querySelector('progress') as HTMLProgressElement;
    const seen: { value: number; added: boolean }[] = [];
    (window as unknown as { progressSeen: typeof seen }).progressSeen = seen;
    new MutationObserver(() =>
      seen.push({ value: bar.value, added: (li as HTMLElement).dataset.added === 'true' }),
    ).observe(bar, { attributes: true, attributeFilter: ['value'] });
  });
  await action();
  return page.evaluate(
    () => (window as unknown as { progressSeen: { value: number; added: boolean }[] }).progressSeen,
  );
}

async function waitForModel(): Promise<void> {
  await page.waitForSelector('#status:is([data-state=ready], [data-state=failed])');
  expect(
    await page.getAttribute('#status', 'data-state'),
    `${await page.textContent('#status')}\n${failureMessage()}`,
  ).toBe('ready');
  await page.waitForSelector('#adapters li');
}

/** Runs "Train now"; returns the plotted losses once the run is done. */
async function trainNow(method: 'sft' | 'kto' | 'dpo', steps: number): Promise<number[]> {
  await page.selectOption('#train-method', method);
  await page.fill('#train-steps', String(steps));
  await page.click('#train-run');
  await page.waitForSelector('#train-status:is([data-state=done], [data-state=failed])', { timeout: 60_000 });
  expect(
    await page.getAttribute('#train-status', 'data-state'),
    (await page.textContent('#train-status')) ?? '',
  ).toBe('done');
  const losses = (await page.getAttribute('#loss-plot', 'data-losses')) ?? '';
  return losses.split(',').map(Number);
}

const versions = () =>
  page.$$eval('#versions li', (items) =>
    items.map((li) => ({
      version: Number((li as HTMLElement).dataset.version),
      current: (li as HTMLElement).dataset.current === 'true',
    })),
  );

/** A screenshot for the README: a panel, or the top of the page (status bar, chat, gallery). */
async function shoot(name: string, selector?: string): Promise<void> {
  const file = path.join(SHOTS, name);
  await page.evaluate(() => (document.activeElement as HTMLElement | null)?.blur());
  if (selector) await page.locator(selector).screenshot({ path: file, animations: 'disabled' });
  else
    await page.screenshot({
      path: file,
      animations: 'disabled',
      clip: { x: 0, y: 0, width: 1200, height: 620 },
    });
}

describe('the demo PWA, end to end', () => {
  it('starts: the model loads in the worker; status bar, service worker, an installable web manifest', async () => {
    await page.goto(`${server.origin}/`);
    await waitForModel();
    expect(await page.getAttribute('#backend', 'data-name')).toBe('wasm');
    expect((await page.getAttribute('#backend', 'title'))?.length).toBeGreaterThan(0);
    expect(await page.getAttribute('#network', 'data-state')).toBe('online');
    await page.waitForSelector('#sw[data-state=ready]');
    expect(await rowStates()).toEqual({
      shakespeare: 'remote',
      'happy-ending': 'remote',
      'short-answer': 'remote',
      'dog-stories': 'remote',
      seaside: 'remote',
    });
    expect(await page.getAttribute('#feedback-count', 'data-count')).toBe('0');
    expect(await page.$$('#versions li')).toEqual([]);

    // Chromium's own manifest parser: no errors, the PNG icons listed, and nothing keeps the app
    // from being installed.
    const cdp = await browser.context.newCDPSession(page);
    const manifest = (await cdp.send('Page.getAppManifest')) as {
      errors: { message: string }[];
      data?: string;
    };
    expect(manifest.errors).toEqual([]);
    const icons = (
      JSON.parse(manifest.data ?? '{}') as { icons: { src: string; sizes: string; purpose?: string }[] }
    ).icons;
    expect(icons.map((i) => [i.src, i.sizes, i.purpose ?? 'any'])).toEqual(
      expect.arrayContaining([
        ['icon-192.png', '192x192', 'any'],
        ['icon-512.png', '512x512', 'any'],
        ['icon-maskable-512.png', '512x512', 'maskable'],
      ]),
    );
    const installability = (await cdp.send('Page.getInstallabilityErrors')) as {
      installabilityErrors: { errorId: string }[];
    };
    expect(installability.installabilityErrors).toEqual([]);
    await cdp.detach();
    // Chromium's PNG decoder reads the icons demo/png.ts wrote: their size, a transparent corner on
    // the rounded icon, an opaque one on the maskable icon, white in the middle of the glyph's stem.
    const decoded = await page.evaluate(async () => {
      const pixels: Record<string, { width: number; height: number; corner: number[]; stem: number[] }> = {};
      for (const name of ['icon-192.png', 'icon-512.png', 'icon-maskable-512.png']) {
        const bitmap = await createImageBitmap(await (await fetch(name)).blob());
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
        const ctx = canvas.getContext('2d') as OffscreenCanvasRenderingContext2D;
        ctx.drawImage(bitmap, 0, 0);
        const at = (x: number, y: number) => Array.from(ctx.getImageData(x, y, 1, 1).data);
        const s = bitmap.width / 64;
        pixels[name] = {
          width: bitmap.width,
          height: bitmap.height,
          corner: at(0, 0),
          stem: at(Math.floor(21 * s), Math.floor(32 * s)),
        };
      }
      return pixels;
    });
    expect(decoded['icon-192.png']).toMatchObject({ width: 192, height: 192, stem: [255, 255, 255, 255] });
    expect(decoded['icon-512.png']).toMatchObject({ width: 512, height: 512, stem: [255, 255, 255, 255] });
    expect(decoded['icon-512.png'].corner[3]).toBe(0);
    expect(decoded['icon-maskable-512.png'].corner).toEqual([0x22, 0xaa, 0x77, 255]);
  });

  it('gallery: downloads with progress, the cache state follows, and switching adapters changes the text as in Node', async () => {
    const base = await ask();
    expect(base.text).toBe(await nodeText([]));
    expect(base.updates).toBeGreaterThan(1); // streamed, token by token
    texts.set('base', base.text);
    expect(Number(await page.getAttribute('#speed', 'data-tokens-per-second'))).toBeGreaterThan(0);

    // Download (no activation): progress up to the manifest's size, then cached in IndexedDB.
    const seen = await progressDuring('shakespeare', async () => {
      await page.click(`${row('shakespeare')} button.install`);
      await page.waitForSelector(`${row('shakespeare')}[data-added=true]`);
    });
    // progress events while the download ran (the row not yet added), rising to the manifest's size
    const during = seen.filter((p) => !p.added).map((p) => p.value);
    expect(during.length).toBeGreaterThan(0);
    expect(during.at(-1)).toBe(manifestBytes['shakespeare']);
    expect(during).toEqual([...during].sort((a, b) => a - b));
    expect(seen.at(-1)?.value).toBe(manifestBytes['shakespeare']);
    expect(await rowInfo('shakespeare')).toMatchObject({
      state: 'cached',
      cache: 'cached',
      added: 'true',
      from: 'network',
      label: 'added',
      progress: manifestBytes['shakespeare'],
      error: '',
    });
    expect((await workerCatalog()).find((e) => e.id === 'shakespeare')).toMatchObject({
      cached: true,
      added: true,
      active: false,
    });

    await page.click(`${row('shakespeare')} button.use`);
    await page.waitForSelector(`${row('shakespeare')}[data-state=active]`);
    expect(await workerActive()).toEqual([{ id: 'shakespeare' }]);
    const lora = await ask();
    expect(lora.text).toBe(await nodeText([{ id: 'shakespeare' }]));
    expect(lora.text).not.toBe(base.text);
    texts.set('shakespeare', lora.text);

    // "Use" on an adapter not downloaded yet: downloaded, cached, active; the other one stays added.
    await page.click(`${row('dog-stories')} button.use`);
    await page.waitForSelector(`${row('dog-stories')}[data-state=active]`);
    expect(await rowStates()).toEqual({
      shakespeare: 'cached',
      'happy-ending': 'remote',
      'short-answer': 'remote',
      'dog-stories': 'active',
      seaside: 'remote',
    });
    expect(await rowInfo('dog-stories')).toMatchObject({ cache: 'cached', from: 'network', label: 'active' });
    const dogs = await ask();
    expect(dogs.text).toBe(await nodeText([{ id: 'dog-stories' }]));
    expect(dogs.text).not.toBe(base.text);
    expect(dogs.text).not.toBe(lora.text);
    texts.set('dog-stories', dogs.text);

    // Stop, clicked as the first token shows: the worker stops between tokens; what came is the start
    // of the full greedy reply.
    await page.fill('#max-tokens', '400');
    await page.evaluate(
      () =>
        new Promise<void>((resolve) => {
          const log = document.getElementById('log') as HTMLElement;
          const observer = new MutationObserver(() => {
            if (!document.getElementById('output')?.textContent) return;
            observer.disconnect();
            (document.getElementById('stop') as HTMLButtonElement).click();
            resolve();
          });
          observer.observe(log, { subtree: true, childList: true, characterData: true });
          (document.getElementById('run') as HTMLButtonElement).click();
        }),
    );
    await page.waitForSelector('#output[data-state=done]');
    expect(await page.getAttribute('#output', 'data-finish')).toBe('aborted');
    const partial = (await page.textContent('#output')) ?? '';
    const full = await nodeText([{ id: 'dog-stories' }], 400);
    expect(partial.length).toBeGreaterThan(0);
    expect(partial.length).toBeLessThan(full.length);
    expect(full.startsWith(partial)).toBe(true);

    await page.locator('#log').evaluate((log) => (log.scrollTop = 0));
    await shoot('chat-and-gallery.png');
  });

  it('learning: a thumbs-up and an edit are logged; "Train now" plots the loss and makes v1, as Node trains it', async () => {
    // thumbs up on the dog-stories reply (the third turn), an edit of the base reply (the first)
    const turn = (n: number) => `#log li.turn:nth-child(${n}) .assistant`;
    await page.click(`${turn(3)} button.up`);
    await page.waitForSelector(`${turn(3)}[data-rating="1"]`);
    await page.waitForSelector('#feedback-count[data-count="1"]');
    const base = texts.get('base') as string;
    const correction = base.includes('Lily') ? base.replaceAll('Lily', 'Tom') : `${base} The end.`;
    await page.click(`${turn(1)} button.edit`);
    await page.fill(`${turn(1)} textarea.correction`, correction);
    await page.click(`${turn(1)} button.save`);
    await page.waitForSelector(`${turn(1)}[data-corrected=true]`);
    await page.waitForSelector('#feedback-count[data-count="2"]');
    feedback.push(
      { prompt: PROMPT, completion: texts.get('dog-stories') as string, rating: 1 },
      { prompt: PROMPT, completion: base, correction },
    );
    const logged = await page.evaluate(async () =>
      (await window.demo!.rt.personal.feedbackLog()).map((s) => s.event),
    );
    expect(logged).toEqual(feedback);

    const losses = await trainNow('sft', 3);
    expect(await page.getAttribute('#loss-plot', 'data-points')).toBe('3');
    expect(await page.$$eval('#loss-plot polyline', (l) => l.length)).toBe(1);
    expect(await versions()).toEqual([{ version: 1, current: true }]);
    expect(await workerActive()).toEqual([{ id: 'personal' }]); // a new version is active alone
    expect(await page.getAttribute('#personal-status', 'data-active')).toBe('true');

    // Node, from the same feedback with the same recipe: the same losses, the same greedy text.
    const trainer = await Runtime.create({
      model: path.join(out, 'model'),
      personal: { lora: PERSONAL_LORA },
    });
    try {
      for (const e of feedback) await trainer.feedback(e);
      const report = await trainer.train({ method: 'sft', steps: 3, lr: LEARNING_RATES.sft });
      expect(losses).toHaveLength(3);
      for (let i = 0; i < 3; i++) expect(Math.abs(losses[i] - report.losses[i])).toBeLessThan(1e-5);
      const personal = await ask();
      expect(personal.text).toBe((await trainer.complete(PROMPT, { maxTokens: TOKENS })).text);
      texts.set('v1', personal.text);
    } finally {
      await trainer.release();
    }
    await shoot('learning.png', '#learning');
  });

  it('versions: a DPO run makes v2; rollback makes v1 current again; export downloads v1 as PEFT files', async () => {
    const dpo = await trainNow('dpo', 2);
    expect(dpo).toHaveLength(2);
    expect(Math.abs(dpo[0] - Math.LN2)).toBeLessThan(1e-5); // DPO starts at ln 2: the policy is its reference
    expect(await versions()).toEqual([
      { version: 2, current: true },
      { version: 1, current: false },
    ]);

    await page.click('#versions li[data-version="1"] button.rollback');
    await page.waitForSelector('#versions li[data-version="1"][data-current=true]');
    expect((await page.evaluate(() => window.demo!.rt.personal.current()))?.version).toBe(1);
    expect((await ask()).text).toBe(texts.get('v1'));

    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
    expect(download.suggestedFilename()).toBe('personal-v1.zip');
    const zip = unzipSync(readFileSync(await download.path()));
    expect(Object.keys(zip).sort()).toEqual([
      'personal-v1/adapter_config.json',
      'personal-v1/adapter_model.safetensors',
    ]);
    v1Files = {
      config: zip['personal-v1/adapter_config.json'],
      weights: zip['personal-v1/adapter_model.safetensors'],
    };
    const adapter = parsePeftAdapter(v1Files, 'personal-v1');
    expect(adapter.config).toMatchObject({ peft_type: 'LORA', r: PERSONAL_LORA.rank });
    // the exported files, loaded in Node, write what the page wrote with v1
    await node.adapters.add('personal', v1Files);
    expect(await nodeText([{ id: 'personal' }])).toBe(texts.get('v1'));
  });

  it("blend: sliders for the LoRA adapters; the worker's active set is the sliders' and the text is Node's blend", async () => {
    expect(
      await page.$$eval('#blend li', (items) => items.map((li) => (li as HTMLElement).dataset.id)),
    ).toEqual(['personal', 'shakespeare']);
    const weights = { personal: 1.5, shakespeare: 0.5 }; // the panel's order
    for (const [id, weight] of Object.entries(weights)) {
      await page.check(`#blend li[data-id="${id}"] input[type=checkbox]`);
      await page.fill(`#blend li[data-id="${id}"] input[type=range]`, String(weight));
    }
    await page.click('#blend-apply');
    const blend = Object.entries(weights).map(([id, weight]) => ({ id, weight }));
    await page.waitForFunction(
      async (expected) => JSON.stringify(await window.demo!.rt.adapters.active()) === expected,
      JSON.stringify(blend),
    );
    expect(await workerActive()).toEqual(blend);
    await page.waitForSelector(`${row('shakespeare')}[data-state=active]`);
    expect((await rowInfo('shakespeare')).label).toBe('active · weight 0.5 in a blend');
    expect(await page.getAttribute('#personal-status', 'data-active')).toBe('true');
    const blended = await ask();
    expect(blended.text).toBe(await nodeText(blend));
    expect(blended.text).not.toBe(texts.get('shakespeare'));
    expect(blended.text).not.toBe(texts.get('v1'));
    texts.set('blend', blended.text);
  });

  it('storage: the cached adapters with their sizes; evicting one lowers the usage', async () => {
    const before = await page.evaluate(() => window.demo!.rt.adapters.usage());
    await page.waitForSelector(`#usage[data-entries="${before.entries}"]`);
    expect(before.entries).toBe(2);
    expect(Number(await page.getAttribute('#usage', 'data-bytes'))).toBe(before.bytes);
    expect(
      new Map(
        await page.$$eval('#cached li', (items) =>
          items.map(
            (li) => [(li as HTMLElement).dataset.id, Number((li as HTMLElement).dataset.bytes)] as const,
          ),
        ),
      ),
    ).toEqual(
      new Map([
        ['dog-stories', manifestBytes['dog-stories']],
        ['shakespeare', manifestBytes['shakespeare']],
      ]),
    );
    expect(await page.textContent('#personal-storage')).toMatch(/2 versions.*feedback log: 2 events/);
    await shoot('storage.png', '#storage');

    await page.click('#cached li[data-id="dog-stories"] button.evict');
    await page.waitForSelector(`#usage[data-entries="${before.entries - 1}"]`);
    const after = await page.evaluate(() => window.demo!.rt.adapters.usage());
    expect(after.entries).toBe(before.entries - 1);
    expect(after.bytes).toBeLessThan(before.bytes);
    expect(Number(await page.getAttribute('#usage', 'data-bytes'))).toBe(after.bytes);
    await page.waitForSelector(`${row('dog-stories')}[data-state=remote]`);
    expect(await rowInfo('dog-stories')).toMatchObject({
      cache: 'not-cached',
      added: 'false',
      label: 'not cached',
    });
    expect((await workerCatalog()).find((e) => e.id === 'dog-stories')).toMatchObject({
      cached: false,
      added: false,
    });
    expect(await workerActive()).toEqual([
      { id: 'personal', weight: 1.5 },
      { id: 'shakespeare', weight: 0.5 },
    ]); // the blend did not hold it
  });

  it('offline: the page comes back from the service worker with the cached adapter, the blend and the personal versions', async () => {
    await server.close();
    await browser.context.setOffline(true);
    try {
      await page.reload();
      await waitForModel();
      expect(await page.evaluate(() => navigator.serviceWorker.controller !== null)).toBe(true);
      expect(await page.getAttribute('#network', 'data-state')).toBe('offline');
      expect(await page.textContent('#network')).toBe('offline');
      expect(await rowStates()).toEqual({
        shakespeare: 'active',
        'happy-ending': 'remote',
        'short-answer': 'remote',
        'dog-stories': 'remote',
        seaside: 'remote',
      });
      expect(await rowInfo('shakespeare')).toMatchObject({ cache: 'cached', added: 'true' });
      expect(await workerActive()).toEqual([
        { id: 'personal', weight: 1.5 },
        { id: 'shakespeare', weight: 0.5 },
      ]);
      await page.waitForSelector('#versions li');
      expect(await versions()).toEqual([
        { version: 2, current: false },
        { version: 1, current: true },
      ]);
      await page.waitForSelector('#feedback-count[data-count="2"]');
      await page.waitForSelector('#usage[data-entries="1"]');
      expect((await ask()).text).toBe(texts.get('blend'));
      await shoot('offline.png');
    } finally {
      await browser.context.setOffline(false);
    }
  }, 60_000);
});
