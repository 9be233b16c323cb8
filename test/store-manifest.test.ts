import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import { ManifestError } from '../src/store/errors.js';
import { isSha256Hex, sha256Hex } from '../src/store/hash.js';
import {
  FINGERPRINT_SCHEME,
  fingerprintText,
  modelFingerprint,
  parseManifest,
} from '../src/store/manifest.js';

const ABC_SHA256 = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const H1 = 'a'.repeat(64);
const H2 = 'b'.repeat(64);
const H3 = 'c'.repeat(64);
const MANIFEST_URL = 'https://cdn.example.test/adapters/v2/adapters.json';

/** A TinyLlama-1.1B-shaped config.json, as transformers writes it (many fields not in the fingerprint). */
const TINY_LLAMA = {
  architectures: ['LlamaForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 5632,
  max_position_embeddings: 2048,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 22,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.35.0',
  use_cache: true,
  vocab_size: 32000,
};

function manifest(adapters: unknown[], extra: Record<string, unknown> = {}) {
  return { version: 1, base: { fingerprint: H1, name: 'tiny-llama' }, adapters, ...extra };
}

const entry = (over: Record<string, unknown> = {}) => ({
  id: 'style-formal',
  version: '3',
  method: 'LORA',
  base: H1,
  url: 'style-formal.zip',
  sha256: H2,
  bytes: 123456,
  format: 'zip',
  ...over,
});

describe('sha256Hex', () => {
  it('matches the FIPS 180-2 digests of "abc" and of the empty string', async () => {
    expect(await sha256Hex(new TextEncoder().encode('abc'))).toBe(ABC_SHA256);
    expect(await sha256Hex(new Uint8Array(0))).toBe(EMPTY_SHA256);
    // a view into a larger buffer hashes only the view's bytes
    const padded = new Uint8Array([0, 0x61, 0x62, 0x63, 0]);
    expect(await sha256Hex(padded.subarray(1, 4))).toBe(ABC_SHA256);
    expect(isSha256Hex(ABC_SHA256)).toBe(true);
    expect(isSha256Hex(ABC_SHA256.toUpperCase())).toBe(false);
  });
});

describe('parseManifest', () => {
  it('reads the documented example, resolving relative URLs against the manifest URL', () => {
    const m = parseManifest(
      manifest([
        entry({ description: 'Formal register', version: 3 }),
        entry({
          id: 'pirate',
          method: 'IA3',
          base: H1.toUpperCase(),
          url: '../shared/pirate/',
          sha256: H3,
          bytes: 4096,
          format: 'peft-folder',
          config_sha256: H2,
        }),
        entry({ id: 'abs', url: 'https://other.example.test/a.zip' }),
      ]),
      MANIFEST_URL,
    );
    expect(m.version).toBe(1);
    expect(m.url).toBe(MANIFEST_URL);
    expect(m.base).toEqual({ fingerprint: H1, name: 'tiny-llama' });
    expect(m.adapters).toHaveLength(3);
    expect(m.adapters[0]).toEqual({
      id: 'style-formal',
      version: '3',
      method: 'LORA',
      base: H1,
      url: 'https://cdn.example.test/adapters/v2/style-formal.zip',
      sha256: H2,
      bytes: 123456,
      format: 'zip',
      description: 'Formal register',
    });
    expect(m.adapters[1].url).toBe('https://cdn.example.test/adapters/shared/pirate/');
    expect(m.adapters[1].base).toBe(H1); // upper case normalised
    expect(m.adapters[1].config_sha256).toBe(H2);
    expect(m.adapters[2].url).toBe('https://other.example.test/a.zip');
  });

  it('reads the example of docs/adapter-manifest.md', () => {
    const doc = readFileSync(new URL('../docs/adapter-manifest.md', import.meta.url), 'utf8');
    const json = /```json\n([\s\S]*?)```/.exec(doc)?.[1];
    const m = parseManifest(json, 'https://app.example.test/adapters.json');
    expect(m.adapters.map((a) => [a.id, a.format, a.url])).toEqual([
      ['style-formal', 'zip', 'https://app.example.test/bundles/style-formal-3.zip'],
      ['pirate', 'peft-folder', 'https://models.example.com/pirate-dora/'],
    ]);
    expect(m.base.fingerprint).toBe('f54eaf10a1c66f389a59a22413bae117c651d2579114296c2a98dbef2abaf313');
    // the documented fingerprint text and hash are the library's
    expect(doc).toContain(fingerprintText(TINY_LLAMA));
  });

  it('accepts the JSON text too', () => {
    expect(parseManifest(JSON.stringify(manifest([entry()])), MANIFEST_URL).adapters[0].id).toBe(
      'style-formal',
    );
  });

  it('keeps relative URLs as written when there is nothing to resolve them against', () => {
    expect(parseManifest(manifest([entry()]), 'adapters.json').adapters[0].url).toBe('style-formal.zip');
  });

  const cases: [string, unknown, string][] = [
    ['not JSON', '{"version":', 'adapters.json: not valid JSON'],
    ['an array', [], 'adapters.json: must be a JSON object'],
    [
      'version 2',
      { ...manifest([]), version: 2 },
      'adapters.json: version: unsupported version 2; this library reads version 1',
    ],
    ['no version', { base: { fingerprint: H1 }, adapters: [] }, 'adapters.json: version: missing'],
    [
      'bad base fingerprint',
      manifest([], { base: { fingerprint: 'abc' } }),
      'adapters.json: base.fingerprint: expected 64 hex characters',
    ],
    ['no base', { version: 1, adapters: [] }, 'adapters.json: base: expected an object'],
    ['adapters not an array', manifest([], { adapters: {} }), 'adapters.json: adapters: expected an array'],
    [
      'a short sha256',
      manifest([entry(), entry({ id: 'b' }), entry({ id: 'c', sha256: 'abc' })]),
      'adapters.json: adapters[2].sha256: expected 64 hex characters',
    ],
    [
      'a non-hex sha256',
      manifest([entry({ sha256: 'g'.repeat(64) })]),
      'adapters.json: adapters[0].sha256: expected 64 hex characters',
    ],
    ['no id', manifest([entry({ id: undefined })]), 'adapters.json: adapters[0].id: missing'],
    [
      'an empty id',
      manifest([entry({ id: '' })]),
      'adapters.json: adapters[0].id: expected a non-empty string',
    ],
    [
      'a duplicate id',
      manifest([entry(), entry()]),
      'adapters.json: adapters[1].id: duplicate id "style-formal" (also adapters[0])',
    ],
    [
      'bytes 0',
      manifest([entry({ bytes: 0 })]),
      'adapters.json: adapters[0].bytes: expected a positive integer, got 0',
    ],
    [
      'bytes as a string',
      manifest([entry({ bytes: '12' })]),
      'adapters.json: adapters[0].bytes: expected a positive integer, got "12"',
    ],
    [
      'fractional bytes',
      manifest([entry({ bytes: 1.5 })]),
      'adapters.json: adapters[0].bytes: expected a positive integer, got 1.5',
    ],
    [
      'an unknown format',
      manifest([entry({ format: 'tar' })]),
      'adapters.json: adapters[0].format: expected "zip" or "peft-folder", got "tar"',
    ],
    ['no format', manifest([entry({ format: undefined })]), 'adapters.json: adapters[0].format: missing'],
    [
      'a peft-folder without config_sha256',
      manifest([entry({ format: 'peft-folder' })]),
      'adapters.json: adapters[0].config_sha256: missing',
    ],
    [
      'config_sha256 on a zip',
      manifest([entry({ config_sha256: H3 })]),
      'adapters.json: adapters[0].config_sha256: only a "peft-folder" entry has one',
    ],
    ['no method', manifest([entry({ method: undefined })]), 'adapters.json: adapters[0].method: missing'],
    [
      'a bad base',
      manifest([entry({ base: 'x' })]),
      'adapters.json: adapters[0].base: expected 64 hex characters',
    ],
    [
      'a bad URL',
      manifest([entry({ url: 'http://[oops' })]),
      'adapters.json: adapters[0].url: "http://[oops" is not a valid URL',
    ],
    [
      'a bad version',
      manifest([entry({ version: -1 })]),
      'adapters.json: adapters[0].version: expected a string or a non-negative integer, got -1',
    ],
    [
      'a bad description',
      manifest([entry({ description: 7 })]),
      'adapters.json: adapters[0].description: expected a string, got 7',
    ],
    ['an entry that is not an object', manifest([7]), 'adapters.json: adapters[0]: expected an object'],
  ];
  it.each(cases)('refuses %s, naming the field', (_name, json, message) => {
    let error: unknown;
    try {
      parseManifest(json, MANIFEST_URL);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ManifestError);
    expect((error as Error).message.startsWith(message)).toBe(true);
  });
});

describe('modelFingerprint', () => {
  it('hashes the canonical text of the architecture fields, defaults filled in', async () => {
    const text = fingerprintText(TINY_LLAMA);
    expect(text).toBe(
      '{"head_dim":64,"hidden_size":2048,"intermediate_size":5632,"model_type":"llama","num_attention_heads":32,' +
        '"num_hidden_layers":22,"num_key_value_heads":4,"rms_norm_eps":0.00001,"rope_theta":10000,' +
        `"scheme":"${FINGERPRINT_SCHEME}","tie_word_embeddings":false,"vocab_size":32000,"weights":null}`,
    );
    const fp = await modelFingerprint(TINY_LLAMA);
    expect(fp).toBe(await sha256Hex(new TextEncoder().encode(text)));
    // pinned (computed independently with Python's hashlib over the text above; documented in
    // docs/adapter-manifest.md): a change here is a change of scheme
    expect(fp).toBe('f54eaf10a1c66f389a59a22413bae117c651d2579114296c2a98dbef2abaf313');
    expect(isSha256Hex(fp)).toBe(true);
  });

  it('is the same for a config that spells the defaults out and one that leaves them implicit', async () => {
    const implicit = {
      model_type: 'llama',
      hidden_size: 64,
      intermediate_size: 172,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: 512,
    };
    const explicit = {
      ...implicit,
      num_key_value_heads: 4,
      head_dim: 16,
      rope_theta: 10000.0,
      rms_norm_eps: 0.000001,
      tie_word_embeddings: false,
      torch_dtype: 'float32',
      head_dim_unused: 1,
    };
    expect(await modelFingerprint(explicit)).toBe(await modelFingerprint(implicit));
    expect(await modelFingerprint({ ...implicit, num_key_value_heads: null })).toBe(
      await modelFingerprint(implicit),
    );
  });

  it('differs for another architecture, or other weights', async () => {
    const base = await modelFingerprint(TINY_LLAMA);
    const variants = [
      { ...TINY_LLAMA, num_hidden_layers: 21 },
      { ...TINY_LLAMA, num_key_value_heads: 32 },
      { ...TINY_LLAMA, rope_theta: 500000 },
      { ...TINY_LLAMA, rms_norm_eps: 1e-6 },
      { ...TINY_LLAMA, tie_word_embeddings: true },
      { ...TINY_LLAMA, model_type: 'mistral' },
      { ...TINY_LLAMA, vocab_size: 32001 },
    ];
    const prints = await Promise.all(variants.map((v) => modelFingerprint(v)));
    const weighted = await modelFingerprint(TINY_LLAMA, { weights: H3 });
    expect(new Set([base, weighted, ...prints]).size).toBe(variants.length + 2);
    // fields outside the architecture do not matter
    expect(await modelFingerprint({ ...TINY_LLAMA, torch_dtype: 'float16', use_cache: false })).toBe(base);
    expect(fingerprintText(TINY_LLAMA, { weights: H3 })).toContain(`"weights":"${H3}"`);
  });

  it('names the config field at fault', async () => {
    const { hidden_size: _, ...noHidden } = TINY_LLAMA;
    await expect(modelFingerprint(noHidden)).rejects.toThrow(
      new ModelFormatError('config.json', 'hidden_size', 'missing'),
    );
    await expect(
      modelFingerprint({ ...TINY_LLAMA, vocab_size: 0 }, { file: 'base/config.json' }),
    ).rejects.toThrow('base/config.json: vocab_size: expected a positive integer, got 0');
    await expect(modelFingerprint({ ...TINY_LLAMA, tie_word_embeddings: 'no' })).rejects.toThrow(
      'config.json: tie_word_embeddings: expected true or false',
    );
  });
});
