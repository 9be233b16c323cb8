/**
 * AdamW, gradient clipping, the finiteness guard and the learning-rate schedules, against oracles
 * that do not restate the code: Adam's closed-form first step, convergence on a quadratic, literal
 * values computed separately in python3 (float64) from torch's documented algorithm and transformers'
 * lambdas, and hand arithmetic.
 */
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import {
  AdamW,
  allFinite,
  clipGradNorm,
  globalNorm,
  type AdamWOptions,
  type Params,
} from '../src/train/optimizer.js';
import { learningRate, type ScheduleOptions } from '../src/train/schedule.js';

const params = (entries: Record<string, number[]>): Params =>
  new Map(Object.entries(entries).map(([k, v]) => [k, Float32Array.from(v)]));
const snapshot = (p: Params): Record<string, number[]> =>
  Object.fromEntries([...p].map(([k, t]) => [k, Array.from(t)]));
/** One float32 ulp at x: the storage rounding allowed on top of a float64 oracle. */
const ulp32 = (x: number) => 2 ** (Math.floor(Math.log2(Math.max(Math.abs(x), 2 ** -126))) - 23);

function expectInvalid(fn: () => unknown, file: string, field: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(InvalidInputError);
  expect((caught as InvalidInputError).file).toBe(file);
  expect((caught as InvalidInputError).field).toBe(field);
}

describe('AdamW', () => {
  it('first step: m̂ = g and v̂ = g², so p moves by lr * g / (|g| + eps) ≈ lr * sign(g), plus decay', () => {
    const lr = 0.01;
    const wd = 0.1;
    const eps = 1e-8;
    // lora_A [2, 3] and lora_B [3, 2] of a rank-2 adapter; a zero, a tiny (eps-sized) and large gradients
    const p = params({
      'x.lora_A.weight': [0.3, -0.7, 1.5, 0, 2, -3],
      'x.lora_B.weight': [1, 1, 1, 1, 1, 1],
    });
    const g = params({
      'x.lora_A.weight': [4, -0.001, 250, 1, 0, -1e-6],
      'x.lora_B.weight': [-7, 1e-8, 0.5, -0.5, 1e3, 0],
    });
    const before = snapshot(p);
    new AdamW(p, { lr, weightDecay: wd, eps }).step(g);
    for (const [name, t] of p) {
      const gi = g.get(name) as Float32Array;
      t.forEach((actual, i) => {
        const p0 = before[name][i];
        // closed form in float64: decoupled decay, then lr * m̂ / (sqrt(v̂) + eps) with m̂ = g, v̂ = g²
        const expected = p0 * (1 - lr * wd) - (lr * gi[i]) / (Math.abs(gi[i]) + eps);
        expect(Math.abs(actual - expected)).toBeLessThanOrEqual(ulp32(expected));
        if (Math.abs(gi[i]) >= 1e-3) {
          // the sign step: |Δ| = lr up to lr * eps / |g|
          const move = p0 * (1 - lr * wd) - actual;
          expect(Math.abs(move - lr * Math.sign(gi[i]))).toBeLessThanOrEqual(
            (lr * eps) / Math.abs(gi[i]) + ulp32(actual),
          );
        }
        if (gi[i] === 0) expect(actual).toBe(Math.fround(p0 * (1 - lr * wd)));
      });
    }
  });

  it('minimises f(p) = (p - 3)² from 0 with lr 0.1 in 500 steps', () => {
    const p = params({ p: [0] });
    const opt = new AdamW(p, { lr: 0.1, weightDecay: 0 });
    const x = p.get('p') as Float32Array;
    for (let i = 0; i < 500; i++) opt.step(params({ p: [2 * (x[0] - 3)] }));
    expect(Math.abs(x[0] - 3)).toBeLessThan(1e-3);
  });

  it('four steps of a 2-element parameter match values computed in python3 (float64)', () => {
    // python3, float64, from torch's documented algorithm (lr 0.01, betas (0.9, 0.999), eps 1e-8, wd 0.1):
    //   for t, g in enumerate(grads, 1):
    //     p = p - lr*wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
    //     p = p - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    // step 1, element 0: p = 0.125 * (1 - 0.001) = 0.124875; m = 0.05, v = 0.00025;
    //   m̂ = 0.5, v̂ = 0.25; p = 0.124875 - 0.01 * 0.5 / (0.5 + 1e-8) = 0.1148750002
    // The same loop with every value rounded to float32 between steps stays within 4e-9 of these.
    const p = params({ w: [0.125, -0.0625] });
    const grads = [
      [0.5, -2.0],
      [-0.25, 1.0],
      [0.0, 3.0],
      [1.5, -0.5],
    ];
    const expected = [
      [0.1148750002, -0.05243750005],
      [0.11209675487058464, -0.04972169217019316],
      [0.10992586514367624, -0.053565868357913965],
      [0.10378138440882982, -0.05590345304858758],
    ];
    const opt = new AdamW(p, { lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.1 });
    const w = p.get('w') as Float32Array;
    grads.forEach((g, k) => {
      opt.step(params({ w: g }));
      expect(Math.abs(w[0] - expected[k][0])).toBeLessThan(1e-7);
      expect(Math.abs(w[1] - expected[k][1])).toBeLessThan(1e-7);
    });
    expect(opt.stepCount).toBe(4);
  });

  it('weight decay alone (zero gradients) multiplies p by (1 - lr * wd) per step', () => {
    const p = params({ a: [1, -2.5, 1000], b: [0.001] });
    const before = snapshot(p);
    const opt = new AdamW(p, { lr: 0.1, weightDecay: 0.5 });
    const zeros = params({ a: [0, 0, 0], b: [0] });
    for (let k = 1; k <= 5; k++) {
      opt.step(zeros);
      for (const [name, t] of p) {
        t.forEach((x, i) => {
          const expected = before[name][i] * 0.95 ** k; // 1 - 0.1 * 0.5 = 0.95
          expect(Math.abs(x - expected)).toBeLessThanOrEqual(k * ulp32(expected));
        });
      }
    }
  });

  it('defaults are torch’s: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01', () => {
    const a = params({ w: [0.5, -0.25, 2] });
    const b = params({ w: [0.5, -0.25, 2] });
    const optA = new AdamW(a, { lr: 0.05 });
    const optB = new AdamW(b, { lr: 0.05, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 });
    for (const g of [
      [1, -1, 0],
      [0.3, 2, -5],
    ]) {
      optA.step(params({ w: g }));
      optB.step(params({ w: g }));
    }
    expect(snapshot(a)).toEqual(snapshot(b));
    // zero gradient, first step: only the default decay 1 - 0.05 * 0.01
    const c = params({ w: [2] });
    new AdamW(c, { lr: 0.05 }).step(params({ w: [0] }));
    expect((c.get('w') as Float32Array)[0]).toBe(Math.fround(2 * (1 - 0.05 * 0.01)));
  });

  it('step(grads, lr) uses the scheduled lr for the update and the decay; lr 0 changes nothing', () => {
    const p = params({ w: [1, -1] });
    const opt = new AdamW(p, { lr: 123, weightDecay: 0.2 });
    opt.step(params({ w: [0, 0] }), 0);
    expect(snapshot(p)).toEqual({ w: [1, -1] });
    const q = params({ w: [1, -1] });
    new AdamW(q, { lr: 123, weightDecay: 0.2 }).step(params({ w: [3, -3] }), 0.01);
    // closed-form first step with lr 0.01: 1 * (1 - 0.002) - 0.01 * sign(g)
    const w = q.get('w') as Float32Array;
    expect(Math.abs(w[0] - 0.988)).toBeLessThan(1e-7);
    expect(Math.abs(w[1] - -0.988)).toBeLessThan(1e-7);
  });

  it('state() / restore() continue identically to an uninterrupted run', () => {
    const init = { 'l.lora_A.weight': [0.1, -0.2, 0.3, 0.4], 'l.lora_B.weight': [0, 0.5] };
    const gradsAt = (k: number) =>
      params({
        'l.lora_A.weight': [Math.sin(k), Math.cos(k), -k / 3, 0.01 * k],
        'l.lora_B.weight': [k % 2 === 0 ? 1 : -2, 0.5 / (k + 1)],
      });
    const options: AdamWOptions = { lr: 0.02, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.05 };

    const straight = params(init);
    const opt = new AdamW(straight, options);
    for (let k = 0; k < 6; k++) opt.step(gradsAt(k), 0.02 / (k + 1));

    const first = params(init);
    const optFirst = new AdamW(first, options);
    for (let k = 0; k < 3; k++) optFirst.step(gradsAt(k), 0.02 / (k + 1));
    const saved = optFirst.state();
    expect(saved.step).toBe(3);
    // the state is a copy: changing it does not change the optimizer
    const savedM = new Map([...saved.m].map(([k, t]) => [k, t.slice()]));
    const savedV = new Map([...saved.v].map(([k, t]) => [k, t.slice()]));
    (saved.m.get('l.lora_B.weight') as Float32Array).fill(99);
    expect(Array.from(optFirst.state().m.get('l.lora_B.weight') as Float32Array)).not.toContain(99);

    const resumed = new Map([...first].map(([k, t]) => [k, t.slice()]));
    const optResumed = AdamW.restore(resumed, options, { step: 3, m: savedM, v: savedV });
    for (let k = 3; k < 6; k++) optResumed.step(gradsAt(k), 0.02 / (k + 1));
    expect(snapshot(resumed)).toEqual(snapshot(straight));
    expect(optResumed.state()).toEqual(opt.state());
  });

  it('restore() rejects a state that does not fit the parameters', () => {
    const p = params({ a: [1, 2], b: [3] });
    const good = new AdamW(p, { lr: 0.1 }).state();
    expectInvalid(
      () => AdamW.restore(p, { lr: 0.1 }, { ...good, m: new Map([['a', new Float32Array(2)]]) }),
      'optimizer state m',
      'b',
    );
    expectInvalid(
      () => AdamW.restore(p, { lr: 0.1 }, { ...good, v: new Map([...good.v, ['a', new Float32Array(3)]]) }),
      'optimizer state v',
      'a',
    );
    expectInvalid(() => AdamW.restore(p, { lr: 0.1 }, { ...good, step: -1 }), 'optimizer state', 'step');
  });

  it('invalid options are InvalidInputErrors naming the field', () => {
    const p = () => params({ w: [1] });
    const cases: [AdamWOptions, string][] = [
      [{ lr: -0.1 }, 'lr'],
      [{ lr: Number.NaN }, 'lr'],
      [{ lr: Infinity }, 'lr'],
      [{ lr: 0.1, betas: [1, 0.999] }, 'betas[0]'],
      [{ lr: 0.1, betas: [0.9, -0.5] }, 'betas[1]'],
      [{ lr: 0.1, eps: 0 }, 'eps'],
      [{ lr: 0.1, eps: -1e-8 }, 'eps'],
      [{ lr: 0.1, weightDecay: -0.01 }, 'weightDecay'],
      [{ lr: 0.1, weightDecay: Number.NaN }, 'weightDecay'],
    ];
    for (const [options, field] of cases) expectInvalid(() => new AdamW(p(), options), 'optimizer', field);
    // betas of 0 are valid (torch: 0 <= beta < 1)
    expect(() => new AdamW(p(), { lr: 0, betas: [0, 0] })).not.toThrow();
    // an invalid lr given to step() leaves the parameters as they were
    const q = params({ w: [1] });
    expectInvalid(() => new AdamW(q, { lr: 0.1 }).step(params({ w: [1] }), -1), 'optimizer', 'lr');
    expect(snapshot(q)).toEqual({ w: [1] });
  });

  it('mismatched gradients are InvalidInputErrors naming the tensor, and nothing changes', () => {
    const p = params({ 'q.lora_A.weight': [1, 2, 3, 4], 'q.lora_B.weight': [5, 6] });
    const opt = new AdamW(p, { lr: 0.1, weightDecay: 0.1 });
    const good = [1, 1, 1, 1];
    expectInvalid(() => opt.step(params({ 'q.lora_A.weight': good })), 'grads', 'q.lora_B.weight');
    expectInvalid(
      () => opt.step(params({ 'q.lora_A.weight': good, 'q.lora_B.weight': [1, 1, 1] })),
      'grads',
      'q.lora_B.weight',
    );
    expectInvalid(
      () => opt.step(params({ 'q.lora_A.weight': good, 'q.lora_B.weight': [1, 1], 'k.lora_A.weight': [1] })),
      'grads',
      'k.lora_A.weight',
    );
    expect(snapshot(p)).toEqual({ 'q.lora_A.weight': [1, 2, 3, 4], 'q.lora_B.weight': [5, 6] });
    expect(opt.stepCount).toBe(0);
    // the next valid step is still the first: p * 0.99 - 0.1 * sign(g)
    opt.step(params({ 'q.lora_A.weight': good, 'q.lora_B.weight': [-1, -1] }));
    const a = p.get('q.lora_A.weight') as Float32Array;
    const b = p.get('q.lora_B.weight') as Float32Array;
    [0.89, 1.88, 2.87, 3.86].forEach((x, i) => expect(Math.abs(a[i] - x)).toBeLessThan(1e-6));
    [5.05, 6.04].forEach((x, i) => expect(Math.abs(b[i] - x)).toBeLessThan(1e-6));
  });
});

describe('gradient norm and clipping', () => {
  it('the global norm of [3] and [4] in two tensors is 5', () => {
    expect(globalNorm(params({ a: [3], b: [4] }))).toBe(5);
    expect(globalNorm(params({ a: [1, 2, 2], b: [], c: [-4] }))).toBe(5);
    expect(globalNorm(new Map())).toBe(0);
  });

  it('accumulates in float64: squares past float32 range do not overflow', () => {
    // 3e30² = 9e60 overflows float32 (max 3.4e38); the norm 5e30 does not
    const g = params({ a: [3e30, 4e30] });
    const a = g.get('a') as Float32Array;
    expect(globalNorm(g)).toBeCloseTo(Math.hypot(a[0], a[1]), -20);
    expect(globalNorm(g) / 5e30).toBeCloseTo(1, 6);
    // 10^6 copies of float32(0.1): sqrt(10^6 * 0.1²) = 1000 * 0.1
    const many = new Map([['x', new Float32Array(1_000_000).fill(0.1)]]);
    expect(Math.abs(globalNorm(many) - 1000 * Math.fround(0.1))).toBeLessThan(1e-9);
  });

  it('clipping [3, 4] to 1 gives [0.6, 0.8] times 5 / (5 + 1e-6), and returns 5', () => {
    const g = params({ a: [3], b: [4] });
    expect(clipGradNorm(g, 1)).toBe(5);
    const scale = 5 / (5 + 1e-6);
    expect(Math.abs((g.get('a') as Float32Array)[0] - 0.6 * scale)).toBeLessThan(1e-7);
    expect(Math.abs((g.get('b') as Float32Array)[0] - 0.8 * scale)).toBeLessThan(1e-7);
    expect(globalNorm(g)).toBeLessThanOrEqual(1);
  });

  it('leaves gradients under the maximum unchanged', () => {
    const g = params({ a: [3], b: [4] });
    expect(clipGradNorm(g, 10)).toBe(5);
    expect(snapshot(g)).toEqual({ a: [3], b: [4] });
    // at the maximum itself, coef = 5 / (5 + 1e-6) < 1 scales by a hair, as torch does
    const h = params({ a: [3], b: [4] });
    clipGradNorm(h, 5);
    expect((h.get('a') as Float32Array)[0]).toBe(Math.fround(3 * (5 / (5 + 1e-6))));
  });

  it('rejects a maxNorm that is not > 0', () => {
    for (const m of [0, -1, Number.NaN])
      expectInvalid(() => clipGradNorm(params({ a: [1] }), m), 'clipGradNorm', 'maxNorm');
  });
});

describe('allFinite', () => {
  it('is true for finite gradients and loss, false for NaN or ±Infinity anywhere', () => {
    const ok = () => params({ a: [1, -2, 0, 3.4e38], b: [-0, 1e-45] });
    expect(allFinite(ok())).toBe(true);
    expect(allFinite(ok(), 2.5)).toBe(true);
    expect(allFinite(new Map(), 0)).toBe(true);
    for (const bad of [Number.NaN, Infinity, -Infinity]) {
      const g = ok();
      (g.get('b') as Float32Array)[1] = bad;
      expect(allFinite(g)).toBe(false);
      expect(allFinite(ok(), bad)).toBe(false);
    }
    // a float64 loss past float32 range is still finite
    expect(allFinite(ok(), 1e300)).toBe(true);
  });
});

describe('learning-rate schedules', () => {
  const lr = 3e-4;
  const base: ScheduleOptions = { lr, warmupSteps: 10, totalSteps: 100 };

  it('warmup ramps linearly from 0 to lr, for every schedule with warmup', () => {
    for (const name of ['constant_with_warmup', 'linear', 'cosine'] as const) {
      for (let s = 0; s < 10; s++) expect(learningRate(s, { ...base, name })).toBeCloseTo((lr * s) / 10, 15);
      expect(learningRate(10, { ...base, name })).toBeCloseTo(lr, 15);
    }
    expect(learningRate(0, { ...base, name: 'linear' })).toBe(0);
  });

  it('constant is lr at every step (no warmup, as get_constant_schedule)', () => {
    for (const s of [0, 5, 99, 1000]) expect(learningRate(s, { ...base, name: 'constant' })).toBe(lr);
    expect(learningRate(70, { ...base, name: 'constant_with_warmup' })).toBe(lr);
  });

  it('linear decays to 0 at totalSteps and stays there', () => {
    // python3: lr * (100 - s) / 90 after warmup
    const literal: [number, number][] = [
      [0, 0],
      [5, 0.00015],
      [10, 0.0003],
      [37, 0.00020999999999999998],
      [100, 0],
      [120, 0],
    ];
    for (const [s, v] of literal) expect(learningRate(s, { ...base, name: 'linear' })).toBeCloseTo(v, 15);
    expect(learningRate(99, { ...base, name: 'linear' })).toBeCloseTo(lr / 90, 15);
    // 'linear' is the default, as the Trainer's lr_scheduler_type
    expect(learningRate(37, base)).toBe(learningRate(37, { ...base, name: 'linear' }));
  });

  it('cosine is lr/2 half-way after warmup, 0 at totalSteps, and matches literal values', () => {
    // python3: lr * 0.5 * (1 + cos(pi * (s - 10) / 90)) after warmup (num_cycles 0.5)
    const literal: [number, number][] = [
      [0, 0],
      [5, 0.00015],
      [10, 0.0003],
      [37, 0.00023816778784387094],
      [55, 0.00015],
      [100, 0],
      [130, 7.499999999999993e-5], // transformers does not clamp: past totalSteps the cosine rises
    ];
    for (const [s, v] of literal) expect(learningRate(s, { ...base, name: 'cosine' })).toBeCloseTo(v, 15);
    // with no warmup, half-way is step total / 2
    expect(learningRate(50, { name: 'cosine', lr: 1, totalSteps: 100 })).toBeCloseTo(0.5, 15);
  });

  it('cosine with minLrRatio floors at lr * ratio (get_cosine_with_min_lr_schedule_with_warmup)', () => {
    const o: ScheduleOptions = { ...base, name: 'cosine', minLrRatio: 0.1 };
    expect(learningRate(37, o)).toBeCloseTo(0.00024435100905948387, 15);
    expect(learningRate(100, o)).toBeCloseTo(2.9999999999999997e-5, 15);
    expect(learningRate(5, o)).toBeCloseTo(0.00015, 15); // warmup is not floored
  });

  it('invalid schedule options are InvalidInputErrors naming the field', () => {
    expectInvalid(() => learningRate(-1, base), 'schedule', 'step');
    expectInvalid(() => learningRate(1.5, base), 'schedule', 'step');
    expectInvalid(() => learningRate(0, { ...base, lr: -1 }), 'schedule', 'lr');
    expectInvalid(() => learningRate(0, { ...base, totalSteps: Number.NaN }), 'schedule', 'totalSteps');
    expectInvalid(() => learningRate(0, { ...base, warmupSteps: -2 }), 'schedule', 'warmupSteps');
    expectInvalid(
      () => learningRate(0, { ...base, name: 'cosine_with_restarts' as ScheduleOptions['name'] }),
      'schedule',
      'name',
    );
    expectInvalid(
      () => learningRate(0, { ...base, name: 'cosine', minLrRatio: 1.5 }),
      'schedule',
      'minLrRatio',
    );
    expectInvalid(
      () => learningRate(0, { ...base, name: 'linear', minLrRatio: 0.1 }),
      'schedule',
      'minLrRatio',
    );
  });
});
