/**
 * The adapter store wired into the runtime worker, in headless Chromium with its real IndexedDB:
 * adapters installed from a manifest (adapters.json), cached, verified, evicted, and the active
 * selection restored by a new worker. Oracles: Node's Runtime on the same model and adapter files
 * (greedy text), sha256 from node:crypto, the model fingerprint computed in Node, and the IndexedDB
 * records read on the page without the library.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from '../fixtures.js';
import { main } from '../../src/cli.js';
import { Runtime, type ActiveSpec } from '../../src/runtime.js';
import { writeAdapterBundle } from '../../src/store/bundle.js';
import { modelFingerprint } from '../../src/store/manifest.js';
import { makeIa3Adapter, makeLoraAdapter, type AdapterFiles } from '../helpers/peft-fixtures.js';
import { launchBrowser, mountTmpfs, openTestPage, startHarness, type Harness } from './harness.js';
import type { Installed, RawRecord } from './store-page.js';

const PROMPT = 'Once upon a time';
const TOKENS = 40;
const DB = 'edge-adapters';
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const CONFIG = 'adapter_config.json';
const WEIGHTS = 'adapter_model.safetensors';

const ADAPTERS: Record<string, AdapterFiles> = {
  lora: makeLoraAdapter({ seed: 3, scale: 0.1 }),
  dora: makeLoraAdapter({ dora: true, seed: 7 }),
  ia3: makeIa3Adapter({ seed: 5 }),
};
/** lora and dora are zip bundles; ia3 a PEFT folder. */
const ZIPS = { lora: writeAdapterBundle(ADAPTERS.lora), dora: writeAdapterBundle(ADAPTERS.dora) };
/** A LoRA of rank 160 (3.7 MB) for the quota test, listed under several ids. */
const BIG = writeAdapterBundle(makeLoraAdapter({ r: 160, seed: 11, scale: 0.01 }), { level: 0 });
const BIG_IDS = Array.from({ length: 12 }, (_, i) => `big-${i}`);

let h: Harness;
let node: Runtime;
let fingerprint: string;
const manifest: Record<string, { url: string; sha256: string; bytes: number; config_sha256?: string }> = {};

beforeAll(async () => {
  h = await startHarness(
    async (work) => {
      const modelDir = path.join(work, 'model');
      await main(
        [
          'convert',
          'llama2c',
          fixture('llama2c/stories260K.bin'),
          fixture('llama2c/tok512.bin'),
          '--out',
          modelDir,
        ],
        () => undefined,
      );
      const config = JSON.parse(readFileSync(path.join(modelDir, 'config.json'), 'utf8')) as object;
      fingerprint = await modelFingerprint(config);
      const other = await modelFingerprint({ ...config, num_hidden_layers: 6 });
      mkdirSync(path.join(work, 'adapters', 'ia3'), { recursive: true });
      for (const [id, zip] of Object.entries(ZIPS)) {
        writeFileSync(path.join(work, 'adapters', `${id}.zip`), zip);
        manifest[id] = { url: `adapters/${id}.zip`, sha256: sha256(zip), bytes: zip.length };
      }
      for (const [name, bytes] of ADAPTERS.ia3)
        writeFileSync(path.join(work, 'adapters', 'ia3', name), bytes);
      const ia3 = ADAPTERS.ia3;
      manifest.ia3 = {
        url: 'adapters/ia3/',
        sha256: sha256(ia3.get(WEIGHTS) as Uint8Array),
        bytes: (ia3.get(WEIGHTS) as Uint8Array).length,
        config_sha256: sha256(ia3.get(CONFIG) as Uint8Array),
      };
      writeFileSync(path.join(work, 'adapters', 'foreign.zip'), ZIPS.lora);
      writeFileSync(path.join(work, 'adapters', 'big.zip'), BIG);
      const entry = (id: string, base = fingerprint) => ({
        id,
        version: 1,
        method: id === 'ia3' ? 'IA3' : 'LORA',
        base,
        format: manifest[id]?.config_sha256 ? 'peft-folder' : 'zip',
        ...manifest[id],
      });
      const big = { url: 'adapters/big.zip', sha256: sha256(BIG), bytes: BIG.length };
      writeFileSync(
        path.join(work, 'adapters.json'),
        JSON.stringify({
          version: 1,
          base: { fingerprint, name: 'stories260K' },
          adapters: [
            entry('lora'),
            entry('dora'),
            entry('ia3'),
            { ...entry('lora', other), id: 'foreign', url: 'adapters/foreign.zip' },
            ...BIG_IDS.map((id) => ({ ...entry(id), ...big })),
          ],
        }),
      );
    },
    { page: 'test/browser/store-page.ts' },
  );
  node = await Runtime.create({ model: path.join(h.work, 'model') });
  for (const [id, files] of Object.entries(ADAPTERS))
    await node.adapters.add(id, {
      config: files.get(CONFIG) as Uint8Array,
      weights: files.get(WEIGHTS) as Uint8Array,
    });
}, 120_000);

afterAll(async () => {
  await node?.release();
  await h?.close();
});

/** Node's greedy text with `spec` active ('base': none). */
const nodeTexts = new Map<string, string>();
async function nodeText(spec: string | ActiveSpec[]): Promise<string> {
  const key = JSON.stringify(spec);
  if (!nodeTexts.has(key)) {
    if (spec === 'base') node.adapters.deactivate();
    else await node.adapters.activate(spec);
    nodeTexts.set(key, (await node.complete(PROMPT, { maxTokens: TOKENS })).text);
  }
  return nodeTexts.get(key) as string;
}

const generate = (key: string) =>
  h.page.evaluate(([k, p, n]) => window.edge.generate(k, p, { maxTokens: n }), [
    key,
    PROMPT,
    TOKENS,
  ] as const);

/** The adapter store's records in the real IndexedDB: index records by id, bytes by id. */
async function idb(page = h.page) {
  const records = await page.evaluate(([db]) => window.store.idbRecords(db, 'adapters'), [DB] as const);
  const meta = new Map<string, { sha256: string; bytes: number; source: string }>();
  const data = new Map<string, { sha256: string; length: number; keySha: string }>();
  for (const r of records as RawRecord[]) {
    const [kind, id, keySha] = r.key as string[];
    if (kind === 'meta') meta.set(id, r.value as { sha256: string; bytes: number; source: string });
    else if (kind === 'data' && r.bytes) data.set(id, { ...r.bytes, keySha });
    else throw new Error(`unexpected record ${JSON.stringify(r.key)}`);
  }
  return { meta, data };
}

/** Every index record has its bytes and every byte record its index, the bytes hashing to the recorded sha256. */
function expectConsistent({ meta, data }: Awaited<ReturnType<typeof idb>>): void {
  expect([...data.keys()].sort()).toEqual([...meta.keys()].sort());
  for (const [id, m] of meta) {
    const d = data.get(id);
    expect(d, id).toEqual({ sha256: m.sha256, length: m.bytes, keySha: m.sha256 });
  }
}

describe('adapters from a manifest, cached in IndexedDB, in the worker', () => {
  it('three adapters install with progress, switch in any order, and give Node’s greedy text', async () => {
    const loaded = await h.page.evaluate(() =>
      window.store.load('a', { model: '/served/model/', backend: 'wasm', manifest: '/served/adapters.json' }),
    );
    expect(loaded.baseFingerprint).toBe(fingerprint);
    expect(loaded.restored).toEqual({ active: [] });
    expect(loaded.persisted).toBe(loaded.persistedNow); // navigator.storage.persist() was asked

    const before = await h.page.evaluate(() => window.store.catalog('a'));
    expect(before.map((e) => [e.id, e.compatible, e.cached, e.added]).slice(0, 4)).toEqual([
      ['lora', true, false, false],
      ['dora', true, false, false],
      ['ia3', true, false, false],
      ['foreign', false, false, false],
    ]);

    for (const id of ['lora', 'dora', 'ia3']) {
      const { installed, progress, failure } = await h.page.evaluate(
        ([id]) => window.store.install('a', id),
        [id] as const,
      );
      expect(failure, id).toBeUndefined();
      expect(installed).toMatchObject({ id, from: 'network', active: false });
      // progress: monotonic, to the adapter's whole size (a folder: both files)
      const m = manifest[id];
      const config = ADAPTERS[id].get(CONFIG) as Uint8Array;
      const total = m.config_sha256 ? config.length + m.bytes : m.bytes;
      for (let i = 1; i < progress.length; i++)
        expect(progress[i].loaded).toBeGreaterThanOrEqual(progress[i - 1].loaded);
      expect(progress.every((p) => p.total === total)).toBe(true);
      expect(progress.at(-1)?.loaded).toBe(total);
    }

    const stored = await idb();
    expectConsistent(stored);
    expect([...stored.meta.keys()].sort()).toEqual(['dora', 'ia3', 'lora']);
    expect(stored.meta.get('lora')).toMatchObject({
      sha256: manifest.lora.sha256,
      source: manifest.lora.sha256,
    });
    expect(stored.meta.get('ia3')?.source).toBe(`${manifest.ia3.sha256}+${manifest.ia3.config_sha256}`);
    const after = await h.page.evaluate(() => window.store.catalog('a'));
    expect(after.slice(0, 3).map((e) => [e.id, e.cached, e.added])).toEqual([
      ['lora', true, true],
      ['dora', true, true],
      ['ia3', true, true],
    ]);

    const texts = new Set<string>();
    for (const id of ['lora', 'ia3', 'base', 'dora', 'base', 'ia3', 'lora']) {
      if (id === 'base') await h.page.evaluate(() => window.edge.deactivate('a'));
      else await h.page.evaluate(([id]) => window.edge.activate('a', id), [id] as const);
      const out = await generate('a');
      expect(out.text, id).toBe(await nodeText(id === 'base' ? 'base' : [{ id }]));
      texts.add(out.text);
    }
    expect(texts.size).toBe(4); // each adapter changes the base's greedy text, differently
  });

  it('an adapter for another base is refused before it is downloaded', async () => {
    const before = h.server.requests.length;
    const { failure } = await h.page.evaluate(() => window.store.install('a', 'foreign'));
    expect(failure).toMatchObject({
      name: 'IncompatibleAdapterError',
      classes: ['EdgeAdaptersError', 'IncompatibleAdapterError'],
      file: 'foreign',
      field: 'base',
    });
    expect(failure?.message).toContain(fingerprint);
    expect(h.server.requests.slice(before)).not.toContain('/served/adapters/foreign.zip');
    expect((await idb()).meta.has('foreign')).toBe(false);
  });

  it('a corrupted IndexedDB entry is caught by its sha256 and fetched again; offline it is a FetchError', async () => {
    await h.page.evaluate(() => window.edge.deactivate('a'));
    await h.page.evaluate(() => window.edge.remove('a', 'lora')); // from memory: the next install reads IndexedDB
    const tampered = await h.page.evaluate(([db]) => window.store.idbTamper(db, 'lora', 100), [DB] as const);
    const flipped = ZIPS.lora.slice();
    flipped[100] ^= 0xff;
    expect(tampered).toBe(sha256(flipped));

    const before = h.server.requests.length;
    const { installed } = await h.page.evaluate(() => window.store.install('a', 'lora'));
    expect(installed).toMatchObject({
      from: 'network',
      corrupt: { id: 'lora', sha256: manifest.lora.sha256, actual: tampered, bytes: ZIPS.lora.length },
    });
    expect(h.server.requests.slice(before)).toEqual(['/served/adapters/lora.zip']);
    const repaired = await idb();
    expectConsistent(repaired);
    expect(repaired.data.get('lora')?.sha256).toBe(manifest.lora.sha256);
    await h.page.evaluate(() => window.edge.activate('a', 'lora'));
    expect((await generate('a')).text).toBe(await nodeText([{ id: 'lora' }]));

    // Offline: an intact entry comes from IndexedDB; a corrupted one is a typed error, and is gone.
    await h.page.evaluate(() => window.edge.deactivate('a'));
    for (const id of ['lora', 'dora'])
      await h.page.evaluate(([id]) => window.edge.remove('a', id), [id] as const);
    await h.page.evaluate(([db]) => window.store.idbTamper(db, 'lora', 7), [DB] as const);
    await h.context.route('**/served/adapters/**', (route) => route.abort('internetdisconnected'));
    try {
      const dora = await h.page.evaluate(() => window.store.install('a', 'dora'));
      expect(dora.installed).toMatchObject({ id: 'dora', from: 'cache' });
      expect(dora.progress).toEqual([{ loaded: manifest.dora.bytes, total: manifest.dora.bytes }]);
      const { failure } = await h.page.evaluate(() => window.store.install('a', 'lora'));
      expect(failure).toMatchObject({ name: 'FetchError', classes: ['EdgeAdaptersError', 'FetchError'] });
      expect(failure?.file).toMatch(/^lora <http:.*\/served\/adapters\/lora\.zip>$/);
      expect(failure?.message).toMatch(
        /network error.*the cached copy failed its sha256 check and was removed/,
      );
    } finally {
      await h.context.unroute('**/served/adapters/**');
    }
    const after = await idb();
    expectConsistent(after);
    expect([...after.meta.keys()].sort()).toEqual(['dora', 'ia3']);
    const catalog = await h.page.evaluate(() => window.store.catalog('a'));
    expect(catalog.find((e) => e.id === 'lora')).toMatchObject({ cached: false, added: false });
    expect((await h.page.evaluate(() => window.store.install('a', 'lora'))).installed?.from).toBe('network');
  });

  it('a worker killed mid-generation is a WorkerError; the restarted runtime has the same adapters active', async () => {
    const blend = [
      { id: 'dora', weight: 0.7 },
      { id: 'lora', weight: 0.5 },
    ];
    await h.page.evaluate(([spec]) => window.edge.activate('a', spec), [blend] as const);
    const before = await generate('a');
    expect(before.text).toBe(await nodeText(blend));

    await h.page.evaluate((p) => window.edge.startGenerating('a', 'killed', p, 400, 3), PROMPT);
    const workers = h.page.workers();
    expect(workers.length).toBe(1);
    // The worker closes itself: no 'error' event reaches the page, only the Web Lock it held is freed.
    await workers[0].evaluate(() => self.close()).catch(() => undefined);
    const outcome = await h.page.evaluate(() => window.edge.outcome('killed'));
    expect(outcome.chunks).toBeGreaterThanOrEqual(3);
    expect(outcome.chunks).toBeLessThan(400);
    expect(outcome.failure).toMatchObject({ name: 'WorkerError', classes: ['WorkerError'] });
    expect(outcome.failure?.message).toMatch(/stopped \(it closed or was killed\)/);

    const requests = h.server.requests.length;
    const restarted = await h.page.evaluate(() => window.store.restart('a', 'b'));
    expect(restarted.restored).toEqual({ active: blend });
    expect(h.server.requests.slice(requests).filter((r) => r.startsWith('/served/adapters/'))).toEqual([]);
    const list = await h.page.evaluate(() => window.edge.list('b'));
    expect(list.filter((a) => a.active).map((a) => [a.id, a.weight])).toEqual([
      ['dora', 0.7],
      ['lora', 0.5],
    ]);
    expect((await generate('b')).text).toBe(before.text);
    await h.page.evaluate(() => window.edge.release('b'));
  });

  it('the page handles input between streamed tokens while the worker loads and generates', async () => {
    const since = await h.page.evaluate(() => window.edge.now());
    const maxTokens = 300;
    await h.page.evaluate(
      ([n]) =>
        window.store.startObserved(
          'busy',
          { model: '/served/model/', backend: 'wasm' },
          'Once upon a time',
          n,
        ),
      [maxTokens] as const,
    );
    for (let i = 0; (await h.page.evaluate(() => window.store.phase())) !== 'done'; i++)
      await h.page.mouse.move(10 + (i % 100), 10 + (i % 7)); // resolves once the page handled it
    const { out, handled, phaseStart } = await h.page.evaluate(() => window.store.observed());
    const tasks = await h.page.evaluate((t) => window.edge.longTasks(t), since);
    const during = (phase: string) => handled.filter((e) => e.phase === phase);
    const row = (phase: string, end: string) => {
      const inPhase = tasks.filter((t) => t.start >= phaseStart[phase] && t.start < phaseStart[end]);
      return {
        ms: Math.round(phaseStart[end] - phaseStart[phase]),
        'input events handled': during(phase).length,
        'long tasks': inPhase.length,
        'longest task ms': Math.round(Math.max(0, ...inPhase.map((t) => t.duration))),
      };
    };
    console.table({
      'model load': row('load', 'generate'),
      [`${maxTokens} tokens`]: row('generate', 'done'),
    });
    expect(out.tokens.length).toBe(maxTokens);
    // Handled while the model loaded, and between the first and the last streamed token, in order.
    expect(during('load').length).toBeGreaterThan(0);
    const midStream = during('generate').filter((e) => e.received > 0 && e.received < maxTokens);
    expect(midStream.length).toBeGreaterThan(0);
    const counts = during('generate').map((e) => e.received);
    expect(counts).toEqual([...counts].sort((a, b) => a - b));
    // onnxruntime's wasm was fetched by the worker, never by the page: the compute is not on the page.
    const pageOrt = await h.page.evaluate(
      () => performance.getEntriesByType('resource').filter((e) => /ort-wasm/.test(e.name)).length,
    );
    expect(pageOrt).toBe(0);
    await h.page.evaluate(() => window.edge.release('busy'));
  });
});

describe('a real storage quota (Chromium profile on a small tmpfs)', () => {
  /**
   * Chromium's reported quota ignores how small the disk is (it says ~1 GB), but IndexedDB writes fail
   * with a real QuotaExceededError once the 40 MB tmpfs fills up. The store's budget (512 MiB) is far
   * away: every eviction here is the store answering the browser's refusal.
   */
  it('a full disk forces LRU eviction and leaves nothing half-written', async () => {
    const disk = mountTmpfs('40m');
    const browser = await launchBrowser(path.join(disk.dir, 'profile'));
    try {
      const page = browser.page;
      await openTestPage(page, h.origin);
      await page.evaluate(() =>
        window.store.load('q', {
          model: '/served/model/',
          backend: 'wasm',
          manifest: '/served/adapters.json',
        }),
      );
      const installs: Installed[] = [];
      for (const id of BIG_IDS) {
        const { installed, failure } = await page.evaluate(([id]) => window.store.install('q', id), [
          id,
        ] as const);
        expect(failure, id).toBeUndefined();
        installs.push(installed as Installed);
        await page.evaluate(([id]) => window.edge.remove('q', id), [id] as const); // keep the worker small
        if (installed?.evicted) break;
      }
      const last = installs.at(-1) as Installed;
      const n = installs.length;
      expect(n).toBeGreaterThan(1);
      expect(last).toMatchObject({ id: BIG_IDS[n - 1], from: 'network' });
      expect(last.cacheError).toBeUndefined(); // it was stored after the evictions
      // the least recently used went first, for the browser's quota, and only as many as needed
      const victims = last.evicted ?? [];
      expect(victims.map((v) => v.id)).toEqual(BIG_IDS.slice(0, victims.length));
      expect(victims.every((v) => v.reason === 'quota' && v.bytes === BIG.length)).toBe(true);
      expect(installs.slice(0, -1).every((i) => i.evicted === undefined && i.cacheError === undefined)).toBe(
        true,
      );

      const stored = await idb(page);
      expectConsistent(stored);
      const kept = BIG_IDS.slice(victims.length, n);
      expect([...stored.meta.keys()].sort()).toEqual([...kept].sort());
      for (const id of kept) expect(stored.data.get(id)?.sha256).toBe(sha256(BIG));
      const catalog = await page.evaluate(() => window.store.catalog('q'));
      for (const id of BIG_IDS.slice(0, n))
        expect(catalog.find((e) => e.id === id)?.cached, id).toBe(kept.includes(id));
      const usage = await page.evaluate(() => window.store.usage('q'));
      expect(usage).toMatchObject({ entries: kept.length, bytes: kept.length * BIG.length });
      console.log(
        `tmpfs 40 MB: ${n - 1} adapters of ${BIG.length} bytes stored, the next one evicted ${victims.length}; ` +
          `navigator.storage.estimate(): usage ${usage.usage}, quota ${usage.quota}`,
      );
    } finally {
      await browser.close();
      disk.unmount();
    }
  });
});
