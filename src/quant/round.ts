/** Float32 helpers shared by the quantizers: every step is rounded as the C/CUDA kernels round it. */

/** Rounds to float32 (one float32 operation's result). */
export const fround32 = Math.fround;

/** C's roundf: to the nearest integer, halves away from zero (Math.round takes halves up). */
export function roundf(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/** Round half to even (QuantizeLinear, numpy's rint, torch.round). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
