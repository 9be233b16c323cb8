/**
 * The quantizers against hand-computed blocks: int4 (MatMulNBits / MLAS arithmetic), NF4
 * (bitsandbytes quantize_4bit / dequantize_4bit, double quantization), int8 (per-channel symmetric).
 */
import { describe, expect, it } from 'vitest';
import {
  NF4_CODE,
  dQuantize,
  dequantizeInt4,
  dequantizeInt8,
  dequantizeNf4,
  dequantizeWeight,
  dynamicMap,
  int4Code,
  nf4Index,
  quantizeInt4,
  quantizeInt8,
  quantizeNested,
  quantizeNf4,
  quantizeWeight,
  dequantizeNested,
} from '../src/quant/index.js';

const f = Math.fround;
const allZero = (a: Float32Array) => Array.from(a).every((v) => v === 0);

describe('int4 (MatMulNBits)', () => {
  it('symmetric: scale = extreme / -8, q = roundf(w / scale + 8), low nibble first', () => {
    // Largest magnitude -8 -> scale 1; 3.5 -> roundf(11.5) = 12 (half away from zero); -0.5 -> 7.5 -> 8.
    const w = new Float32Array(16);
    w.set([-8, -4, 0, 1, 2, 3.5, 7, -0.5]);
    const q = quantizeInt4(w, 1, 16, { blockSize: 16 });
    expect(q.scales[0]).toBe(1);
    expect(q.zeroPoints).toBeUndefined();
    expect(Array.from({ length: 8 }, (_, i) => int4Code(q, 0, i))).toEqual([0, 4, 8, 9, 10, 12, 15, 8]);
    expect(Array.from(q.data.subarray(0, 4))).toEqual([0x40, 0x98, 0xca, 0x8f]);
    expect(Array.from(dequantizeInt4(q).subarray(0, 8))).toEqual([-8, -4, 0, 1, 2, 4, 7, 0]);
  });

  it('symmetric: a positive extreme gets a negative scale (code 0 = +max, -max clamps to 15)', () => {
    const w = new Float32Array(16);
    w.set([8, -7.75, 2]);
    const q = quantizeInt4(w, 1, 16, { blockSize: 16 });
    expect(q.scales[0]).toBe(-1);
    // -7.75 -> roundf(15.75) = 16 -> clamped to 15 -> -7
    expect(Array.from(dequantizeInt4(q).subarray(0, 3))).toEqual([8, -7, 2]);
    // A tie in magnitude goes to the minimum (range2scale: |max| > |min| ? max : min).
    w.set([8, -8, 2]);
    expect(quantizeInt4(w, 1, 16, { blockSize: 16 }).scales[0]).toBe(1);
  });

  it('one outlier: small values collapse to the zero point', () => {
    const w = new Float32Array(16);
    w.set([-64, 1, 3, 4, 5, -6]); // scale 8, 1/scale = 0.125 exactly
    const q = quantizeInt4(w, 1, 16, { blockSize: 16 });
    expect(q.scales[0]).toBe(8);
    // 1/8+8 = 8.125 -> 8; 3 -> 8.375 -> 8; 4 -> 8.5 -> 9; 5 -> 8.625 -> 9; -6 -> 7.25 -> 7
    expect(Array.from(dequantizeInt4(q).subarray(0, 6))).toEqual([-64, 0, 0, 8, 8, -8]);
  });

  it('all-zero block: scale 0, every code the zero point, dequantizes to 0', () => {
    const q = quantizeInt4(new Float32Array(32), 1, 32, { blockSize: 32 });
    expect(q.scales[0] === 0).toBe(true); // -0 as MLAS computes it (0 / -8)
    expect(q.data.every((b) => b === 0x88)).toBe(true);
    expect(allZero(dequantizeInt4(q))).toBe(true);
  });

  it('K not a multiple of the block size: [N, ceil(K/bs), bs/2], zero padding = zero point', () => {
    const n = 2;
    const k = 20;
    const w = Float32Array.from({ length: n * k }, (_, i) => ((i * 7) % 17) - 8);
    const q = quantizeInt4(w, n, k, { blockSize: 16 });
    expect(q.blocks).toBe(2);
    expect(q.data.length).toBe(n * 2 * 8);
    expect(q.scales.length).toBe(n * 2);
    // Row 0, block 1: 4 real values (2 bytes), then 6 bytes of padding codes 8.
    expect(Array.from(q.data.subarray(8 + 2, 16))).toEqual([0x88, 0x88, 0x88, 0x88, 0x88, 0x88]);
    const d = dequantizeInt4(q);
    expect(d.length).toBe(n * k);
    // Integers within [-8, 8] with an extreme of magnitude 8 quantize exactly (scale +-1).
    for (let i = 0; i < n * k; i++)
      if (w[i] !== 8 || q.scales[Math.floor(i / k) * 2 + Math.floor((i % k) / 16)] < 0)
        expect(Math.abs(d[i] - w[i])).toBeLessThanOrEqual(1);
  });

  it('asymmetric: scale = (max - min) / 15, zp = roundf(-min / scale), zero points packed low nibble first', () => {
    const w = new Float32Array(32);
    for (let i = 0; i < 16; i++) w[i] = i; // block 0: min 0, max 15 -> scale 1, zp 0
    for (let i = 0; i < 16; i++) w[16 + i] = i - 3; // block 1: min -3, max 12 -> scale 1, zp 3
    const q = quantizeInt4(w, 1, 32, { blockSize: 16, symmetric: false });
    expect(Array.from(q.scales)).toEqual([1, 1]);
    expect(Array.from(q.zeroPoints ?? [])).toEqual([0x30]);
    expect(Array.from({ length: 16 }, (_, i) => int4Code(q, 0, 16 + i))).toEqual(
      Array.from({ length: 16 }, (_, i) => i),
    );
    expect(Array.from(dequantizeInt4(q))).toEqual(Array.from(w));
    // Odd block count: the unused high nibble stays 8.
    const one = quantizeInt4(w.subarray(16), 1, 16, { blockSize: 16, symmetric: false });
    expect(Array.from(one.zeroPoints ?? [])).toEqual([0x83]);
  });

  it('random weights: error within one step (half a step, plus the clamped far end of a symmetric block)', () => {
    const w = Float32Array.from({ length: 8 * 72 }, (_, i) => Math.sin(i * 1.37) * (1 + (i % 5)));
    for (const symmetric of [true, false]) {
      const q = quantizeInt4(w, 8, 72, { blockSize: 32, symmetric });
      const d = dequantizeInt4(q);
      for (let i = 0; i < w.length; i++) {
        const s = Math.abs(q.scales[Math.floor(i / 72) * q.blocks + Math.floor((i % 72) / 32)]);
        expect(Math.abs(d[i] - w[i])).toBeLessThanOrEqual(s * (1 + 1e-5));
      }
    }
  });
});

describe('NF4 (bitsandbytes)', () => {
  it('dQuantizeNF4 decision tree: codes, midpoint thresholds, NaN -> 0', () => {
    NF4_CODE.forEach((v, c) => expect(nf4Index(v)).toBe(c));
    expect(nf4Index(0.04)).toBe(8);
    expect(nf4Index(0.0397)).toBe(7);
    expect(nf4Index(f(0.03979014977812767))).toBe(7); // strictly greater than the threshold
    expect(nf4Index(-0.0456)).toBe(6);
    expect(nf4Index(-0.85)).toBe(0);
    expect(nf4Index(-0.848)).toBe(1);
    expect(nf4Index(Number.NaN)).toBe(0);
  });

  it('a hand-computed block: absmax, codes of w / absmax, element 0 in the HIGH nibble', () => {
    const w = new Float32Array(64);
    w.set([2, -2, 0.9, 0.1, -0.3]);
    const q = quantizeNf4(w, 1, 64);
    expect(Array.from(q.absmax)).toEqual([2]);
    // 1 -> 15, -1 -> 0; 0.45 -> 12 (0.4407); 0.05 -> 8 (0.0796); -0.15 -> 6? no: -0.15 < -0.1379 -> 5
    expect(q.data[0]).toBe(0xf0);
    expect(q.data[1]).toBe(0xc8);
    expect(q.data[2] >> 4).toBe(5);
    expect(q.data[2] & 0x0f).toBe(7); // zero
    const d = dequantizeNf4(q);
    expect(d[0]).toBe(2);
    expect(d[1]).toBe(-2);
    expect(d[2]).toBe(f(NF4_CODE[12] * 2));
    expect(d[3]).toBe(f(NF4_CODE[8] * 2));
    expect(d[4]).toBe(f(NF4_CODE[5] * 2));
    expect(d[5]).toBe(0);
  });

  it('every code value times absmax round-trips exactly', () => {
    const w = new Float32Array(64);
    for (let i = 0; i < 64; i++) w[i] = f(NF4_CODE[i % 16] * 0.75);
    const d = dequantizeNf4(quantizeNf4(w, 4, 16));
    expect(Array.from(d)).toEqual(Array.from(w));
  });

  it('all-zero block: absmax 0, code 0b0000 (NaN in the kernel), dequantizes to 0', () => {
    const w = new Float32Array(128);
    w[64] = 1;
    const q = quantizeNf4(w, 2, 64);
    expect(Array.from(q.absmax)).toEqual([0, 1]);
    expect(q.data.subarray(0, 32).every((b) => b === 0)).toBe(true);
    expect(allZero(dequantizeNf4(q).subarray(0, 64))).toBe(true);
  });

  it('one outlier: the rest of the block rounds to the zero code', () => {
    const w = new Float32Array(64);
    w.set([100, 1, -1, 4.5]);
    const d = dequantizeNf4(quantizeNf4(w, 1, 64));
    expect(Array.from(d.subarray(0, 4))).toEqual([100, 0, 0, f(NF4_CODE[8] * 100)]);
  });

  it('K not a multiple of 64: blocks run over the flat [N, K] array; odd count pads a zero code', () => {
    const n = 3;
    const k = 50;
    const w = Float32Array.from({ length: n * k }, (_, i) => (i === 100 ? -7 : ((i % 13) - 6) / 10));
    const q = quantizeNf4(w, n, k);
    expect(q.absmax.length).toBe(3); // 64 + 64 + 22
    expect(Array.from(q.absmax)).toEqual([0.6, 7, 0.6].map(f));
    expect(q.data.length).toBe(75);
    const odd = quantizeNf4(Float32Array.from([1, 0.5, -0.5, 0.25, -1]), 1, 5);
    expect(odd.data.length).toBe(3);
    expect(odd.data[2]).toBe((0 << 4) | 7);
    expect(dequantizeNf4(odd).length).toBe(5);
  });

  it('dynamic map = create_dynamic_map(signed=True): 256 sorted values, min -0.99296875, max 1', () => {
    const code = dynamicMap();
    expect(code.length).toBe(256);
    for (let i = 1; i < 256; i++) expect(code[i]).toBeGreaterThanOrEqual(code[i - 1]);
    expect(code[255]).toBe(1);
    expect(code[0]).toBeCloseTo(-0.99296875, 6);
    expect(code.filter((v) => v === 0).length).toBe(1);
    expect(Math.min(...Array.from(code).filter((v) => v > 0))).toBeCloseTo(5.5e-7, 12);
    // dQuantize picks the code itself for every code value, and the nearer neighbour between them.
    for (let i = 0; i < 256; i++)
      if (i === 0 || code[i] !== code[i - 1]) expect(dQuantize(code, code[i])).toBe(i);
    expect(dQuantize(code, 0.999)).toBe(255);
  });

  it('double quant: offset = mean, (absmax - offset) by 256-blocks of the dynamic map, restored + offset', () => {
    const nested = quantizeNested(Float32Array.from([1, 3]));
    expect(nested.offset).toBe(2);
    expect(Array.from(nested.absmax)).toEqual([1]);
    expect(Array.from(nested.q)).toEqual([0, 255]);
    expect(Array.from(dequantizeNested(nested))).toEqual([f(nested.code[0] + 2), 3]);

    const w = Float32Array.from({ length: 64 * 300 }, (_, i) => Math.sin(i * 0.731) * (1 + ((i >> 6) % 9)));
    const plain = quantizeNf4(w, 300, 64);
    const dq = quantizeNf4(w, 300, 64, { doubleQuant: true });
    expect(dq.nested?.q.length).toBe(300);
    expect(dq.nested?.absmax.length).toBe(2); // ceil(300 / 256)
    expect(Array.from(dq.data)).toEqual(Array.from(plain.data)); // codes use the float absmax
    for (let b = 0; b < 300; b++) {
      const a2 = dq.nested?.absmax[b >> 8] ?? 0;
      expect(Math.abs(dq.absmax[b] - plain.absmax[b])).toBeLessThanOrEqual(a2 * 0.008);
    }
    const d = dequantizeNf4(dq);
    for (let i = 0; i < w.length; i++)
      expect(d[i]).toBe(f(NF4_CODE[nf4Code(dq.data, i)] * dq.absmax[i >> 6]));
  });
});

function nf4Code(data: Uint8Array, i: number): number {
  return i & 1 ? data[i >> 1] & 0x0f : data[i >> 1] >> 4;
}

describe('int8 (per-channel symmetric)', () => {
  it('scale = absmax / 127, round half to even, dequantizes to q * scale', () => {
    const w = Float32Array.from([127, -63.5, 0.5, 1.5, 2.5, -127, 0, 0]);
    const q = quantizeInt8(w, 2, 4);
    expect(Array.from(q.scales)).toEqual([1, 1]);
    expect(Array.from(q.data)).toEqual([127, -64, 0, 2, 2, -127, 0, 0]);
    expect(Array.from(dequantizeInt8(q))).toEqual([127, -64, 0, 2, 2, -127, 0, 0]);
  });

  it('all-zero row: scale 1, codes 0; an outlier row keeps its outlier exact', () => {
    const w = Float32Array.from([0, 0, 0, 254, 1, 0.9]);
    const q = quantizeInt8(w, 2, 3);
    expect(Array.from(q.scales)).toEqual([1, 2]);
    expect(Array.from(dequantizeInt8(q))).toEqual([0, 0, 0, 254, 0, 0]);
  });

  it('the index dispatches every format', () => {
    const w = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.cos(i));
    for (const format of ['int4', 'nf4', 'int8'] as const) {
      const d = dequantizeWeight(quantizeWeight(w, 4, 64, { format }));
      expect(d.length).toBe(w.length);
      for (let i = 0; i < w.length; i++) expect(Math.abs(d[i] - w[i])).toBeLessThan(0.2);
    }
  });
});
