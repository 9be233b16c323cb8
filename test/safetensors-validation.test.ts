import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AdapterFormatError, ModelFormatError } from '../src/errors.js';
import {
  DTYPE_BITS,
  SAFETENSORS_DTYPES,
  type SafetensorsDtype,
  type SafetensorsEntry,
  parseSafetensors,
  serializeSafetensors,
} from '../src/formats/safetensors.js';

const enc = (s: string) => new TextEncoder().encode(s);

/** A file from a header length, header text and data bytes, without any validation. */
function raw(json: string, data: ArrayLike<number> = [], length?: number | bigint): Uint8Array {
  const h = enc(json);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(length ?? h.length), true);
  out.set(h, 8);
  out.set(Array.from(data), 8 + h.length);
  return out;
}

/** Parse, and return the thrown error (or undefined when the file is valid). */
function attempt(bytes: Uint8Array, opts?: Parameters<typeof parseSafetensors>[1]): unknown {
  try {
    parseSafetensors(bytes, opts);
    return undefined;
  } catch (e) {
    return e;
  }
}

function expectTyped(bytes: Uint8Array, pattern: RegExp): void {
  const e = attempt(bytes);
  expect(e).toBeInstanceOf(ModelFormatError);
  expect((e as Error).message).toMatch(pattern);
}

const valid = serializeSafetensors(
  [
    ['w', { dtype: 'F32', shape: [2, 2], bytes: new Uint8Array(16).map((_, i) => i) }],
    ['b', { dtype: 'U8', shape: [3], bytes: new Uint8Array([1, 2, 3]) }],
  ],
  { format: 'pt' },
);

describe('header validation', () => {
  it('refuses short files and bad header lengths', () => {
    expectTyped(new Uint8Array(0), /model\.safetensors: header: file is 0 bytes/);
    expectTyped(new Uint8Array(7), /file is 7 bytes/);
    expectTyped(raw('{}', [], 100_000_001), /header length 100000001 exceeds the 100000000-byte limit/);
    expectTyped(raw('{}', [], 2n ** 53n), /header length 9007199254740992 exceeds/);
    expectTyped(raw('{}', [], 2n ** 64n - 1n), /exceeds/);
    expectTyped(raw('{}', [], 3), /header length 3 runs past the end of the 10-byte file/);
  });

  it('refuses headers that are not a UTF-8 JSON object', () => {
    expectTyped(raw('{"a":'), /header is not valid JSON/);
    expectTyped(raw('[]'), /header is not a JSON object/);
    expectTyped(raw('null'), /not a JSON object/);
    expectTyped(raw('\uFEFF{}'), /not valid JSON/); // a BOM is not JSON (serde_json refuses it too)
    const bad = raw('{"\u00e9":1}');
    bad[10] = 0xff; // break the UTF-8 sequence of é
    expectTyped(bad, /header is not valid UTF-8/);
  });

  it('refuses bad entries, naming the tensor', () => {
    const entry = (e: unknown, data: number[] = []) => raw(JSON.stringify({ 'layer.w': e }), data);
    expectTyped(entry(1), /model\.safetensors: layer\.w: tensor entry is not an object/);
    expectTyped(entry({ dtype: 'F128', shape: [], data_offsets: [0, 16] }), /layer\.w: unknown dtype "F128"/);
    expectTyped(
      entry({ dtype: 'F32', shape: [-1], data_offsets: [0, 4] }),
      /layer\.w: shape must be an array of non-negative/,
    );
    expectTyped(entry({ dtype: 'F32', shape: [1.5], data_offsets: [0, 4] }), /shape must be/);
    expectTyped(entry({ dtype: 'F32', shape: '1', data_offsets: [0, 4] }), /shape must be/);
    expectTyped(
      entry({ dtype: 'F32', shape: [1], data_offsets: [0, 4, 8] }),
      /data_offsets must be \[begin, end\]/,
    );
    expectTyped(entry({ dtype: 'F32', shape: [1] }), /data_offsets must be/);
    expectTyped(
      entry({ dtype: 'F32', shape: [2], data_offsets: [0, 4] }, [0, 0, 0, 0]),
      /layer\.w: data_offsets \[0, 4\] hold 4 bytes but F32 \[2\] needs 8/,
    );
    expectTyped(
      entry({ dtype: 'F32', shape: [2 ** 30, 2 ** 30], data_offsets: [0, 4] }, [0, 0, 0, 0]),
      /overflows/,
    );
    expectTyped(raw('{"__metadata__":{"a":1}}'), /__metadata__\.a: metadata values must be strings/);
    expectTyped(raw('{"__metadata__":[]}'), /__metadata__: must be an object of strings/);
  });

  it('refuses overlapping, gapped and out-of-range offsets', () => {
    const two = (a: [number, number], b: [number, number], n: number) =>
      raw(
        JSON.stringify({
          a: { dtype: 'U8', shape: [a[1] - a[0]], data_offsets: a },
          b: { dtype: 'U8', shape: [Math.max(0, b[1] - b[0])], data_offsets: b },
        }),
        new Uint8Array(n),
      );
    expectTyped(two([0, 4], [2, 6], 6), /b: invalid data_offsets \[2, 6\]: overlaps the previous tensor/);
    expectTyped(
      two([0, 4], [5, 6], 6),
      /b: invalid data_offsets \[5, 6\]: leaves a gap \(expected begin 4\)/,
    );
    expectTyped(
      two([1, 4], [4, 6], 6),
      /a: invalid data_offsets \[1, 4\]: leaves a gap \(expected begin 0\)/,
    );
    expectTyped(two([0, 4], [4, 2], 6), /b: invalid data_offsets \[4, 2\]: end before begin/);
    expectTyped(two([0, 4], [4, 8], 6), /b: data_offsets \[4, 8\] run past the 6-byte data buffer/);
    expectTyped(two([0, 4], [4, 6], 7), /data_offsets: tensors cover 6 bytes but the data buffer has 7/);
    // the reference sorts by offsets, so header order does not matter
    const swapped = raw(
      JSON.stringify({
        b: { dtype: 'U8', shape: [2], data_offsets: [4, 6] },
        a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] },
      }),
      [0, 1, 2, 3, 4, 5],
    );
    expect([...parseSafetensors(swapped).tensors.keys()]).toEqual(['a', 'b']);
    expect([...parseSafetensors(swapped).tensors.get('b')!.bytes]).toEqual([4, 5]);
  });

  it('keeps metadata keys as own data, even __proto__', () => {
    const file = parseSafetensors(raw('{"__metadata__":{"__proto__":"x","format":"pt"}}'));
    expect(Object.getPrototypeOf(file.metadata)).toBe(Object.prototype);
    expect(Object.entries(file.metadata)).toEqual([
      ['__proto__', 'x'],
      ['format', 'pt'],
    ]);
  });

  it('throws the error class and file name asked for', () => {
    const e = attempt(raw('nope'), { file: 'adapter_model.safetensors', error: AdapterFormatError });
    expect(e).toBeInstanceOf(AdapterFormatError);
    expect((e as AdapterFormatError).file).toBe('adapter_model.safetensors');
    expect((e as AdapterFormatError).field).toBe('header');
  });
});

describe('property tests: any input gives a result or the typed error', () => {
  const typedOrValid = (bytes: Uint8Array) => {
    const e = attempt(bytes);
    if (e !== undefined && !(e instanceof ModelFormatError)) throw e;
  };

  it('random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), typedOrValid), { numRuns: 500 });
  });

  it('random bytes after a plausible header length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.nat(80), (body, n) => {
        const bytes = new Uint8Array(8 + body.length);
        new DataView(bytes.buffer).setUint32(0, n, true);
        bytes.set(body, 8);
        typedOrValid(bytes);
      }),
      { numRuns: 500 },
    );
  });

  it('every truncation and extension of a valid file', () => {
    expect(attempt(valid)).toBeUndefined();
    for (let len = 0; len < valid.length; len++)
      expect(attempt(valid.subarray(0, len))).toBeInstanceOf(ModelFormatError);
    const longer = new Uint8Array(valid.length + 1);
    longer.set(valid);
    expect(attempt(longer)).toBeInstanceOf(ModelFormatError);
  });

  it('single-byte corruptions of a valid file', () => {
    fc.assert(
      fc.property(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 }), (at, value) => {
        const bytes = valid.slice();
        bytes[at] = value;
        typedOrValid(bytes);
      }),
      { numRuns: 1000 },
    );
  });

  it('arbitrary JSON headers', () => {
    fc.assert(
      fc.property(fc.json(), fc.uint8Array({ maxLength: 16 }), (json, data) => typedOrValid(raw(json, data))),
      { numRuns: 500 },
    );
  });

  it('random entries with arbitrary shapes and offsets', () => {
    const entry = fc.record({
      dtype: fc.oneof(fc.constantFrom(...SAFETENSORS_DTYPES), fc.string()),
      shape: fc.array(fc.oneof(fc.nat(8), fc.integer(), fc.double(), fc.constant(2 ** 53)), { maxLength: 3 }),
      data_offsets: fc.array(fc.oneof(fc.nat(40), fc.integer(), fc.constant(2 ** 64)), { maxLength: 3 }),
    });
    fc.assert(
      fc.property(fc.dictionary(fc.string({ maxLength: 4 }), entry, { maxKeys: 4 }), fc.nat(40), (hdr, n) =>
        typedOrValid(raw(JSON.stringify(hdr), new Uint8Array(n))),
      ),
      { numRuns: 1000 },
    );
  });

  it('serialize -> parse -> serialize is the identity for random tensors', () => {
    const tensor = fc.constantFrom(...SAFETENSORS_DTYPES).chain((dtype: SafetensorsDtype) =>
      fc.array(fc.nat(3), { maxLength: 3 }).chain((shape) => {
        const count = shape.reduce((a, b) => a * b, 1);
        const bits = count * DTYPE_BITS[dtype];
        const n = bits % 8 === 0 ? bits / 8 : -1;
        return n < 0
          ? fc.constant(undefined)
          : fc
              .uint8Array({ minLength: n, maxLength: n })
              .map((bytes): SafetensorsEntry => ({ dtype, shape, bytes }));
      }),
    );
    fc.assert(
      fc.property(
        fc.dictionary(fc.string({ maxLength: 6 }), tensor, { maxKeys: 6 }),
        fc.option(fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), { maxKeys: 3 }), {
          nil: undefined,
        }),
        (dict, metadata) => {
          const entries = Object.entries(dict).filter(
            (e): e is [string, SafetensorsEntry] => e[1] !== undefined && e[0] !== '__metadata__',
          );
          const bytes = serializeSafetensors(entries, metadata);
          expect(new DataView(bytes.buffer).getUint32(0, true) % 8).toBe(0);
          const file = parseSafetensors(bytes);
          expect(file.metadata).toEqual({ ...(metadata ?? {}) });
          expect(file.tensors.size).toBe(entries.length);
          for (const [name, t] of entries) {
            const got = file.tensors.get(name);
            expect(got?.dtype).toBe(t.dtype);
            expect(got?.shape).toEqual(t.shape);
            expect([...(got?.bytes ?? [])]).toEqual([...t.bytes]);
          }
          expect([...serializeSafetensors(file.tensors, metadata)]).toEqual([...bytes]);
        },
      ),
      { numRuns: 300 },
    );
  });
});
