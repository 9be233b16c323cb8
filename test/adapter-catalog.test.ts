/**
 * AdapterCatalog in Node (fake-indexeddb, a fake fetch, the real runtime on stories260K): what the
 * browser tests (test/browser/store-worker.test.ts) do not reach — the manifest read offline from its
 * saved copy, a restore that cannot be done whole, id conflicts, concurrent installs, and an adapter
 * whose bytes match the manifest but that the base cannot run.
 */
import 'fake-indexeddb/auto';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { main } from '../src/cli.js';
import { Runtime } from '../src/runtime.js';
import { AdapterCatalog } from '../src/adapter-catalog.js';
import { IncompatibleAdapterError, InvalidInputError } from '../src/errors.js';
import { readAdapterBundle, writeAdapterBundle } from '../src/store/bundle.js';
import { FetchError } from '../src/store/errors.js';
import { modelFingerprint } from '../src/store/manifest.js';
import { makeLoraAdapter, STORIES_CONFIG } from './helpers/peft-fixtures.js';

const ORIGIN = 'https://cdn.example.test';
const MANIFEST = `${ORIGIN}/adapters.json`;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const ZIPS: Record<string, Uint8Array> = {
  a: writeAdapterBundle(makeLoraAdapter({ seed: 1 })),
  b: writeAdapterBundle(makeLoraAdapter({ seed: 2 })),
  // six layers: the stories260K base (five) has no model.layers.5
  deep: writeAdapterBundle(makeLoraAdapter({ seed: 3, base: { ...STORIES_CONFIG, num_hidden_layers: 6 } })),
};

let dir: string;
let runtime: Runtime;
let base: string;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'edge-adapters-catalog-'));
  const model = path.join(dir, 'model');
  await main(
    ['convert', 'llama2c', fixture('llama2c/stories260K.bin'), fixture('llama2c/tok512.bin'), '--out', model],
    () => undefined,
  );
  runtime = await Runtime.create({ model });
  base = await modelFingerprint(JSON.parse(readFileSync(path.join(model, 'config.json'), 'utf8')) as object);
}, 60_000);

afterAll(async () => {
  await runtime?.release();
  rmSync(dir, { recursive: true, force: true });
});

/** A server of the manifest (listing `ids`) and the zips; `offline` fails every request. */
function server(ids: string[]) {
  const manifest = JSON.stringify({
    version: 1,
    base: { fingerprint: base },
    adapters: ids.map((id) => ({
      id,
      version: 1,
      method: 'LORA',
      base,
      url: `${id}.zip`,
      sha256: sha256(ZIPS[id]),
      bytes: ZIPS[id].length,
      format: 'zip',
    })),
  });
  const state = { requests: [] as string[], offline: false };
  const fetch = async (input: RequestInfo | URL): Promise<Response> => {
    const url = String(input);
    state.requests.push(url);
    if (state.offline) throw new TypeError('Failed to fetch');
    const id = url.slice(ORIGIN.length + 1, -'.zip'.length);
    const body: Uint8Array | undefined = url === MANIFEST ? new TextEncoder().encode(manifest) : ZIPS[id];
    if (body === undefined) return new Response('missing', { status: 404 });
    return new Response(body.slice(), { headers: { 'content-length': String(body.length) } });
  };
  return { fetch: fetch as typeof globalThis.fetch, state };
}

let dbs = 0;
async function open(net: ReturnType<typeof server>, dbName = `catalog-${++dbs}`) {
  for (const a of runtime.adapters.list()) await runtime.adapters.remove(a.id);
  const catalog = await AdapterCatalog.open(runtime.adapters, {
    manifestUrl: MANIFEST,
    baseFingerprint: base,
    dbName,
    fetch: net.fetch,
  });
  return { catalog, dbName };
}

describe('AdapterCatalog', () => {
  it('reads the manifest offline from the copy saved when it was last read', async () => {
    const net = server(['a']);
    net.state.offline = true;
    await expect(open(net)).rejects.toThrow(FetchError); // never read: nothing to fall back on
    net.state.offline = false;
    const { catalog, dbName } = await open(net);
    expect(catalog.manifestFrom).toBe('network');
    await catalog.install('a');
    net.state.offline = true;
    const offline = await open(net, dbName);
    expect(offline.catalog.manifestFrom).toBe('cache');
    expect(offline.catalog.manifest.adapters.map((e) => e.id)).toEqual(['a']);
    expect(await offline.catalog.install('a')).toMatchObject({ id: 'a', from: 'cache' });
  });

  it('restores the remembered selection whole, or nothing of it', async () => {
    const net = server(['a', 'b']);
    const { catalog, dbName } = await open(net);
    await catalog.install('a');
    await catalog.install('b');
    await runtime.adapters.activate([
      { id: 'b', weight: 0.5 },
      { id: 'a', weight: 2 },
    ]);
    await catalog.remember();

    const again = await open(net, dbName);
    expect(await again.catalog.restore()).toEqual({
      active: [
        { id: 'b', weight: 0.5 },
        { id: 'a', weight: 2 },
      ],
    });
    // the publisher dropped b: the selection cannot come back whole, so none of it is active
    const without = await open(server(['a']), dbName);
    const report = await without.catalog.restore();
    expect(report.active).toEqual([]);
    expect(report.error).toBeInstanceOf(InvalidInputError);
    expect(report.error?.message).toBe(`install: b: not in the manifest ${MANIFEST}; it lists a`);
    expect(runtime.adapters.active()).toEqual([]);
  });

  it('installs an id once for concurrent calls, and refuses one added from another source', async () => {
    const net = server(['a', 'b']);
    const { catalog } = await open(net);
    const [x, y] = await Promise.all([catalog.install('a'), catalog.install('a')]);
    expect(x).toBe(y);
    expect(net.state.requests.filter((u) => u.endsWith('a.zip'))).toHaveLength(1);
    expect((await catalog.install('a')).from).toBe('memory');

    await runtime.adapters.add('b', readAdapterBundle(ZIPS.b, 'b'));
    const err = await catalog.install('b').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidInputError);
    expect((err as Error).message).toBe(
      'install: b: an adapter with this id was added from another source; remove it first',
    );

    expect(await catalog.uninstall('a')).toBe(true);
    expect(runtime.adapters.list().map((a) => a.id)).toEqual(['b']);
    expect((await catalog.entries()).find((e) => e.id === 'a')).toMatchObject({
      cached: false,
      added: false,
    });
    expect(await catalog.uninstall('a')).toBe(false);
  });

  it('an adapter the base cannot run is refused and not kept in the cache', async () => {
    const { catalog } = await open(server(['deep']));
    const err = await catalog.install('deep').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IncompatibleAdapterError);
    expect((err as Error).message).toMatch(/model\.layers\.5/);
    expect(await catalog.store.list()).toEqual([]);
    expect(runtime.adapters.list()).toEqual([]);
  });
});
