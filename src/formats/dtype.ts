/**
 * float16 and bfloat16 <-> float32 conversions, bit-exact with what PyTorch does.
 *
 * - float32 -> float16: IEEE round to nearest, ties to even; overflow to ±inf, gradual underflow to
 *   subnormals, NaN -> sign | 0x7e00 (as c10 / the FP16 library).
 * - float32 -> bfloat16: round to nearest, ties to even on the high 16 bits; NaN -> 0x7fc0
 *   (as c10::BFloat16's round_to_nearest_even).
 *
 * Inputs are float32 values: a JS number is first rounded to float32 (Math.fround).
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The raw bits of a float32. */
export function float32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}

/** The float32 whose raw bits are `bits`. */
export function float32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}

/** Round one float32 to float16 bits (nearest, ties to even). */
export function float32ToFloat16Bits(x: number): number {
  return bitsToFloat16(float32Bits(x));
}

function bitsToFloat16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  if (exp > 142) return sign | 0x7c00; // |x| >= 2^16: past the largest finite half
  if (exp >= 113) {
    // normal half: rebias 127 -> 15, keep 10 mantissa bits, round on the 13 dropped bits
    let h = ((exp - 112) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++; // a carry may reach inf: correct
    return sign | h;
  }
  if (exp < 102) return sign; // |x| < 2^-25: rounds to zero
  // subnormal half: value / 2^-24, with the implicit bit made explicit
  const m = mant | 0x800000;
  const shift = 126 - exp; // 14..24
  let h = m >>> shift;
  const rest = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1) === 1)) h++;
  return sign | h;
}

/** The float32 value of float16 bits (exact). */
export function float16BitsToFloat32(h: number): number {
  return float32FromBits(float16ToFloat32Bits(h));
}

function float16ToFloat32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // subnormal: normalize
  let e = 113;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** Round one float32 to bfloat16 bits (nearest, ties to even; NaN -> 0x7fc0). */
export function float32ToBfloat16Bits(x: number): number {
  return bitsToBfloat16(float32Bits(x));
}

function bitsToBfloat16(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The float32 value of bfloat16 bits (exact). */
export function bfloat16BitsToFloat32(b: number): number {
  return float32FromBits((b & 0xffff) << 16);
}

/** Every element rounded to float16 bits. */
export function toFloat16Array(data: Float32Array): Uint16Array {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < out.length; i++) out[i] = bitsToFloat16(bits[i]);
  return out;
}

/** Every element rounded to bfloat16 bits. */
export function toBfloat16Array(data: Float32Array): Uint16Array {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < out.length; i++) out[i] = bitsToBfloat16(bits[i]);
  return out;
}

/** float16 bits widened to float32 (exact). */
export function fromFloat16Array(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = float16ToFloat32Bits(bits[i]);
  return out;
}

/** bfloat16 bits widened to float32 (exact). */
export function fromBfloat16Array(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
  return out;
}

/** Each value rounded through float16 and back: what storing it as F16 keeps. */
export function roundToFloat16(data: Float32Array): Float32Array {
  return fromFloat16Array(toFloat16Array(data));
}

/** Each value rounded through bfloat16 and back: what storing it as BF16 keeps. */
export function roundToBfloat16(data: Float32Array): Float32Array {
  return fromBfloat16Array(toBfloat16Array(data));
}
