import 'fake-indexeddb/auto';
import { createStore, keys as idbKeys, set as idbSet } from 'idb-keyval';
import { describe, expect, it } from 'vitest';
import { AdapterFormatError, IncompatibleAdapterError } from '../src/errors.js';
import { parsePeftAdapter } from '../src/formats/peft-adapter.js';
import { float16Entry, serializeSafetensors } from '../src/formats/safetensors.js';
import { AdapterStore, type CorruptEntry, STORE_NAME, dataKey } from '../src/store/adapter-store.js';
import { readAdapterBundle, writeAdapterBundle } from '../src/store/bundle.js';
import { FetchError, IntegrityError, QuotaError } from '../src/store/errors.js';
import type { FetchProgress } from '../src/store/fetch.js';
import { sha256Hex } from '../src/store/hash.js';
import { type ManifestEntry, modelFingerprint, parseManifest } from '../src/store/manifest.js';
import { loadAdapter } from '../src/store/load.js';

const ORIGIN = 'https://cdn.example.test';
const MANIFEST_URL = `${ORIGIN}/gallery/adapters.json`;
const enc = (s: string) => new TextEncoder().encode(s);

const BASE_CONFIG = {
  model_type: 'llama',
  hidden_size: 8,
  intermediate_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  vocab_size: 32,
};
const OTHER_CONFIG = { ...BASE_CONFIG, num_hidden_layers: 2 };

const CONFIG = enc(
  JSON.stringify({
    peft_type: 'LORA',
    r: 2,
    lora_alpha: 4,
    target_modules: ['q_proj'],
    task_type: 'CAUSAL_LM',
  }),
);
const WEIGHTS = serializeSafetensors(
  [
    [
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
      float16Entry(new Float32Array(16).fill(0.5), [2, 8]),
    ],
    [
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight',
      float16Entry(new Float32Array(16).fill(0.25), [8, 2]),
    ],
  ],
  { format: 'pt' },
);
const BUNDLE = writeAdapterBundle(
  new Map([
    ['adapter_config.json', CONFIG],
    ['adapter_model.safetensors', WEIGHTS],
  ]),
);

const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/** A server of `files` (URL -> bytes) in 100-byte chunks; `offline` makes every request fail. */
function server(files: Record<string, Uint8Array>) {
  const state = { requests: [] as string[], offline: false };
  const fetch = async (input: RequestInfo | URL): Promise<Response> => {
    const url = String(input);
    state.requests.push(url);
    if (state.offline) throw new TypeError('Failed to fetch');
    const body = files[url];
    if (body === undefined) return new Response('missing', { status: 404, statusText: 'Not Found' });
    let at = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (at >= body.length) return c.close();
        c.enqueue(body.slice(at, at + 100));
        at += 100;
      },
    });
    return new Response(stream, { headers: { 'content-length': String(body.length) } });
  };
  return { fetch: fetch as typeof globalThis.fetch, state };
}

let dbCount = 0;
async function setup(over: Record<string, unknown> = {}, budgetBytes = 1_000_000) {
  const base = await modelFingerprint(BASE_CONFIG);
  const manifest = parseManifest(
    {
      version: 1,
      base: { fingerprint: base, name: 'toy' },
      adapters: [
        {
          id: 'formal',
          version: '1',
          method: 'LORA',
          base,
          url: 'formal.zip',
          sha256: await sha256Hex(BUNDLE),
          bytes: BUNDLE.length,
          format: 'zip',
          ...over,
        },
      ],
    },
    MANIFEST_URL,
  );
  const dbName = `load-test-${++dbCount}`;
  const corrupt: CorruptEntry[] = [];
  const store = new AdapterStore({ budgetBytes, dbName, onCorrupt: (e) => corrupt.push(e) });
  const raw = createStore(dbName, STORE_NAME);
  const net = server({ [`${ORIGIN}/gallery/formal.zip`]: BUNDLE });
  const events: FetchProgress[] = [];
  const onProgress = (p: FetchProgress) => events.push({ ...p });
  const entry = manifest.adapters[0];
  const load = (e: ManifestEntry = entry, signal?: AbortSignal) =>
    loadAdapter(e, { store, baseFingerprint: base, fetch: net.fetch, onProgress, signal });
  return { base, entry, store, raw, net, events, corrupt, load, rawKeys: () => idbKeys(raw) };
}

describe('loadAdapter', () => {
  it('refuses an adapter made for another base before downloading anything', async () => {
    const { entry, store, net, rawKeys } = await setup();
    const other = await modelFingerprint(OTHER_CONFIG);
    const err = await loadAdapter(entry, { store, baseFingerprint: other, fetch: net.fetch }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(IncompatibleAdapterError);
    expect((err as Error).message).toBe(
      `formal: base: made for the base model with fingerprint ${entry.base}, but the loaded base is ${other}`,
    );
    expect(net.state.requests).toEqual([]);
    expect(await rawKeys()).toEqual([]);
  });

  it('downloads with progress, checks, caches, and then serves from the cache without the network', async () => {
    const { entry, net, events, load, store } = await setup();
    const first = await load();
    expect(first.fromCache).toBe(false);
    expect(first.cacheError).toBeUndefined();
    expect(same(first.config, CONFIG) && same(first.weights, WEIGHTS)).toBe(true);
    expect(net.state.requests).toEqual([`${ORIGIN}/gallery/formal.zip`]);
    expect(events[0]).toEqual({ loaded: 0, total: BUNDLE.length });
    expect(events.at(-1)).toEqual({ loaded: BUNDLE.length, total: BUNDLE.length });
    const deltas = events.slice(1).map((e, i) => e.loaded - events[i].loaded);
    expect(deltas.reduce((a, b) => a + b, 0)).toBe(BUNDLE.length);
    expect(deltas.every((d) => d > 0 && d <= 100)).toBe(true);
    expect((await store.list()).map((e) => [e.id, e.sha256, e.bytes])).toEqual([
      ['formal', entry.sha256, BUNDLE.length],
    ]);

    net.state.offline = true;
    const second = await load();
    expect(second.fromCache).toBe(true);
    expect(same(second.weights, WEIGHTS)).toBe(true);
    expect(net.state.requests).toHaveLength(1);
    expect(parsePeftAdapter(second, 'formal').tensors.size).toBe(2);
  });

  it('catches a corrupted cache entry by its hash and downloads it again', async () => {
    const { entry, net, load, raw, corrupt, store } = await setup();
    await load();
    const bad = BUNDLE.slice();
    bad[bad.length >> 1] ^= 0xff;
    await idbSet(dataKey('formal', entry.sha256), bad, raw);
    const again = await load();
    expect(again.fromCache).toBe(false);
    expect(same(again.weights, WEIGHTS)).toBe(true);
    expect(net.state.requests).toHaveLength(2);
    expect(corrupt).toEqual([
      { id: 'formal', sha256: entry.sha256, bytes: BUNDLE.length, actual: await sha256Hex(bad) },
    ]);
    expect(same((await store.get('formal', entry.sha256))!, BUNDLE)).toBe(true); // the fresh copy is cached
  });

  it('reports a corrupted entry that cannot be fetched again when offline', async () => {
    const { entry, net, load, raw, rawKeys } = await setup();
    await load();
    await idbSet(dataKey('formal', entry.sha256), BUNDLE.subarray(0, 100).slice(), raw);
    net.state.offline = true;
    const err = await load().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FetchError);
    expect((err as Error).message).toBe(
      `formal <${ORIGIN}/gallery/formal.zip>: network error: Failed to fetch (the cached copy failed its sha256 check and was removed)`,
    );
    expect(await rawKeys()).toEqual([]);
  });

  it('stores nothing when the download is aborted midway', async () => {
    const { entry, store, net, rawKeys } = await setup();
    const controller = new AbortController();
    const loaded: number[] = [];
    const err = await loadAdapter(entry, {
      store,
      baseFingerprint: entry.base,
      fetch: net.fetch,
      signal: controller.signal,
      onProgress: (p) => {
        loaded.push(p.loaded);
        if (p.loaded >= 300) controller.abort();
      },
    }).catch((e: unknown) => e);
    expect((err as DOMException).name).toBe('AbortError');
    expect(loaded.at(-1)).toBe(300);
    expect(BUNDLE.length).toBeGreaterThan(300);
    expect(await rawKeys()).toEqual([]);
    // without a store, a load downloads every time
    const plain = await loadAdapter(entry, { baseFingerprint: entry.base, fetch: net.fetch });
    expect(same(plain.config, CONFIG)).toBe(true);
    expect(await rawKeys()).toEqual([]);
  });

  it('stores nothing when the download does not match the manifest', async () => {
    const { entry, store, rawKeys } = await setup();
    const tampered = BUNDLE.slice();
    tampered[10] ^= 1;
    const net = server({ [entry.url]: tampered });
    const err = await loadAdapter(entry, { store, baseFingerprint: entry.base, fetch: net.fetch }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toBe(
      `formal <${entry.url}>: sha256: expected ${entry.sha256}, got ${await sha256Hex(tampered)}`,
    );
    expect(await rawKeys()).toEqual([]);
  });

  it('stores nothing when the published bundle is not a valid adapter bundle', async () => {
    const notAZip = enc('this is not a zip file at all');
    const { entry, store, rawKeys } = await setup({
      sha256: await sha256Hex(notAZip),
      bytes: notAZip.length,
    });
    const net = server({ [entry.url]: notAZip });
    const err = await loadAdapter(entry, { store, baseFingerprint: entry.base, fetch: net.fetch }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AdapterFormatError);
    expect(await rawKeys()).toEqual([]);
  });

  it('still returns the adapter when it cannot be cached, with the QuotaError', async () => {
    const { load, rawKeys } = await setup({}, 100);
    const got = await load();
    expect(same(got.weights, WEIGHTS)).toBe(true);
    expect(got.cacheError).toBeInstanceOf(QuotaError);
    expect(got.cacheError?.message).toBe(
      `formal: the adapter is ${BUNDLE.length} bytes, more than the store's whole budget of 100 bytes`,
    );
    expect(await rawKeys()).toEqual([]);
  });

  it('resolves a relative entry URL against the manifest URL it is given', async () => {
    const { entry, store, net } = await setup();
    const relative = { ...entry, url: 'formal.zip' };
    const got = await loadAdapter(relative, {
      store,
      baseFingerprint: entry.base,
      fetch: net.fetch,
      manifestUrl: MANIFEST_URL,
    });
    expect(same(got.config, CONFIG)).toBe(true);
    expect(net.state.requests).toEqual([`${ORIGIN}/gallery/formal.zip`]);
  });

  it('loads a peft-folder entry: both files checked, progress over both, cached, then served offline', async () => {
    const { base, store, raw } = await setup();
    const manifest = parseManifest(
      {
        version: 1,
        base: { fingerprint: base },
        adapters: [
          {
            id: 'folder',
            version: 2,
            method: 'LORA',
            base,
            url: 'folder',
            sha256: await sha256Hex(WEIGHTS),
            bytes: WEIGHTS.length,
            config_sha256: await sha256Hex(CONFIG),
            format: 'peft-folder',
          },
        ],
      },
      MANIFEST_URL,
    );
    const entry = manifest.adapters[0];
    const net = server({
      [`${ORIGIN}/gallery/folder/adapter_config.json`]: CONFIG,
      [`${ORIGIN}/gallery/folder/adapter_model.safetensors`]: WEIGHTS,
    });
    const events: FetchProgress[] = [];
    const opts = {
      store,
      baseFingerprint: base,
      fetch: net.fetch,
      onProgress: (p: FetchProgress) => events.push({ ...p }),
    };
    const first = await loadAdapter(entry, opts);
    expect(first.fromCache).toBe(false);
    expect(same(first.config, CONFIG) && same(first.weights, WEIGHTS)).toBe(true);
    const total = CONFIG.length + WEIGHTS.length;
    expect(events.every((e) => e.total === total)).toBe(true);
    expect(events.at(-1)).toEqual({ loaded: total, total });
    expect(events.map((e) => e.loaded)).toEqual([...events.map((e) => e.loaded)].sort((a, b) => a - b));

    // cached as one zip of both files, found by the manifest's hashes
    const [cached] = await store.list();
    expect(cached.source).toBe(`${entry.sha256}+${entry.config_sha256}`);
    const zip = await store.get('folder', cached.sha256);
    expect(same(readAdapterBundle(zip!, 'folder').config, CONFIG)).toBe(true);
    net.state.offline = true;
    const second = await loadAdapter(entry, opts);
    expect(second.fromCache).toBe(true);
    expect(same(second.weights, WEIGHTS)).toBe(true);

    // a changed config is a new version: not served from the cache, and checked against the manifest
    net.state.offline = false;
    const changed = { ...entry, config_sha256: 'd'.repeat(64) };
    const err = await loadAdapter(changed, opts).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as Error).message).toContain(
      `folder <${ORIGIN}/gallery/folder/adapter_config.json>: sha256: expected ${'d'.repeat(64)}`,
    );
    expect((await idbKeys(raw)).length).toBe(2); // the previous version stays cached
  });
});
