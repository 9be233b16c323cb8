import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdapterFormatError } from '../src/errors.js';
import {
  DTYPE_BITS,
  SAFETENSORS_DTYPES,
  type SafetensorsEntry,
  bfloat16Entry,
  float16Entry,
  float32Entry,
  parseSafetensors,
  serializeSafetensors,
  tensorToFloat32,
} from '../src/formats/safetensors.js';
import { fixture } from './fixtures.js';

const PEFT_FILES = [
  'peft/chessgpt-gpt2-lora/adapter_model.safetensors',
  'peft/gpt2-tigrinya-lora/adapter_model.safetensors',
];

const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));
const u64le = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24, 0, 0, 0, 0];

function header(obj: unknown, data: number[] = [], pad = true): Uint8Array {
  let json = JSON.stringify(obj);
  if (pad) json += ' '.repeat((8 - (json.length % 8)) % 8);
  return new Uint8Array([...u64le(json.length), ...ascii(json), ...data]);
}

describe('real PEFT safetensors files', () => {
  for (const rel of PEFT_FILES) {
    it(`${rel}: parses and re-serializes byte for byte`, () => {
      const bytes = new Uint8Array(readFileSync(fixture(rel)));
      const file = parseSafetensors(bytes, { file: 'adapter_model.safetensors', error: AdapterFormatError });
      expect(file.metadata).toEqual({ format: 'pt' });
      // GPT-2 LoRA r=8: c_attn A [8,768] B [2304,8]; every tensor F32 and a view into the file
      const a = file.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight');
      const b = file.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight');
      expect(a?.shape).toEqual([8, 768]);
      expect(b?.shape).toEqual([2304, 8]);
      for (const t of file.tensors.values()) {
        expect(t.dtype).toBe('F32');
        expect(t.bytes.buffer).toBe(bytes.buffer);
      }
      // the header's first tensor starts right after the header: bytes 8+N.. hold A's first float
      const n = new DataView(bytes.buffer).getUint32(0, true);
      const first = new DataView(bytes.buffer).getFloat32(8 + n, true);
      expect(tensorToFloat32(a as SafetensorsEntry)[0]).toBe(first);

      const again = serializeSafetensors(file.tensors, file.metadata);
      expect(again.length).toBe(bytes.length);
      expect(Buffer.from(again).equals(Buffer.from(bytes))).toBe(true);
      // also when the tensors come in another order: the writer sorts as the library does
      const shuffled = [...file.tensors].reverse();
      expect(Buffer.from(serializeSafetensors(shuffled, file.metadata)).equals(Buffer.from(bytes))).toBe(
        true,
      );
    });
  }
});

describe('hand-built files', () => {
  it('writes the bytes of the reference test_serialization example', () => {
    // safetensors' own Rust test: attn.0, F32 [1,2,3] = 0..5, no metadata
    const data = new Float32Array([0, 1, 2, 3, 4, 5]);
    const out = serializeSafetensors([['attn.0', float32Entry(data, [1, 2, 3])]]);
    expect([...out]).toEqual([
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101,
      34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34,
      100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0,
      0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ]);
  });

  it('pads the header with spaces (reference test_empty and forced alignment)', () => {
    expect([...serializeSafetensors([])]).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    expect([...serializeSafetensors([], { framework: 'pt' })]).toEqual([
      40,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      ...ascii('{"__metadata__":{"framework":"pt"}}'),
      32,
      32,
      32,
      32,
      32,
    ]);
    const out = serializeSafetensors([
      ['attn0', float32Entry(new Float32Array([0, 1, 2, 3, 4, 5]), [1, 1, 2, 3])],
    ]);
    const json = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}';
    expect(json.length).toBe(65);
    expect([...out.subarray(0, 8 + 72)]).toEqual([
      72,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      ...ascii(json),
      32,
      32,
      32,
      32,
      32,
      32,
      32,
    ]);
  });

  it('orders tensors by descending dtype, then by name (code point order)', () => {
    const u8 = (n: number): SafetensorsEntry => ({
      dtype: 'U8',
      shape: [n],
      bytes: new Uint8Array(n).fill(n),
    });
    const out = serializeSafetensors([
      ['b', u8(1)],
      ['a', u8(2)],
      ['z', { dtype: 'I64', shape: [1], bytes: new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0]) }],
      ['m', { dtype: 'F16', shape: [1], bytes: new Uint8Array([0, 0x3c]) }],
      ['\u{1F600}', u8(1)], // U+1F600 sorts after U+FFFD in UTF-8, before it in UTF-16
      ['\uFFFD', u8(1)],
    ]);
    const text = new TextDecoder().decode(out.subarray(8, 8 + new DataView(out.buffer).getUint32(0, true)));
    const names = Object.keys(JSON.parse(text));
    expect(names).toEqual(['z', 'm', 'a', 'b', '\uFFFD', '\u{1F600}']);
    const file = parseSafetensors(out);
    expect([...file.tensors.keys()]).toEqual(names);
    expect([...file.tensors.get('z')!.bytes]).toEqual([7, 0, 0, 0, 0, 0, 0, 0]);
    expect([...file.tensors.get('a')!.bytes]).toEqual([2, 2]);
  });

  it('reads a hand-made file with every dtype', () => {
    // one tensor per dtype, 4 elements each (F4: 4 elements = 2 bytes; F6: 4 elements = 3 bytes)
    let offset = 0;
    const hdr: Record<string, unknown> = { __metadata__: { k: 'v' } };
    const data: number[] = [];
    for (const d of SAFETENSORS_DTYPES) {
      const size = (4 * DTYPE_BITS[d]) / 8;
      hdr[`t_${d}`] = { dtype: d, shape: [2, 2], data_offsets: [offset, offset + size] };
      for (let i = 0; i < size; i++) data.push((offset + i) & 0xff);
      offset += size;
    }
    const file = parseSafetensors(header(hdr, data));
    expect(file.metadata).toEqual({ k: 'v' });
    expect(file.tensors.size).toBe(SAFETENSORS_DTYPES.length);
    // BOOL takes bytes 0..3, F4 (4 x 4 bits) 4..5, F6_E2M3 (4 x 6 bits) 6..8
    expect([...file.tensors.get('t_BOOL')!.bytes]).toEqual([0, 1, 2, 3]);
    expect([...file.tensors.get('t_F4')!.bytes]).toEqual([4, 5]);
    expect([...file.tensors.get('t_F6_E2M3')!.bytes]).toEqual([6, 7, 8]);
    expect(file.tensors.get('t_U64')!.bytes.length).toBe(32);
    // written back, the file is sorted by descending dtype: U64 first
    const out = serializeSafetensors(file.tensors, file.metadata);
    const back = parseSafetensors(out);
    expect([...back.tensors.keys()][0]).toBe('t_U64');
    for (const [name, t] of file.tensors) expect([...back.tensors.get(name)!.bytes]).toEqual([...t.bytes]);
    // odd element counts of sub-byte dtypes do not end on a byte boundary
    expect(() =>
      parseSafetensors(header({ x: { dtype: 'F4', shape: [3], data_offsets: [0, 1] } }, [0])),
    ).toThrow(/x: 3 elements of F4 do not end on a byte boundary/);
  });

  it('converts F32/F16/BF16/F64 to float32 with known bit patterns', () => {
    const f16: SafetensorsEntry = {
      dtype: 'F16',
      shape: [3],
      bytes: new Uint8Array([0x00, 0x3c, 0x00, 0xc1, 0x01, 0x00]),
    };
    expect([...tensorToFloat32(f16)]).toEqual([1, -2.5, 2 ** -24]);
    const bf16: SafetensorsEntry = {
      dtype: 'BF16',
      shape: [2],
      bytes: new Uint8Array([0x80, 0x3f, 0x20, 0xc0]),
    };
    expect([...tensorToFloat32(bf16)]).toEqual([1, -2.5]);
    const f64: SafetensorsEntry = {
      dtype: 'F64',
      shape: [1],
      bytes: new Uint8Array(new Float64Array([0.1]).buffer),
    };
    expect(tensorToFloat32(f64)[0]).toBe(Math.fround(0.1));
    // F32 from an odd byte offset is copied, not misaligned
    const raw = new Uint8Array(9);
    raw.set([0, 0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0], 0);
    expect([...tensorToFloat32({ dtype: 'F32', shape: [2], bytes: raw.subarray(1) })]).toEqual([1, -2.5]);
    expect(() =>
      tensorToFloat32({ dtype: 'I32', shape: [1], bytes: new Uint8Array(4) }, 'x.safetensors', 'w'),
    ).toThrow(/x\.safetensors: w: unsupported dtype I32/);
    expect([...float16Entry(new Float32Array([1, -2.5]), [2]).bytes]).toEqual([0x00, 0x3c, 0x00, 0xc1]);
    expect([...bfloat16Entry(new Float32Array([1, -2.5]), [2]).bytes]).toEqual([0x80, 0x3f, 0x20, 0xc0]);
  });
});
