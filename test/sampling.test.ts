import { describe, expect, it } from 'vitest';
import {
  applyRepetitionPenalty,
  argmax,
  sampleToken,
  seededRandom,
  validateSampling,
} from '../src/engine/sampling.js';

const softmax = (xs: number[], t = 1) => {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp((x - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
};

function frequencies(logits: number[], options: Parameters<typeof sampleToken>[2], n: number): number[] {
  const random = seededRandom(42);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[sampleToken(Float32Array.from(logits), [], options, random)]++;
  return counts.map((c) => c / n);
}

describe('sampling', () => {
  it('greedy picks the first maximum, as run.c argmax does', () => {
    expect(argmax([0.1, 3, -1, 3])).toBe(1);
    expect(sampleToken(Float32Array.from([0.1, 3, -1, 3]), [], { temperature: 0 }, () => 0.99)).toBe(1);
  });

  it('repetition penalty divides positive and multiplies negative logits (HF semantics)', () => {
    const logits = Float32Array.from([2, -2, 1, 4]);
    applyRepetitionPenalty(logits, [0, 1, 1], 2);
    expect(Array.from(logits)).toEqual([1, -4, 1, 4]);
  });

  it('temperature sampling follows softmax(logits / T)', () => {
    const logits = [1, 2, 0.5, -1];
    const f = frequencies(logits, { temperature: 0.7, seed: 1 }, 20000);
    const p = softmax(logits, 0.7);
    p.forEach((pi, i) => expect(Math.abs(f[i] - pi)).toBeLessThan(0.015));
  });

  it('top-k keeps the k most likely tokens, renormalized', () => {
    const logits = [1, 2, 0.5, -1, 1.5];
    const f = frequencies(logits, { temperature: 1, topK: 2 }, 20000);
    const p = softmax([2, 1.5]);
    expect(f[1]).toBeCloseTo(p[0], 1);
    expect(f[4]).toBeCloseTo(p[1], 1);
    expect(f[0] + f[2] + f[3]).toBe(0);
  });

  it('top-p keeps the smallest prefix whose mass reaches p', () => {
    // probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 keeps the first two (0.5 < 0.75 <= 0.8)
    const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    const f = frequencies(logits, { temperature: 1, topP: 0.75 }, 20000);
    expect(f[2] + f[3]).toBe(0);
    expect(Math.abs(f[0] - 0.5 / 0.8)).toBeLessThan(0.015);
  });

  it('the same seed gives the same tokens', () => {
    const run = (seed: number) => {
      const random = seededRandom(seed);
      return Array.from({ length: 50 }, () =>
        sampleToken(Float32Array.from([1, 1, 1, 1, 1]), [], { temperature: 1 }, random),
      );
    };
    expect(run(7)).toEqual(run(7));
    expect(run(7)).not.toEqual(run(8));
  });

  it('rejects invalid options, naming the field', () => {
    expect(() => validateSampling({ topP: 0 })).toThrow(/topP/);
    expect(() => validateSampling({ temperature: -1 })).toThrow(/temperature/);
    expect(() => validateSampling({ topK: 1.5 })).toThrow(/topK/);
  });
});
