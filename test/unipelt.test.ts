/**
 * UniPELT (AdapterHub's UniPELTConfig) on stories260K: files written with the library's tensor names
 * (src/formats/adapterhub-unipelt.ts), read, fed to a graph with UniPELT slots
 * (src/graph/unipelt-slots.ts) and run by onnxruntime, against the float64 oracle
 * (src/reference/unipelt.ts) at every position of a prompt and step by step with the KV cache, each
 * part alone and all three together; with no UniPELT adapter active the graph is the base and runs
 * plain LoRA as before.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdapterFormatError } from '../src/errors.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { parseAdapterHubUniPelt } from '../src/formats/adapterhub-unipelt.js';
import { argmax } from '../src/reference/llama.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { UniPeltReferenceSession } from '../src/reference/unipelt.js';
import { Runtime } from '../src/runtime.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';
import { adapterHubFiles, oracleLayers, type Parts } from './helpers/adapterhub-fixtures.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const folder = checkpointToModelFolder(ckpt, {
  tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
});
const c = ckpt.config;
const TOKENS = [1, 403, 407, 261, 378, 316, 291, 400, 46, 29, 90, 300];

const maxDiffRows = (a: ArrayLike<number>[], b: ArrayLike<number>[]) =>
  Math.max(...a.map((row, i) => maxAbsDiff(row, b[i])));

describe('UniPELT against the float64 oracle', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await Runtime.create({ model: memorySource(folder, 'stories260K'), slots: { unipelt: true } });
  });
  afterAll(() => rt.release());

  const cases: [string, Parts][] = [
    ['gated LoRA on q and v', { lora: true }],
    ['gated prefix', { prefix: true }],
    ['gated bottleneck adapter', { bottleneck: true }],
    ['all three (UniPELT)', { lora: true, prefix: true, bottleneck: true }],
  ];
  for (const [name, parts] of cases) {
    it(`${name}: every position of a prompt within 1e-4, then greedy decoding token for token`, async () => {
      const files = adapterHubFiles(parts);
      await rt.adapters.activateUniPelt(files);
      const got = await rt.logits(TOKENS);
      const ref = new UniPeltReferenceSession(ckpt, oracleLayers(files, parts));
      const want = ref.forward(TOKENS);
      expect(maxDiffRows(got, want)).toBeLessThan(1e-4);
      // Not the base: the part moves the logits far beyond the tolerance.
      rt.adapters.deactivate();
      expect(maxDiffRows(await rt.logits(TOKENS), want)).toBeGreaterThan(1e-2);
      // Decoding: the prompt in one call, then one call per token (each call its own gate mean).
      await rt.adapters.activateUniPelt(files);
      const out = await rt.complete(TOKENS.slice(0, 5), { maxTokens: 10, temperature: 0, eosTokenIds: [] });
      const step = new UniPeltReferenceSession(ckpt, oracleLayers(files, parts));
      let last = step.forward(TOKENS.slice(0, 5)).at(-1)!;
      const greedy: number[] = [];
      for (let i = 0; i < 10; i++) {
        greedy.push(argmax(last));
        last = step.forward([greedy[i]])[0];
      }
      expect(out.tokens).toEqual(greedy);
    });
  }

  it('with no UniPELT adapter the graph is the base, and a plain LoRA runs as on any graph', async () => {
    rt.adapters.deactivate();
    expect(maxDiffRows(await rt.logits(TOKENS), referenceLogitsWithAdapters(ckpt, [], TOKENS))).toBeLessThan(
      1e-4,
    );
    const lora = loadAdapter(makeLoraAdapter({ seed: 4, scale: 0.1 }), 'lora');
    await rt.adapters.add('lora', lora);
    await rt.adapters.activate('lora');
    expect(
      maxDiffRows(await rt.logits(TOKENS), referenceLogitsWithAdapters(ckpt, [{ adapter: lora }], TOKENS)),
    ).toBeLessThan(1e-4);
    await rt.adapters.remove('lora');
  });

  it('a UniPELT adapter on a graph without UniPELT slots is refused, and the active adapter stays', async () => {
    const plain = await Runtime.create({ model: memorySource(folder, 'stories260K') });
    try {
      await expect(plain.adapters.activateUniPelt(adapterHubFiles({ lora: true }))).rejects.toThrow(
        /slots: \{ unipelt: true \}/,
      );
      expect(
        maxDiffRows(await plain.logits(TOKENS), referenceLogitsWithAdapters(ckpt, [], TOKENS)),
      ).toBeLessThan(1e-4);
    } finally {
      await plain.release();
    }
  });

  it('refuses what UniPELT does not use, naming the file and the field or tensor', () => {
    const files = adapterHubFiles({ lora: true });
    const cfg = structuredClone(files.config) as { config: { configs: Record<string, unknown>[] } };
    cfg.config.configs[2].composition_mode = 'scale';
    const bad = () => parseAdapterHubUniPelt({ ...files, config: cfg }, c, 'up');
    expect(bad).toThrow(AdapterFormatError);
    expect(bad).toThrow(/up\/adapter_config\.json.*config\.configs\.lora\.composition_mode/);
    expect(() =>
      parseAdapterHubUniPelt({ ...files, config: new TextEncoder().encode('{"config": ') }, c, 'up'),
    ).toThrow(/up\/adapter_config\.json.*not valid UTF-8 JSON/);
    const extra = adapterHubFiles({ lora: true, bottleneck: true });
    expect(() => parseAdapterHubUniPelt(extra, { ...c, num_hidden_layers: 4 }, 'up')).toThrow(
      /not a tensor of a UniPELT adapter/,
    );
  });
});
