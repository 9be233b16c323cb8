import { describe, expect, it } from 'vitest';
import { FetchError, IntegrityError } from '../src/store/errors.js';
import { type FetchProgress, fetchWithProgress } from '../src/store/fetch.js';
import { sha256Hex } from '../src/store/hash.js';

const URL_A = 'https://cdn.example.test/a.bin';
const ABC_SHA256 = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';

/** Deterministic pseudo-random bytes. */
function bytesOf(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Byte equality (vitest's deep equality is slow on large typed arrays). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

interface StubOptions {
  chunk?: number;
  /** Headers to send; content-length is the body's length unless given (null: none). */
  contentLength?: number | null;
  headers?: Record<string, string>;
  /** Called before each chunk is handed out; may abort. */
  beforeChunk?: (index: number) => void;
}

/** A fetch serving `body` as a stream of `chunk`-byte pieces. It ignores the signal (the worst case). */
function stubFetch(body: Uint8Array, opts: StubOptions = {}) {
  const state = { calls: 0, chunksServed: 0, cancelled: false };
  const chunk = opts.chunk ?? 1000;
  const fetch = async (): Promise<Response> => {
    state.calls++;
    let at = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (at >= body.length) return controller.close();
        opts.beforeChunk?.(state.chunksServed);
        controller.enqueue(body.slice(at, at + chunk));
        state.chunksServed++;
        at += chunk;
      },
      cancel() {
        state.cancelled = true;
      },
    });
    const headers: Record<string, string> = { ...opts.headers };
    const length = opts.contentLength === undefined ? body.length : opts.contentLength;
    if (length !== null) headers['content-length'] = String(length);
    return new Response(stream, { headers });
  };
  return { fetch: fetch as typeof globalThis.fetch, state };
}

function recorder() {
  const events: FetchProgress[] = [];
  return { events, onProgress: (p: FetchProgress) => events.push({ ...p }) };
}

describe('fetchWithProgress', () => {
  it('streams the body with progress events that add up to the byte count', async () => {
    const body = bytesOf(10_500, 7);
    const { fetch, state } = stubFetch(body, { chunk: 1000 });
    const { events, onProgress } = recorder();
    const got = await fetchWithProgress(URL_A, {
      fetch,
      onProgress,
      expectedBytes: body.length,
      sha256: await sha256Hex(body),
    });
    expect(same(got, body)).toBe(true);
    expect(state.chunksServed).toBe(11);
    // one event when the headers arrive, then one per chunk
    expect(events).toHaveLength(12);
    expect(events[0]).toEqual({ loaded: 0, total: 10_500 });
    expect(events.every((e) => e.total === 10_500)).toBe(true);
    const deltas = events.slice(1).map((e, i) => e.loaded - events[i].loaded);
    expect(deltas).toEqual([...Array(10).fill(1000), 500]);
    expect(deltas.reduce((a, b) => a + b, 0)).toBe(body.length);
    expect(events.at(-1)).toEqual({ loaded: 10_500, total: 10_500 });
  });

  it('takes the total from Content-Length when the caller gives none, and grows when there is none', async () => {
    const body = bytesOf(200_000, 3); // over the 64 KiB initial buffer
    const withLength = recorder();
    expect(
      same(
        await fetchWithProgress(URL_A, { fetch: stubFetch(body).fetch, onProgress: withLength.onProgress }),
        body,
      ),
    ).toBe(true);
    expect(withLength.events.at(-1)).toEqual({ loaded: 200_000, total: 200_000 });

    const without = recorder();
    const got = await fetchWithProgress(URL_A, {
      fetch: stubFetch(body, { contentLength: null, chunk: 7000 }).fetch,
      onProgress: without.onProgress,
    });
    expect(same(got, body)).toBe(true);
    expect(without.events.every((e) => e.total === undefined)).toBe(true);
    expect(without.events.at(-1)?.loaded).toBe(200_000);
  });

  it('checks the sha256 against the known digest of "abc"', async () => {
    const abc = new TextEncoder().encode('abc');
    expect(await fetchWithProgress(URL_A, { fetch: stubFetch(abc).fetch, sha256: ABC_SHA256 })).toEqual(abc);
    expect(
      await fetchWithProgress(URL_A, { fetch: stubFetch(abc).fetch, sha256: ABC_SHA256.toUpperCase() }),
    ).toEqual(abc);
    const abd = new TextEncoder().encode('abd');
    const err = await fetchWithProgress(URL_A, {
      fetch: stubFetch(abd).fetch,
      sha256: ABC_SHA256,
      label: 'style <u>',
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect((err as IntegrityError).file).toBe('style <u>');
    expect((err as IntegrityError).field).toBe('sha256');
    expect((err as Error).message).toBe(
      `style <u>: sha256: expected ${ABC_SHA256}, got ${await sha256Hex(abd)}`,
    );
  });

  it('refuses a Content-Length other than the expected size before reading the body', async () => {
    const body = bytesOf(5000);
    const { fetch, state } = stubFetch(body);
    await expect(fetchWithProgress(URL_A, { fetch, expectedBytes: 4000 })).rejects.toThrow(
      new IntegrityError(
        URL_A,
        'bytes',
        'the server announces 5000 bytes (Content-Length), the manifest 4000',
      ),
    );
    expect(state.chunksServed).toBeLessThanOrEqual(1); // the stream's own read-ahead at most
    expect(state.cancelled).toBe(true);
  });

  it('stops a body that runs past the expected size at the chunk that overflows', async () => {
    const body = bytesOf(50_000);
    const { fetch, state } = stubFetch(body, { contentLength: null, chunk: 1000 });
    await expect(fetchWithProgress(URL_A, { fetch, expectedBytes: 3500 })).rejects.toThrow(
      new IntegrityError(URL_A, 'bytes', 'received more than the expected 3500 bytes'),
    );
    expect(state.chunksServed).toBeLessThanOrEqual(5); // 4 read, at most 1 read ahead, not 50
    expect(state.cancelled).toBe(true);
  });

  it('reports a body shorter than expected or than announced', async () => {
    const body = bytesOf(3000);
    await expect(
      fetchWithProgress(URL_A, {
        fetch: stubFetch(body, { contentLength: null }).fetch,
        expectedBytes: 4000,
      }),
    ).rejects.toThrow(new IntegrityError(URL_A, 'bytes', 'received 3000 bytes, expected 4000'));
    const truncated = await fetchWithProgress(URL_A, {
      fetch: stubFetch(body, { contentLength: 4000 }).fetch,
    }).catch((e: unknown) => e);
    expect(truncated).toBeInstanceOf(FetchError);
    expect((truncated as Error).message).toBe(`${URL_A}: the response ended after 3000 of 4000 bytes`);
  });

  it('ignores Content-Length of a content-encoded body (it is the compressed size)', async () => {
    const body = bytesOf(3000);
    const { fetch } = stubFetch(body, { contentLength: 1200, headers: { 'content-encoding': 'gzip' } });
    const { events, onProgress } = recorder();
    expect(await fetchWithProgress(URL_A, { fetch, expectedBytes: 3000, onProgress })).toEqual(body);
    expect(events.at(-1)).toEqual({ loaded: 3000, total: 3000 });
  });

  it('names the URL and status of an HTTP error, and the URL of a network error', async () => {
    const notFound = (async () =>
      new Response('no', { status: 404, statusText: 'Not Found' })) as typeof fetch;
    const err = await fetchWithProgress(URL_A, { fetch: notFound }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FetchError);
    expect((err as FetchError).status).toBe(404);
    expect((err as Error).message).toBe(`${URL_A}: HTTP 404 Not Found`);

    const offline = (async () => {
      throw new TypeError('fetch failed');
    }) as typeof fetch;
    await expect(fetchWithProgress(URL_A, { fetch: offline })).rejects.toThrow(
      new FetchError(URL_A, 'network error: fetch failed'),
    );
  });

  it('aborts mid-download: cancels the body, rejects with the signal reason, no more progress', async () => {
    const body = bytesOf(20_000);
    const controller = new AbortController();
    const { fetch, state } = stubFetch(body, { chunk: 1000 });
    const { events, onProgress } = recorder();
    const run = fetchWithProgress(URL_A, {
      fetch,
      signal: controller.signal,
      expectedBytes: body.length,
      onProgress: (p) => {
        onProgress(p);
        if (p.loaded === 5000) controller.abort();
      },
    });
    const err = await run.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DOMException);
    expect((err as DOMException).name).toBe('AbortError');
    expect(state.cancelled).toBe(true);
    expect(state.chunksServed).toBeLessThanOrEqual(6);
    expect(events.at(-1)?.loaded).toBe(5000);

    // an already-aborted signal never calls fetch
    const before = stubFetch(body);
    await expect(
      fetchWithProgress(URL_A, { fetch: before.fetch, signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({
      name: 'AbortError',
    });
    expect(before.state.calls).toBe(0);
  });

  it('passes a custom abort reason through', async () => {
    const controller = new AbortController();
    const reason = new Error('user switched adapter');
    const { fetch } = stubFetch(bytesOf(10_000), { beforeChunk: (i) => i === 2 && controller.abort(reason) });
    await expect(fetchWithProgress(URL_A, { fetch, signal: controller.signal })).rejects.toBe(reason);
  });
});
