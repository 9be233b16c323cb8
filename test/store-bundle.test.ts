import { unzipSync, zipSync } from 'fflate';
import { describe, expect, it, vi } from 'vitest';
import { AdapterFormatError } from '../src/errors.js';
import { parsePeftAdapter, serializePeftAdapter } from '../src/formats/peft-adapter.js';
import { float16Entry, serializeSafetensors, tensorToFloat32 } from '../src/formats/safetensors.js';
import { readAdapterBundle, writeAdapterBundle } from '../src/store/bundle.js';
import { sha256Hex } from '../src/store/hash.js';

const enc = (s: string) => new TextEncoder().encode(s);
const CONFIG = enc(
  JSON.stringify({
    peft_type: 'LORA',
    r: 2,
    lora_alpha: 4,
    target_modules: ['q_proj'],
    task_type: 'CAUSAL_LM',
  }),
);
const A = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight';
const B = 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight';
const aValues = Float32Array.from({ length: 16 }, (_, i) => (i - 8) / 16); // exact in float16
const bValues = Float32Array.from({ length: 16 }, (_, i) => i / 4);
const WEIGHTS = serializeSafetensors(
  [
    [A, float16Entry(aValues, [2, 8])],
    [B, float16Entry(bValues, [8, 2])],
  ],
  { format: 'pt' },
);
const files = (config = CONFIG, weights = WEIGHTS) =>
  new Map([
    ['adapter_config.json', config],
    ['adapter_model.safetensors', weights],
  ]);

function refusal(fn: () => unknown): AdapterFormatError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(AdapterFormatError);
    return e as AdapterFormatError;
  }
  throw new Error('expected an AdapterFormatError');
}

describe('adapter bundles', () => {
  it('round-trips an F16 LoRA adapter byte for byte, and PEFT parsing reads the values back', () => {
    const zip = writeAdapterBundle(files());
    const { config, weights } = readAdapterBundle(zip, 'style');
    expect(config).toEqual(CONFIG);
    expect(weights).toEqual(WEIGHTS);
    const adapter = parsePeftAdapter({ config, weights }, 'style');
    expect(adapter.tensors.get(A)?.dtype).toBe('F16');
    expect(tensorToFloat32(adapter.tensors.get(A)!)).toEqual(aValues);
    expect(tensorToFloat32(adapter.tensors.get(B)!)).toEqual(bValues);
    // and serializePeftAdapter's map bundles directly
    const again = readAdapterBundle(writeAdapterBundle(serializePeftAdapter(adapter)), 'style');
    expect(again.weights).toEqual(WEIGHTS);
  });

  it('writes the same bytes (and so the same sha256) for the same files, at any time', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      vi.setSystemTime(new Date(2024, 0, 1));
      const first = writeAdapterBundle(files());
      const plainFirst = zipSync({ 'adapter_config.json': CONFIG });
      vi.setSystemTime(new Date(2031, 6, 9, 13, 37, 11));
      const second = writeAdapterBundle(files());
      expect(await sha256Hex(second)).toBe(await sha256Hex(first));
      // (a zip stamped with the clock would differ)
      expect(await sha256Hex(zipSync({ 'adapter_config.json': CONFIG }))).not.toBe(
        await sha256Hex(plainFirst),
      );
    } finally {
      vi.useRealTimers();
    }
    // level 0 stores: the archive is the files plus headers
    const stored = writeAdapterBundle(files(), { level: 0 });
    expect(stored.length).toBeGreaterThan(CONFIG.length + WEIGHTS.length);
    expect(readAdapterBundle(stored, 's').weights).toEqual(WEIGHTS);
  });

  it('finds the files under one folder, ignoring other files and macOS resource forks', () => {
    const zip = zipSync({
      'my-adapter/': new Uint8Array(0),
      'my-adapter/README.md': enc('# hi'),
      'my-adapter/adapter_config.json': CONFIG,
      'my-adapter/adapter_model.safetensors': WEIGHTS,
      '__MACOSX/my-adapter/._adapter_config.json': enc('junk'),
      '__MACOSX/my-adapter/adapter_config.json': enc('junk'),
    });
    const got = readAdapterBundle(zip, 'x');
    expect(got.config).toEqual(CONFIG);
    expect(got.weights).toEqual(WEIGHTS);
  });

  it('refuses missing, ambiguous, split or too deep adapter files, naming them', () => {
    expect(
      refusal(() => readAdapterBundle(zipSync({ 'adapter_config.json': CONFIG }), 'style')).message,
    ).toBe(
      'style: adapter_model.safetensors: missing from the bundle, at its root or in one folder; it holds adapter_config.json',
    );
    expect(
      refusal(() =>
        readAdapterBundle(
          zipSync({
            'a/adapter_config.json': CONFIG,
            'b/adapter_config.json': CONFIG,
            'a/adapter_model.safetensors': WEIGHTS,
          }),
          'style',
        ),
      ).message,
    ).toBe(
      'style: adapter_config.json: found a/adapter_config.json, b/adapter_config.json: a bundle holds one adapter',
    );
    expect(
      refusal(() =>
        readAdapterBundle(
          zipSync({ 'a/adapter_config.json': CONFIG, 'adapter_model.safetensors': WEIGHTS }),
          'style',
        ),
      ).message,
    ).toBe('style: a/adapter_config.json and adapter_model.safetensors are in different folders');
    expect(
      refusal(() =>
        readAdapterBundle(
          zipSync({ 'a/b/adapter_config.json': CONFIG, 'a/b/adapter_model.safetensors': WEIGHTS }),
          'style',
        ),
      ).message,
    ).toContain(
      'adapter_config.json: missing from the bundle, at its root or in one folder (found a/b/adapter_config.json, more than one folder deep)',
    );
    expect(refusal(() => readAdapterBundle(zipSync({}), 'style')).message).toContain('; it is empty');
  });

  it('refuses a file that is not a zip', () => {
    const e = refusal(() => readAdapterBundle(WEIGHTS, 'style <https://cdn.example.test/s.zip>'));
    expect(e.file).toBe('style <https://cdn.example.test/s.zip>');
    expect(e.message).toContain('not a valid zip file');
  });

  it.each([
    ['../adapter_config.json', "has a '..' segment"],
    ['a/../../adapter_config.json', "has a '..' segment"],
    ['/etc/adapter_config.json', 'is an absolute path'],
    ['a\\adapter_config.json', 'contains a backslash'],
    ['C:/adapter_config.json', 'starts with a drive letter'],
  ])('refuses the path-traversal name %s', (name, why) => {
    const zip = zipSync({
      [name]: CONFIG,
      'adapter_config.json': CONFIG,
      'adapter_model.safetensors': WEIGHTS,
    });
    const e = refusal(() => readAdapterBundle(zip, 'style'));
    expect(e.field).toBe(name);
    expect(e.message).toBe(`style: ${name}: unsafe entry name: ${why}`);
    expect(() => writeAdapterBundle(new Map([[name, CONFIG]]))).toThrow(AdapterFormatError);
  });

  it('refuses a zip bomb by its declared size before inflating it', () => {
    const zeros = new Uint8Array(4 << 20); // 4 MiB of zeros deflate to a few KiB
    const bomb = zipSync({ 'adapter_config.json': CONFIG, 'adapter_model.safetensors': zeros });
    expect(bomb.length).toBeLessThan(20_000);
    expect(refusal(() => readAdapterBundle(bomb, 'bomb', { maxBytes: 1 << 20 })).message).toBe(
      `bomb: adapter_model.safetensors: inflates to ${4 << 20} bytes, over the ${1 << 20}-byte limit`,
    );
    // the two files together count
    expect(refusal(() => readAdapterBundle(bomb, 'bomb', { maxBytes: (4 << 20) + 10 })).message).toBe(
      `bomb: the adapter files inflate to ${(4 << 20) + CONFIG.length} bytes, over the ${(4 << 20) + 10}-byte limit`,
    );
  });

  it('refuses an archive whose directory lies about a size (no 3 GB allocation, no silent truncation)', () => {
    const zip = writeAdapterBundle(files());
    const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
    const patch = (size: number) => {
      const copy = zip.slice();
      const v = new DataView(copy.buffer);
      // central directory headers: signature 0x02014b50; uncompressed size at +24, name length at +28, name at +46
      for (let at = 0; at + 46 < copy.length; at++) {
        if (view.getUint32(at, true) !== 0x02014b50) continue;
        const name = new TextDecoder().decode(zip.subarray(at + 46, at + 46 + view.getUint16(at + 28, true)));
        if (name === 'adapter_model.safetensors') v.setUint32(at + 24, size, true);
      }
      return copy;
    };
    expect(refusal(() => readAdapterBundle(patch(0xc0000000), 'liar')).message).toBe(
      `liar: adapter_model.safetensors: inflates to ${0xc0000000} bytes, over the ${2 ** 31}-byte limit`,
    );
    expect(refusal(() => readAdapterBundle(patch(WEIGHTS.length + 100), 'liar')).message).toBe(
      `liar: adapter_model.safetensors: inflated to ${WEIGHTS.length} bytes, the archive declares ${WEIGHTS.length + 100}`,
    );
    expect(Object.keys(unzipSync(zip))).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
  });

  it('refuses duplicate entry names', () => {
    // fflate's writer takes an object, so make the duplicate by renaming an entry in place
    const zip = zipSync({
      'adapter_config.json': CONFIG,
      'adapter_model.safetensors': WEIGHTS,
      'adapter_config.jsoX': CONFIG,
    });
    const text = new TextDecoder('latin1').decode(zip);
    const bytes = zip.slice();
    for (
      let i = text.indexOf('adapter_config.jsoX');
      i >= 0;
      i = text.indexOf('adapter_config.jsoX', i + 1)
    ) {
      bytes[i + 'adapter_config.jso'.length] = 'n'.charCodeAt(0);
    }
    expect(refusal(() => readAdapterBundle(bytes, 'dup')).message).toBe(
      'dup: adapter_config.json: duplicate entry name',
    );
  });
});
