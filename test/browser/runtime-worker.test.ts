/**
 * The runtime in a web worker, in headless Chromium, against Node: createRuntime (src/client.ts) ->
 * workers/runtime.worker.ts -> Runtime on onnxruntime-web, wasm and WebGPU. The oracles are the
 * golden llama2.c text and Node's Runtime on the same model folder and adapter files.
 */
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from '../fixtures.js';
import { main } from '../../src/cli.js';
import { Runtime } from '../../src/runtime.js';
import { WEBGPU_VERIFIED_OPS } from '../../src/client.js';
import { parsePeftConfig } from '../../src/formats/peft-config.js';
import { synthConfig } from '../../src/formats/synth.js';
import { makeIa3Adapter, makeLoraAdapter, type AdapterFiles } from '../helpers/peft-fixtures.js';
import { startHarness, type Harness } from './harness.js';
import type { LoadProgress } from '../../src/client.js';

const PROMPT = 'Once upon a time';
const golden = readFileSync(fixture('llama2c/stories260K.greedy-once-upon-a-time.txt'), 'utf8');
/** What generate streams after the prompt: the CLI prints the prompt, the chunks, then a newline. */
const GOLDEN_CONTINUATION = golden.slice(PROMPT.length).replace(/\n$/, '');
/** Tokens per generation when comparing adapters (the golden base run uses 252, as run.c -n 256). */
const SHORT = 40;
/** WebGPU runs on SwiftShader here, at ~0.4 s a token (wasm: ~2 ms): its runs are this long. */
const GPU_TOKENS = 64;

const ADAPTERS: Record<string, AdapterFiles> = {
  lora: makeLoraAdapter({ seed: 3, scale: 0.1 }),
  dora: makeLoraAdapter({ dora: true, seed: 7 }),
  ia3: makeIa3Adapter({ seed: 5 }),
};

let h: Harness;
let node: Runtime;
let modelDir: string;
/** Node's greedy text per adapter id ('base' = none) and length. */
const expected = new Map<string, string>();
const nodeText = async (adapter: string, maxTokens: number): Promise<string> => {
  const key = `${adapter}/${maxTokens}`;
  if (!expected.has(key)) {
    if (adapter === 'base') node.adapters.deactivate();
    else await node.adapters.activate(adapter);
    expected.set(key, (await node.complete(PROMPT, { maxTokens })).text);
  }
  return expected.get(key) as string;
};

beforeAll(async () => {
  h = await startHarness(async (work) => {
    modelDir = path.join(work, 'model');
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
    for (const [id, files] of Object.entries(ADAPTERS)) {
      mkdirSync(path.join(work, 'adapters', id), { recursive: true });
      for (const [name, bytes] of files) writeFileSync(path.join(work, 'adapters', id, name), bytes);
    }
  });
  node = await Runtime.create({ model: modelDir });
  for (const id of Object.keys(ADAPTERS)) await node.adapters.add(id, path.join(h.work, 'adapters', id));
}, 120_000);

afterAll(async () => {
  await node?.release();
  await h?.close();
});

const fileSize = (relative: string) => statSync(path.join(h.work, relative)).size;

/** The last progress event of each file, checked to be monotonic and to end at the file's size. */
function finalBytes(events: { file: string; loaded: number; total: number | undefined }[], folder: string) {
  const last = new Map<string, number>();
  for (const e of events) {
    expect(e.loaded, e.file).toBeGreaterThanOrEqual(last.get(e.file) ?? 0);
    expect(e.total, e.file).toBe(fileSize(`${folder}/${e.file}`));
    last.set(e.file, e.loaded);
  }
  for (const [file, loaded] of last) expect(loaded, file).toBe(fileSize(`${folder}/${file}`));
  return last;
}

describe('the runtime in a worker, on wasm', () => {
  it('loads with progress for every file, from the served onnxruntime-web dist folder', async () => {
    const { backend, progress } = await h.page.evaluate(() =>
      window.edge.load('wasm', { model: '/served/model/', backend: 'wasm' }),
    );
    expect(backend).toMatchObject({
      name: 'wasm',
      requested: 'wasm',
      reason: 'requested',
      unverifiedOps: [],
    });
    const downloads = progress.filter(
      (p): p is Extract<LoadProgress, { stage: 'download' }> => p.stage === 'download',
    );
    const last = finalBytes(downloads, 'model');
    expect([...last.keys()]).toEqual(
      expect.arrayContaining(['config.json', 'model.onnx', 'generation_config.json']),
    );
    expect(progress.at(-1)).toEqual({ stage: 'session', backend: 'wasm', reason: 'requested' });
    // onnxruntime-web's glue and binary came from node_modules/onnxruntime-web/dist/, nowhere else
    const ort = h.server.requests.filter((r) => /ort-wasm/.test(r));
    expect(ort).toEqual(
      expect.arrayContaining([
        '/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs',
        '/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm',
      ]),
    );
    expect(ort.every((r) => r.startsWith('/node_modules/onnxruntime-web/dist/'))).toBe(true);
  });

  it('greedy text equals the golden llama2.c output (252 tokens), streamed chunk by chunk', async () => {
    expect(golden.startsWith(PROMPT)).toBe(true);
    const out = await h.page.evaluate((p) => window.edge.generate('wasm', p, { maxTokens: 252 }), PROMPT);
    expect(out.text).toBe(GOLDEN_CONTINUATION);
    expect(out.chunks).toBe(252);
    expect(out.finishReason).toBe('length');
    expect(out.text).toBe(await nodeText('base', 252));
  });

  it('with a LoRA adapter from a URL: the same text as Node for the same adapter', async () => {
    await h.page.evaluate(() => window.edge.addAdapter('wasm', 'lora', '/served/adapters/lora/'));
    await h.page.evaluate(() => window.edge.activate('wasm', 'lora'));
    const out = await h.page.evaluate((p) => window.edge.generate('wasm', p, { maxTokens: 252 }), PROMPT);
    const want = await nodeText('lora', 252);
    expect(want).not.toBe(GOLDEN_CONTINUATION); // the adapter changes the text
    expect(out.text).toBe(want);
    await h.page.evaluate(() => window.edge.remove('wasm', 'lora'));
  });

  it('slots for declared adapters: the same text as Node, and an undeclared adapter is refused', async () => {
    const config = parsePeftConfig(
      JSON.parse(new TextDecoder().decode(ADAPTERS.lora.get('adapter_config.json'))),
    );
    await h.page.evaluate(
      (c) =>
        window.edge.load('declared', { model: '/served/model/', backend: 'wasm', slots: { adapters: [c] } }),
      config,
    );
    for (const id of ['lora', 'ia3'])
      await h.page.evaluate((id) => window.edge.addAdapter('declared', id, `/served/adapters/${id}/`), id);
    await h.page.evaluate(() => window.edge.activate('declared', 'lora'));
    const out = await h.page.evaluate(([p, n]) => window.edge.generate('declared', p, { maxTokens: n }), [
      PROMPT,
      SHORT,
    ] as const);
    expect(out.text).toBe(await nodeText('lora', SHORT));
    const refused = await h.page.evaluate(() =>
      window.edge.activate('declared', 'ia3').then(
        () => 'activated',
        (e: Error) => `${e.name}: ${e.message}`,
      ),
    );
    expect(refused).toMatch(/^IncompatibleAdapterError: .*model\.layers\.0\.self_attn\.k_proj/);
    await h.page.evaluate(() => window.edge.release('declared'));
  });

  it('three adapters download with progress adding up to their files, and switch in any order', async () => {
    const ids = ['lora', 'dora', 'ia3'];
    for (const id of ids) {
      const { info, progress } = await h.page.evaluate(
        ([key, id]) => window.edge.addAdapter(key, id, `/served/adapters/${id}/`),
        ['wasm', id] as const,
      );
      const last = finalBytes(progress, `adapters/${id}`);
      expect([...last.keys()].sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      const total = [...last.values()].reduce((a, b) => a + b, 0);
      expect(total).toBe(
        fileSize(`adapters/${id}/adapter_config.json`) + fileSize(`adapters/${id}/adapter_model.safetensors`),
      );
      expect(info).toMatchObject({ id, active: false });
    }
    const list = await h.page.evaluate(() => window.edge.list('wasm'));
    expect(list.map((a) => [a.id, a.peftType, a.variant])).toEqual([
      ['lora', 'LORA', undefined],
      ['dora', 'LORA', 'dora'],
      ['ia3', 'IA3', undefined],
    ]);

    const texts = new Set<string>();
    for (const order of [
      ['lora', 'dora', 'ia3', 'base'],
      ['ia3', 'base', 'dora', 'lora'],
    ]) {
      for (const id of order) {
        if (id === 'base') await h.page.evaluate(() => window.edge.deactivate('wasm'));
        else await h.page.evaluate(([id]) => window.edge.activate('wasm', id), [id] as const);
        const out = await h.page.evaluate(
          (n) => window.edge.generate('wasm', 'Once upon a time', { maxTokens: n }),
          SHORT,
        );
        expect(out.text, `${id} (order ${order.join(', ')})`).toBe(await nodeText(id, SHORT));
        texts.add(out.text);
      }
    }
    expect(texts.size).toBe(4); // every adapter gives its own text
    // a blend crosses the boundary too
    await h.page.evaluate(() =>
      window.edge.activate('wasm', [
        { id: 'dora', weight: 0.7 },
        { id: 'lora', weight: 0.5 },
      ]),
    );
    const blend = await h.page.evaluate(
      (n) => window.edge.generate('wasm', 'Once upon a time', { maxTokens: n }),
      SHORT,
    );
    await node.adapters.activate([
      { id: 'dora', weight: 0.7 },
      { id: 'lora', weight: 0.5 },
    ]);
    expect(blend.text).toBe((await node.complete(PROMPT, { maxTokens: SHORT })).text);
    expect(
      (await h.page.evaluate(() => window.edge.list('wasm'))).filter((a) => a.active).map((a) => a.id),
    ).toEqual(['lora', 'dora']);
  });

  it('logits equal Node’s; export gives the adapter files byte for byte; bytes sources are transferred', async () => {
    await h.page.evaluate(() => window.edge.activate('wasm', 'dora'));
    await node.adapters.activate('dora');
    const tokens = [1, 403, 407, 261, 9];
    const got = await h.page.evaluate((t) => window.edge.logits('wasm', t), tokens);
    const want = await node.logits(tokens);
    expect(got.length).toBe(tokens.length);
    for (let i = 0; i < tokens.length; i++) {
      expect(got[i].length).toBe(512);
      for (let v = 0; v < 512; v++) expect(Math.abs(got[i][v] - want[i][v])).toBeLessThan(1e-5);
    }

    const files = await h.page.evaluate(() => window.edge.export('wasm', 'dora'));
    for (const [name, bytes] of ADAPTERS.dora) expect(new Uint8Array(files[name])).toEqual(bytes);

    const { info, byteLengthsAfter } = await h.page.evaluate(() =>
      window.edge.addAdapterBytes('wasm', 'ia3-bytes', '/served/adapters/ia3/'),
    );
    expect(info).toMatchObject({ id: 'ia3-bytes', peftType: 'IA3' });
    expect(byteLengthsAfter).toEqual([0, 0]); // transferred, not copied
  });

  it('errors keep their class, file and field across the boundary', async () => {
    const missing = await h.page.evaluate(() => window.edge.failureOf('wasm', 'addMissing'));
    expect(missing).toMatchObject({
      name: 'AdapterFormatError',
      classes: ['EdgeAdaptersError', 'AdapterFormatError'],
    });
    expect(missing?.file).toMatch(/\/served\/adapters\/does-not-exist\/\/adapter_config\.json$/);
    const unknown = await h.page.evaluate(() => window.edge.failureOf('wasm', 'activateUnknown'));
    expect(unknown).toMatchObject({ name: 'InvalidInputError', file: 'activate', field: 'nope' });
    expect(unknown?.classes).toEqual(['EdgeAdaptersError', 'InvalidInputError']);
    const tokens = await h.page.evaluate(() => window.edge.failureOf('wasm', 'badTokens'));
    expect(tokens).toMatchObject({ name: 'InvalidInputError', file: 'tokens', field: '[1]' });
    expect(tokens?.message).toMatch(/token id 99999 is outside the vocabulary/);
  });

  it('an AbortSignal stops generation between tokens; the runtime serves the next request', async () => {
    await h.page.evaluate(() => window.edge.deactivate('wasm'));
    const aborted = await h.page.evaluate((p) => window.edge.generateAndAbort('wasm', p, 5), PROMPT);
    expect(aborted.chunks).toBe(5);
    expect(aborted.failure).toMatchObject({ name: 'AbortError', classes: ['DOMException'] });
    const out = await h.page.evaluate(
      (n) => window.edge.generate('wasm', 'Once upon a time', { maxTokens: n }),
      SHORT,
    );
    expect(out.text).toBe(await nodeText('base', SHORT));
  });
});

describe('a quantized base in the worker', () => {
  it("nf4 with kernels 'native' and 'dequantize': Node's logits and text, and the report says which ran", async () => {
    await main(
      ['quantize', '--model', modelDir, '--format', 'nf4', '--out', path.join(h.work, 'model-nf4')],
      () => undefined,
    );
    const tokens = [1, 403, 407, 261, 9];
    const logits: Record<string, number[][]> = {};
    for (const kernels of ['native', 'dequantize'] as const) {
      const nodeRt = await Runtime.create({ model: path.join(h.work, 'model-nf4'), kernels });
      expect(nodeRt.model.quantization).toEqual({ formats: ['nf4'], kernels });
      const want = await nodeRt.logits(tokens);
      const wantText = (await nodeRt.complete(PROMPT, { maxTokens: SHORT })).text;
      await nodeRt.release();

      const key = `nf4-${kernels}`;
      const { backend } = await h.page.evaluate(
        ([k, kernels]) => window.edge.load(k, { model: '/served/model-nf4/', backend: 'wasm', kernels }),
        [key, kernels] as const,
      );
      expect(backend.quantization).toEqual({ formats: ['nf4'], kernels });
      logits[kernels] = await h.page.evaluate(([k, t]) => window.edge.logits(k, t), [key, tokens] as const);
      for (let i = 0; i < tokens.length; i++)
        for (let v = 0; v < 512; v++) expect(Math.abs(logits[kernels][i][v] - want[i][v])).toBeLessThan(1e-5);
      const out = await h.page.evaluate(([k, p, n]) => window.edge.generate(k, p, { maxTokens: n }), [
        key,
        PROMPT,
        SHORT,
      ] as const);
      expect(out.text).toBe(wantText);
      await h.page.evaluate((k) => window.edge.release(k), key);
    }
    // Two executions of the same weights: float32 rounding apart at most.
    for (let i = 0; i < tokens.length; i++)
      for (let v = 0; v < 512; v++)
        expect(Math.abs(logits.native[i][v] - logits.dequantize[i][v])).toBeLessThan(1e-4);
  });
});

describe('wasm threads', () => {
  it('threads: 2 on the cross-origin isolated page gives the same text', async () => {
    const before = h.server.requests.length;
    const { backend } = await h.page.evaluate(() =>
      window.edge.load('threads', { model: '/served/model/', backend: 'wasm', threads: 2 }),
    );
    expect(backend.name).toBe('wasm');
    const out = await h.page.evaluate(
      (n) => window.edge.generate('threads', 'Once upon a time', { maxTokens: n }),
      SHORT,
    );
    await h.page.evaluate(() => window.edge.release('threads'));
    expect(out.text).toBe(await nodeText('base', SHORT));
    // the worker and its one extra pthread worker each loaded onnxruntime's glue from the dist folder
    const glue = h.server.requests
      .slice(before)
      .filter((r) => r === '/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs');
    expect(glue.length).toBe(2);
  });
});

describe('WebGPU (onnxruntime-web/webgpu)', () => {
  it("'auto' reports the WebGPU adapter, the graph's ops, and why it chose the backend", async () => {
    const { backend } = await h.page.evaluate(() => window.edge.load('auto', { model: '/served/model/' }));
    await h.page.evaluate(() => window.edge.release('auto'));
    expect(backend.requested).toBe('auto');
    expect(backend.unverifiedOps).toEqual([]);
    expect(backend.ops.every((op) => WEBGPU_VERIFIED_OPS.has(op))).toBe(true);
    // headless Chromium's only adapter is SwiftShader (software Vulkan): wasm is faster there
    expect(backend.gpu?.architecture).toBe('swiftshader');
    expect(backend).toMatchObject({ name: 'wasm', reason: expect.stringMatching(/software renderer/) });
  });

  it('every node output of the graph (with a LoRA adapter) agrees with wasm, prefill and decode', async () => {
    const c = await h.page.evaluate(() => window.edge.compareOps('/served/model/', '/served/adapters/lora/'));
    if (c.mismatches.length)
      console.log('WebGPU mismatches:', JSON.stringify(c.mismatches.filter((m) => m.inputsAgree)));
    expect(c.mismatches).toEqual([]);
    expect(c.logitsMaxAbsDiff.prefill).toBeLessThan(1e-3);
    expect(c.logitsMaxAbsDiff.decode).toBeLessThan(1e-3);
    // the verified list is exactly the ops this comparison covers
    expect(c.ops).toEqual([...WEBGPU_VERIFIED_OPS].sort());
    for (const op of c.ops) expect(c.perOp[op]?.outputs, op).toBeGreaterThan(0);
  });

  it('the KV cache and the adapter tensors stay on the GPU, and are freed when dropped', async () => {
    const r = await h.page.evaluate(() =>
      window.edge.gpuResidency('/served/model/', '/served/adapters/lora/'),
    );
    expect(r).toMatchObject({
      slots: ['gpu-buffer'],
      prefillCache: ['gpu-buffer'],
      decodeCache: ['gpu-buffer'],
      disposedCache: ['none'],
      heldAfterDeactivate: ['gpu-buffer'], // a request still holds the replaced adapter
      releasedAfterEnd: ['none'],
    });
    expect(r.logitsMaxAbsDiff).toBeLessThan(1e-3);
  });

  it('greedy text in the worker on WebGPU equals Node’s, without and with an adapter', async () => {
    const { backend } = await h.page.evaluate(() =>
      window.edge.load('gpu', { model: '/served/model/', backend: 'webgpu' }),
    );
    expect(backend).toMatchObject({ name: 'webgpu', requested: 'webgpu' });
    const base = await h.page.evaluate(
      (n) => window.edge.generate('gpu', 'Once upon a time', { maxTokens: n }),
      GPU_TOKENS,
    );
    expect(base.text).toBe(await nodeText('base', GPU_TOKENS));
    expect(GOLDEN_CONTINUATION.startsWith(base.text)).toBe(true);
    await h.page.evaluate(() => window.edge.addAdapter('gpu', 'lora', '/served/adapters/lora/'));
    await h.page.evaluate(() => window.edge.activate('gpu', 'lora'));
    const lora = await h.page.evaluate(
      (n) => window.edge.generate('gpu', 'Once upon a time', { maxTokens: n }),
      GPU_TOKENS,
    );
    expect(lora.text).toBe(await nodeText('lora', GPU_TOKENS));
    expect(lora.text).not.toBe(base.text);
    await h.page.evaluate(() => window.edge.release('gpu'));
  });
});

describe('WebGPU, a model deeper than a shader may bind', () => {
  it('12 layers, every slot, a LoRA on every linear: logits and text as in Node', async () => {
    // A Split of 12 layers' blocks would bind 13 storage buffers in one shader; WebGPU guarantees 8.
    const dir = path.join(h.work, 'deep');
    await main(['synth', '--shape', 'tiny-deep', '--seed', '3', '--out', dir], () => undefined);
    const deep = synthConfig('tiny-deep');
    const files = makeLoraAdapter({ base: deep, seed: 4, scale: 0.5 });
    mkdirSync(path.join(h.work, 'adapters', 'deep-lora'), { recursive: true });
    for (const [name, bytes] of files) writeFileSync(path.join(h.work, 'adapters', 'deep-lora', name), bytes);
    const nodeRt = await Runtime.create({ model: dir });
    await nodeRt.adapters.add('lora', path.join(h.work, 'adapters', 'deep-lora'));
    await nodeRt.adapters.activate('lora');
    const tokens = [1, 70, 80, 90, 100];
    const want = await nodeRt.logits(tokens);
    const wantText = (await nodeRt.complete(PROMPT, { maxTokens: 8 })).text;
    await nodeRt.release();

    await h.page.evaluate(() => window.edge.load('deep', { model: '/served/deep/', backend: 'webgpu' }));
    await h.page.evaluate(() => window.edge.addAdapter('deep', 'lora', '/served/adapters/deep-lora/'));
    await h.page.evaluate(() => window.edge.activate('deep', 'lora'));
    const got = await h.page.evaluate((t) => window.edge.logits('deep', t), tokens);
    let diff = 0;
    for (let i = 0; i < tokens.length; i++)
      for (let v = 0; v < 512; v++) diff = Math.max(diff, Math.abs(got[i][v] - want[i][v]));
    expect(diff).toBeLessThan(1e-3);
    const out = await h.page.evaluate((p) => window.edge.generate('deep', p, { maxTokens: 8 }), PROMPT);
    expect(out.text).toBe(wantText);
    await h.page.evaluate(() => window.edge.release('deep'));
  });
});

describe('the page stays responsive; a dead worker is an error', () => {
  it('reports main-thread long tasks while a model loads and generates', async () => {
    const since = await h.page.evaluate(() => window.edge.now());
    const { ms } = await h.page.evaluate(() =>
      window.edge.load('busy', { model: '/served/model/', backend: 'wasm' }),
    );
    const start = await h.page.evaluate(() => window.edge.now());
    await h.page.evaluate((p) => window.edge.generate('busy', p, { maxTokens: 252 }), PROMPT);
    const end = await h.page.evaluate(() => window.edge.now());
    const tasks = await h.page.evaluate((t) => window.edge.longTasks(t), since);
    const blocked = tasks.reduce((sum, t) => sum + Math.max(0, t.duration - 50), 0);
    console.log(
      `main thread: load ${ms.toFixed(0)} ms, generate 252 tokens ${(end - start).toFixed(0)} ms; ` +
        `long tasks: ${tasks.length} (${tasks.map((t) => t.duration.toFixed(0)).join(', ') || 'none'} ms), blocking time ${blocked.toFixed(0)} ms`,
    );
    // The model loads and runs in the worker: the page never blocks for long.
    expect(tasks.every((t) => t.duration < 250)).toBe(true);
  });

  it('a worker terminated mid-generation rejects the stream and later calls with WorkerError', async () => {
    await h.page.evaluate((p) => window.edge.startGenerating('busy', 't1', p, 200, 3), PROMPT);
    await h.page.evaluate(() => window.edge.terminate('busy'));
    const outcome = await h.page.evaluate(() => window.edge.outcome('t1'));
    expect(outcome.chunks).toBeGreaterThanOrEqual(3);
    expect(outcome.chunks).toBeLessThan(200);
    expect(outcome.failure).toMatchObject({ name: 'WorkerError', classes: ['WorkerError'] });
    expect(outcome.failure?.message).toMatch(/terminated/);
    const later = await h.page.evaluate(() => window.edge.failureOf('busy', 'activateUnknown'));
    expect(later).toMatchObject({ name: 'WorkerError' });
  });

  it('an uncaught error inside the worker rejects the pending stream with WorkerError', async () => {
    await h.page.evaluate(() => window.edge.release('wasm'));
    await h.page.evaluate(() => window.edge.load('crash', { model: '/served/model/', backend: 'wasm' }));
    await h.page.evaluate((p) => window.edge.startGenerating('crash', 't2', p, 200, 3), PROMPT);
    const workers = h.page.workers();
    expect(workers.length).toBe(1);
    await workers[0].evaluate(() => {
      setTimeout(() => {
        throw new Error('simulated crash');
      });
    });
    const outcome = await h.page.evaluate(() => window.edge.outcome('t2'));
    expect(outcome.chunks).toBeLessThan(200);
    expect(outcome.failure).toMatchObject({ name: 'WorkerError', classes: ['WorkerError'] });
    expect(outcome.failure?.message).toMatch(/simulated crash/);
  });
});
