/**
 * The whole path a user takes: convert (llama2.c and HF safetensors) -> model folder -> onnxruntime-web
 * session -> logits and generation, checked against the float64 reference.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { Llama2cTokenizer, llama2cTokenizerToHfJson } from '../src/formats/llama2c-tokenizer.js';
import { writeHfCheckpoint, readHfCheckpoint } from '../src/formats/hf-checkpoint.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { loadModel } from '../src/load-model.js';
import { referenceLogits, ReferenceSession, argmax } from '../src/reference/llama.js';
import type { Checkpoint } from '../src/formats/checkpoint.js';
import type { DecoderProfile } from '../src/graph/llama.js';
import { InvalidInputError, ModelFormatError } from '../src/errors.js';
import { maxAbsDiff } from './helpers/numeric.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const tokenizerBin = bytes(fixture('llama2c/tok512.bin'));
const tokenizer = Llama2cTokenizer.parse(tokenizerBin, 512, 'tok512.bin');

function folder(c: Checkpoint, profile: DecoderProfile, externalData = false) {
  const files = checkpointToModelFolder(c, {
    profile,
    externalData,
    tokenizerFiles: new Map([['tokenizer.bin', tokenizerBin]]),
  });
  return memorySource(files, `stories260K-${profile}`);
}

/** 64 tokens of real text, so attention patterns are the ones the model meets. */
const text = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8').slice(0, 2000);
const tokens = tokenizer.encode(text, { bos: true }).slice(0, 64);

describe('model folder -> onnxruntime-web logits equal the float64 reference', () => {
  const expected = referenceLogits(ckpt, tokens);

  for (const profile of ['standard', 'contrib'] as const) {
    it(`llama2c conversion, ${profile} profile: one-shot and prefill + token by token`, async () => {
      const model = await loadModel(folder(ckpt, profile));
      const oneShot = await model.logits(tokens);
      expect(oneShot).toHaveLength(64);
      for (let i = 0; i < 64; i++) expect(maxAbsDiff(oneShot[i], expected[i])).toBeLessThan(1e-4);

      let { logits, cache } = await model.session.forward(tokens.slice(0, 32), model.session.emptyCache());
      for (let i = 0; i < 32; i++)
        expect(maxAbsDiff(logits.subarray(i * 512, (i + 1) * 512), expected[i])).toBeLessThan(1e-4);
      for (let i = 32; i < 64; i++) {
        ({ logits, cache } = await model.session.forward([tokens[i]], cache));
        expect(maxAbsDiff(logits, expected[i])).toBeLessThan(1e-4);
      }
      expect(cache.length).toBe(64);
      await model.release();
    });
  }

  it('HF safetensors conversion (F32) of the same weights gives the same logits, with external data', async () => {
    const hfFiles = writeHfCheckpoint(ckpt);
    const hf = await readHfCheckpoint(async (name) => hfFiles.get(name), 'hf');
    const model = await loadModel(folder(hf, 'standard', true));
    const logits = await model.logits(tokens);
    for (let i = 0; i < 64; i++) expect(maxAbsDiff(logits[i], expected[i])).toBeLessThan(1e-4);
    await model.release();
  });
});

describe('generation', () => {
  it('greedy generation equals greedy decoding of the reference, token for token', async () => {
    const model = await loadModel(folder(ckpt, 'contrib'));
    const prompt = tokenizer.encode('Lily and Ben', { bos: true });
    const { tokens: got } = await model.complete(prompt, { maxTokens: 40, eosTokenIds: [] });
    const ref = new ReferenceSession(ckpt);
    let logits!: Float64Array;
    for (const t of prompt) logits = ref.step(t);
    const want: number[] = [];
    for (let i = 0; i < 40; i++) {
      const t = argmax(logits);
      want.push(t);
      logits = ref.step(t);
    }
    expect(got).toEqual(want);
    await model.release();
  });

  it('streamed text equals the decode of the whole sequence; the same seed gives the same sample', async () => {
    const model = await loadModel(folder(ckpt, 'contrib'));
    const prompt = 'Once upon a time';
    const options = { maxTokens: 60, temperature: 0.9, topP: 0.95, seed: 3 };
    const a = await model.complete(prompt, options);
    const b = await model.complete(prompt, options);
    expect(b.tokens).toEqual(a.tokens);
    const promptTokens = tokenizer.encode(prompt, { bos: true });
    const all = tokenizer.decode([...promptTokens, ...a.tokens]);
    const eosAt = a.finishReason === 'eos' ? a.tokens.length - 1 : a.tokens.length;
    expect(tokenizer.decode(promptTokens) + a.text).toBe(
      tokenizer.decode([...promptTokens, ...a.tokens.slice(0, eosAt)]),
    );
    expect(all.startsWith(prompt)).toBe(true);
    await model.release();
  });

  it('stops at a stop string and does not return it', async () => {
    const model = await loadModel(folder(ckpt, 'contrib'));
    const full = await model.complete('Once upon a time', { maxTokens: 60 });
    const stop = full.text.slice(20, 24);
    const cut = await model.complete('Once upon a time', { maxTokens: 60, stop: [stop] });
    expect(cut.finishReason).toBe('stop');
    expect(cut.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    await model.release();
  });

  it('an AbortSignal cancels generation between tokens', async () => {
    const model = await loadModel(folder(ckpt, 'contrib'));
    const controller = new AbortController();
    let n = 0;
    await expect(
      (async () => {
        for await (const _ of model.generate('Once upon a time', {
          maxTokens: 100,
          signal: controller.signal,
        })) {
          if (++n === 5) controller.abort();
        }
      })(),
    ).rejects.toThrow(/abort/i);
    expect(n).toBe(5);
    await model.release();
  });
});

describe('bad input is a typed error naming what is wrong', () => {
  it('token ids outside the vocabulary', async () => {
    const model = await loadModel(folder(ckpt, 'contrib'));
    await expect(model.logits([1, 512])).rejects.toThrow(InvalidInputError);
    await expect(model.logits([1, 512])).rejects.toThrow(
      /tokens: \[1\]: token id 512 is outside the vocabulary \[0, 512\)/,
    );
    await expect(model.logits([-1])).rejects.toThrow(InvalidInputError);
    await model.release();
  });

  it('a prompt longer than the context', async () => {
    const model = await loadModel(folder(ckpt, 'contrib'));
    const long = new Array<number>(512).fill(300);
    expect(() => model.generate(long)).toThrow(/512 tokens leave no room to generate in a context of 512/);
    await expect(model.logits(new Array<number>(513).fill(300))).rejects.toThrow(/exceed the context of 512/);
    await model.release();
  });

  it('a folder without config.json or model.onnx', async () => {
    await expect(loadModel(memorySource(new Map(), 'empty'))).rejects.toThrow(ModelFormatError);
    await expect(loadModel(memorySource(new Map(), 'empty'))).rejects.toThrow(/empty\/config.json: missing/);
    const files = checkpointToModelFolder(ckpt, {
      tokenizerFiles: new Map([['tokenizer.bin', tokenizerBin]]),
    });
    files.delete('model.onnx');
    await expect(loadModel(memorySource(files, 'm'))).rejects.toThrow(/m\/model.onnx: missing/);
  });
});

it('the HF tokenizer.json written for a llama2c model loads when tokenizer.bin is absent', async () => {
  const files = checkpointToModelFolder(ckpt, {
    tokenizerFiles: new Map([
      ['tokenizer.json', new TextEncoder().encode(JSON.stringify(llama2cTokenizerToHfJson(tokenizer)))],
    ]),
  });
  const model = await loadModel(memorySource(files, 'hf-tok'));
  expect(model.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
  await model.release();
});

it('an unreachable tokenizer.bin (offline, not in the folder) falls back to tokenizer.json; without one it is the error', async () => {
  const files = checkpointToModelFolder(ckpt, {
    tokenizerFiles: new Map([
      ['tokenizer.json', new TextEncoder().encode(JSON.stringify(llama2cTokenizerToHfJson(tokenizer)))],
    ]),
  });
  const offline = (f: Map<string, Uint8Array>) => {
    const inner = memorySource(f, 'offline');
    return {
      label: 'offline',
      read: (name: string) =>
        name === 'tokenizer.bin'
          ? Promise.reject(new Error('network error: Failed to fetch'))
          : inner.read(name),
    };
  };
  const model = await loadModel(offline(files));
  expect(model.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
  await model.release();
  files.delete('tokenizer.json');
  await expect(loadModel(offline(files))).rejects.toThrow(/network error: Failed to fetch/);
});

describe('backends and stopping', () => {
  it('the onnxruntime-node backend gives the same logits as the reference', async () => {
    const model = await loadModel(folder(ckpt, 'standard'), { backend: 'node', threads: 1 });
    expect(model.backend).toBe('node');
    const logits = await model.logits(tokens.slice(0, 32));
    const expected = referenceLogits(ckpt, tokens.slice(0, 32));
    for (let i = 0; i < 32; i++) expect(maxAbsDiff(logits[i], expected[i])).toBeLessThan(1e-4);
    await model.release();
  });

  it('stops at an EOS token without printing it, and at maxTokens', async () => {
    const model = await loadModel(folder(ckpt, 'standard'));
    const free = await model.complete('Once upon a time', { maxTokens: 12, eosTokenIds: [] });
    expect(free.finishReason).toBe('length');
    expect(free.tokens).toHaveLength(12);
    const eos = free.tokens[5];
    const stopped = await model.complete('Once upon a time', { maxTokens: 12, eosTokenIds: [eos] });
    expect(stopped.finishReason).toBe('eos');
    expect(stopped.tokens).toEqual(free.tokens.slice(0, free.tokens.indexOf(eos) + 1));
    const promptTokens = tokenizer.encode('Once upon a time', { bos: true });
    expect(stopped.text).toBe(
      tokenizer.decode([...promptTokens, ...stopped.tokens.slice(0, -1)]).slice('Once upon a time'.length),
    );
    await model.release();
  });
});
