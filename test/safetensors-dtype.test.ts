import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  bfloat16BitsToFloat32,
  float16BitsToFloat32,
  float32Bits,
  float32FromBits,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  fromBfloat16Array,
  fromFloat16Array,
  toBfloat16Array,
  toFloat16Array,
} from '../src/formats/dtype.js';

describe('float16', () => {
  it('encodes hand-computed bit patterns', () => {
    const cases: [number, number][] = [
      [1, 0x3c00],
      [-2.5, 0xc100], // 1.25 * 2^1: exponent 16, mantissa 0x100
      [0, 0x0000],
      [-0, 0x8000],
      [65504, 0x7bff], // largest finite half
      [65519, 0x7bff], // below the midpoint to 65536
      [65520, 0x7c00], // the midpoint: ties to even = 0x7c00 = inf
      [2 ** 16, 0x7c00],
      [1e30, 0x7c00],
      [-Infinity, 0xfc00],
      [NaN, 0x7e00],
      [2 ** -14, 0x0400], // smallest normal
      [1023 * 2 ** -24, 0x03ff], // largest subnormal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // half of it: tie to even = 0
      [Math.fround(2 ** -25 * 1.000001), 0x0001], // just above the tie
      [3 * 2 ** -25, 0x0002], // 1.5 ulp: tie between 1 and 2 -> 2
      [5 * 2 ** -25, 0x0002], // 2.5 ulp: tie between 2 and 3 -> 2
      [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01 -> even
      [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02 -> even
      [2049, 0x6800], // spacing 2 at 2048: tie -> 2048
      [2051, 0x6802], // tie between 2050 (0x6801) and 2052 (0x6802)
      [-65520, 0xfc00],
    ];
    for (const [x, bits] of cases)
      expect([x, float32ToFloat16Bits(x).toString(16)]).toEqual([x, bits.toString(16)]);
    expect([...toFloat16Array(new Float32Array(cases.map((c) => c[0])))]).toEqual(cases.map((c) => c[1]));
  });

  it('decodes hand-computed bit patterns', () => {
    expect(float16BitsToFloat32(0x3c00)).toBe(1);
    expect(float16BitsToFloat32(0xc100)).toBe(-2.5);
    expect(float16BitsToFloat32(0x7bff)).toBe(65504);
    expect(float16BitsToFloat32(0xfbff)).toBe(-65504);
    expect(float16BitsToFloat32(0x0001)).toBe(2 ** -24);
    expect(float16BitsToFloat32(0x03ff)).toBe(1023 * 2 ** -24);
    expect(float16BitsToFloat32(0x8000)).toBe(-0);
    expect(float16BitsToFloat32(0x7c00)).toBe(Infinity);
    expect(float16BitsToFloat32(0x7e00)).toBeNaN();
    expect(float32Bits(float16BitsToFloat32(0x7e01))).toBe(0x7fc02000); // NaN payload kept
  });

  it('decode then encode is the identity on all 65536 patterns (NaN -> quiet NaN)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = toFloat16Array(fromFloat16Array(all));
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      const want = isNaN ? (h & 0x8000) | 0x7e00 : h;
      if (back[h] !== want) expect([h, back[h]]).toEqual([h, want]);
    }
  });

  it('rounds any float32 to the nearest half, ties to even (oracle: search of all halves)', () => {
    // finite non-negative halves in increasing order: bit pattern order = value order
    const values = Array.from({ length: 0x7c01 }, (_, h) => float16BitsToFloat32(h)); // ..., 65504, inf
    const nearest = (x: number): number => {
      const a = Math.abs(x);
      if (a >= 65520) return 0x7c00;
      let lo = 0;
      let hi = 0x7bff;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (values[mid] <= a) lo = mid;
        else hi = mid - 1;
      }
      if (lo === 0x7bff) return lo;
      const dLo = a - values[lo];
      const dHi = values[lo + 1] - a;
      return dLo < dHi ? lo : dHi < dLo ? lo + 1 : lo % 2 === 0 ? lo : lo + 1;
    };
    fc.assert(
      fc.property(
        fc.oneof(
          fc.float({ noNaN: true }),
          fc.float({ min: -70000, max: 70000, noNaN: true }),
          fc.float({ min: Math.fround(-1e-4), max: Math.fround(1e-4), noNaN: true }),
        ),
        (x) => {
          const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
          expect(float32ToFloat16Bits(x)).toBe(sign | nearest(x));
        },
      ),
      { numRuns: 5000 },
    );
  });
});

describe('bfloat16', () => {
  it('encodes hand-computed bit patterns (torch round_to_nearest_even)', () => {
    const cases: [number, number][] = [
      [1, 0x3f80],
      [-2.5, 0xc020],
      [0, 0x0000],
      [-0, 0x8000],
      [Infinity, 0x7f80],
      [-Infinity, 0xff80],
      [NaN, 0x7fc0],
      [float32FromBits(0xffc00001), 0x7fc0], // any NaN, sign dropped, as torch
      [1 + 2 ** -8, 0x3f80], // tie between 0x3f80 and 0x3f81 -> even
      [1 + 3 * 2 ** -8, 0x3f82], // tie between 0x3f81 and 0x3f82 -> even
      [1 + 2 ** -8 + 2 ** -20, 0x3f81], // just above the tie
      [float32FromBits(0x7f7fffff), 0x7f80], // largest float32 rounds to inf
      [float32FromBits(0x00000001), 0x0000], // smallest float32 subnormal rounds to 0
      [float32FromBits(0x00008000), 0x0000], // tie -> even 0
      [float32FromBits(0x00018000), 0x0002], // tie -> even 2
    ];
    for (const [x, bits] of cases)
      expect([x, float32ToBfloat16Bits(x).toString(16)]).toEqual([x, bits.toString(16)]);
    expect([...toBfloat16Array(new Float32Array(cases.map((c) => c[0])))]).toEqual(cases.map((c) => c[1]));
  });

  it('decodes exactly and rounds any float32 to the nearest bfloat16 (oracle: two candidates)', () => {
    expect(bfloat16BitsToFloat32(0x3f80)).toBe(1);
    expect(bfloat16BitsToFloat32(0xc020)).toBe(-2.5);
    expect([...fromBfloat16Array(new Uint16Array([0x3f80, 0xc020, 0x7f80]))]).toEqual([1, -2.5, Infinity]);
    fc.assert(
      fc.property(fc.float({ noNaN: true, noDefaultInfinity: true }), (x) => {
        const bits = float32Bits(x);
        const down = bits >>> 16;
        const a = Math.abs(x);
        const lo = Math.abs(bfloat16BitsToFloat32(down));
        const next = Math.abs(bfloat16BitsToFloat32(down + 1));
        const hi = next === Infinity ? 2 ** 128 : next; // past the top: inf stands where 2^128 would be
        const dLo = a - lo;
        const dHi = hi - a;
        const want = dLo < dHi ? down : dHi < dLo ? down + 1 : down % 2 === 0 ? down : down + 1;
        expect(float32ToBfloat16Bits(x)).toBe(want);
      }),
      { numRuns: 5000 },
    );
  });
});
