/**
 * Weight quantization of base linears (QLoRA base): int4 (MatMulNBits), NF4 (bitsandbytes,
 * MatMulBnb4), int8 (DequantizeLinear). Every format quantizes W [n, k] = [out, in] (row-major, the
 * Hugging Face layout) and dequantizes back to the exact float32 values the ONNX op computes with.
 */
import { dequantizeInt4, quantizeInt4, type Int4Weight } from './int4.js';
import { dequantizeInt8, quantizeInt8, type Int8Weight } from './int8.js';
import { dequantizeNf4, quantizeNf4, type Nf4Weight } from './nf4.js';

export * from './int4.js';
export * from './int8.js';
export * from './nf4.js';

export type QuantFormat = 'int4' | 'nf4' | 'int8';
export const QUANT_FORMATS: readonly QuantFormat[] = ['int4', 'nf4', 'int8'];

export interface QuantizeOptions {
  format: QuantFormat;
  /** int4: 16..256 (default 32); nf4: default 64 (bitsandbytes); ignored by int8 (per channel). */
  blockSize?: number;
  /** nf4 only: bitsandbytes double quantization of the absmax. */
  doubleQuant?: boolean;
  /** int4 only: symmetric (default) or asymmetric with zero points. */
  symmetric?: boolean;
}

export type QuantizedWeight = Int4Weight | Nf4Weight | Int8Weight;

export function quantizeWeight(
  w: Float32Array,
  n: number,
  k: number,
  opts: QuantizeOptions,
): QuantizedWeight {
  switch (opts.format) {
    case 'int4':
      return quantizeInt4(w, n, k, { blockSize: opts.blockSize, symmetric: opts.symmetric });
    case 'nf4':
      return quantizeNf4(w, n, k, { blockSize: opts.blockSize, doubleQuant: opts.doubleQuant });
    case 'int8':
      return quantizeInt8(w, n, k);
  }
}

export function dequantizeWeight(q: QuantizedWeight): Float32Array {
  switch (q.format) {
    case 'int4':
      return dequantizeInt4(q);
    case 'nf4':
      return dequantizeNf4(q);
    case 'int8':
      return dequantizeInt8(q);
  }
}
