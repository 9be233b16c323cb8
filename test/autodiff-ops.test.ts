/**
 * Every gradient rule against central finite differences, in float64 on onnxruntime-web (wasm):
 * each op alone (and with broadcasting, symbolic and run-time shapes) under a loss Σ y ⊙ R with a
 * fixed random R. Tolerance 1e-7 relative: float64 central differences with eps 1e-6 are good to
 * ~1e-9 on these smooth functions, so any wrong term in a rule fails by orders of magnitude.
 */
import { describe, expect, it } from 'vitest';
import { differentiate } from '../src/graph/autodiff/differentiate.js';
import { GraphBuilder, type DType } from '../src/graph/builder.js';
import { ModelFormatError } from '../src/errors.js';
import { checkGradients, random, weightedLossGraph, type Feed } from './helpers/gradient-check.js';

type In = {
  name: string;
  dims: (number | string)[];
  shape: number[];
  lo?: number;
  hi?: number;
  dtype?: DType;
};

const f64 = (values: number[]) => Float64Array.from(values);

async function gradientCase(
  inputs: In[],
  body: (g: GraphBuilder) => string[],
  wrt: string[] = inputs.map((i) => i.name),
  extra: Record<string, Feed> = {},
  eps = 1e-6,
  lossDtype?: 'float32' | 'float64',
) {
  const feeds: Record<string, Feed> = { ...extra };
  inputs.forEach((i, k) => {
    const n = i.shape.reduce((a, b) => a * b, 1);
    const r = random(n, 11 + k * 7, i.lo ?? -1, i.hi ?? 1);
    feeds[i.name] = { data: i.dtype === 'float32' ? Float32Array.from(r) : r, dims: i.shape };
  });
  const declared = [
    ...inputs.map((i) => ({ name: i.name, dtype: i.dtype ?? ('float64' as DType), dims: i.dims })),
    ...Object.entries(extra).map(([name, f]) => ({
      name,
      dtype: (f.data instanceof BigInt64Array
        ? 'int64'
        : f.data instanceof Uint8Array
          ? 'bool'
          : 'float64') as DType,
      dims: f.dims,
    })),
  ];
  const float32 = inputs.every((i) => i.dtype === 'float32');
  const dtype = lossDtype ?? (float32 ? 'float32' : 'float64');
  const model = await weightedLossGraph(declared, body, feeds, { dtype });
  return checkGradients(model, 'loss', wrt, feeds, { eps });
}

const x = (dims: number[], lo?: number, hi?: number): In => ({ name: 'x', dims, shape: dims, lo, hi });
const pair = (a: number[], b: number[], lo?: number, hi?: number): In[] => [
  { name: 'a', dims: a, shape: a, lo, hi },
  { name: 'b', dims: b, shape: b, lo, hi },
];

function expectClose(report: { worst: number; scale: number }) {
  expect(report.scale).toBeGreaterThan(1e-3); // the check saw real slopes
  expect(report.worst).toBeLessThan(1e-7);
}

describe('gradient rules vs finite differences (float64)', () => {
  describe('unary', () => {
    const unary: [string, number, number][] = [
      ['Identity', -1, 1],
      ['Neg', -1, 1],
      ['Exp', -1, 1],
      ['Log', 0.5, 2],
      ['Sqrt', 0.5, 2],
      ['Reciprocal', 0.5, 2],
      ['Sigmoid', -3, 3],
      ['Tanh', -2, 2],
      ['Relu', 0.1, 1],
      ['Abs', 0.1, 1],
    ];
    for (const [op, lo, hi] of unary) {
      it(op, async () => expectClose(await gradientCase([x([2, 3], lo, hi)], (g) => g.node(op, ['x']))));
    }
    it('Softplus, in float32 (onnxruntime-web has no float64 Softplus)', async () => {
      const ins: In[] = [{ name: 'x', dims: [2, 3], shape: [2, 3], lo: -3, hi: 3, dtype: 'float32' }];
      const r = await gradientCase(ins, (g) => g.node('Softplus', ['x']), ['x'], {}, 1e-2);
      // float32 central differences with eps 1e-2: truncation |f'''| eps² / 6 < 2e-6, rounding of the
      // loss (~6 · 1e-7 / eps) < 6e-5; 3e-4 bounds both.
      expect(r.scale).toBeGreaterThan(0.1);
      expect(r.worst).toBeLessThan(3e-4);
    });
    it('Relu and Abs on both sides of 0', async () => {
      const r = await gradientCase([x([4, 5], -1, 1)], (g) => [
        g.node('Relu', ['x'])[0],
        g.node('Abs', ['x'])[0],
      ]);
      expectClose(r);
    });
  });

  describe('broadcasting binary ops', () => {
    const shapes: [number[], number[]][] = [
      [
        [2, 3],
        [2, 3],
      ],
      [[2, 3, 4], [4]],
      [
        [2, 1, 4],
        [3, 1],
      ],
      [[2, 3], []],
      [
        [1, 3],
        [2, 1, 1],
      ],
    ];
    for (const op of ['Add', 'Sub', 'Mul', 'Div']) {
      for (const [a, b] of shapes) {
        it(`${op} [${a}] · [${b}]`, async () =>
          expectClose(await gradientCase(pair(a, b, 0.5, 2), (g) => g.node(op, ['a', 'b']))));
      }
    }
    it('Sum of three with broadcasting', async () => {
      const ins: In[] = [...pair([2, 3], [3]), { name: 'c', dims: [2, 1], shape: [2, 1] }];
      expectClose(await gradientCase(ins, (g) => g.node('Sum', ['a', 'b', 'c'])));
    });
    it('Pow with a constant exponent 2 (RMSNorm) and a general one', async () => {
      expectClose(await gradientCase([x([2, 3])], (g) => g.node('Pow', ['x', g.constant(f64([2]), [])])));
      expectClose(
        await gradientCase([x([2, 3], 0.5, 2)], (g) => g.node('Pow', ['x', g.constant(f64([1.7]), [])])),
      );
      expectClose(await gradientCase(pair([2, 3], [3], 0.5, 2), (g) => g.node('Pow', ['a', 'b'])));
    });
    it('Where over a constant condition, both branches broadcast', async () => {
      const cond = { data: Uint8Array.from([1, 0, 1, 0, 0, 1]), dims: [2, 3] };
      const r = await gradientCase(
        pair([2, 3], [3]),
        (g) => g.node('Where', ['cond', 'a', 'b']),
        ['a', 'b'],
        { cond },
      );
      expectClose(r);
    });
  });

  describe('MatMul', () => {
    const cases: [number[], number[]][] = [
      [
        [3, 4],
        [4, 5],
      ],
      [
        [2, 3, 4],
        [4, 5],
      ], // activations [b, s, in] · weight [in, out]
      [
        [2, 1, 3, 4],
        [2, 4, 5],
      ], // batch broadcast
      [
        [3, 4],
        [2, 4, 5],
      ],
      [
        [2, 2, 3, 4],
        [2, 1, 4, 5],
      ], // grouped-query attention: keys broadcast over the query group
    ];
    for (const [a, b] of cases) {
      it(`[${a}] @ [${b}]`, async () =>
        expectClose(await gradientCase(pair(a, b), (g) => g.node('MatMul', ['a', 'b']))));
    }
  });

  describe('softmax and reductions', () => {
    it('Softmax over the last axis and over axis 1', async () => {
      expectClose(
        await gradientCase([x([2, 3, 4], -2, 2)], (g) => g.node('Softmax', ['x'], { attrs: { axis: -1 } })),
      );
      expectClose(
        await gradientCase([x([2, 3, 4], -2, 2)], (g) => g.node('Softmax', ['x'], { attrs: { axis: 1 } })),
      );
    });
    it('LogSoftmax', async () =>
      expectClose(
        await gradientCase([x([2, 5], -2, 2)], (g) => g.node('LogSoftmax', ['x'], { attrs: { axis: -1 } })),
      ));
    it('ReduceSum with axes input, keepdims 0 and 1, and over every axis', async () => {
      expectClose(
        await gradientCase([x([2, 3, 4])], (g) =>
          g.node('ReduceSum', ['x', g.ints([1])], { attrs: { keepdims: 0 } }),
        ),
      );
      expectClose(
        await gradientCase([x([2, 3, 4])], (g) =>
          g.node('ReduceSum', ['x', g.ints([-1, 0])], { attrs: { keepdims: 1 } }),
        ),
      );
      expectClose(
        await gradientCase([x([2, 3])], (g) => g.node('ReduceSum', ['x'], { attrs: { keepdims: 0 } })),
      );
    });
    it('ReduceMean with axes attribute, keepdims 0 and 1', async () => {
      expectClose(
        await gradientCase([x([2, 3, 4])], (g) =>
          g.node('ReduceMean', ['x'], { attrs: { axes: [-1], keepdims: 1 } }),
        ),
      );
      expectClose(
        await gradientCase([x([2, 3, 4])], (g) =>
          g.node('ReduceMean', ['x'], { attrs: { axes: [0, 2], keepdims: 0 } }),
        ),
      );
    });
  });

  describe('shape ops', () => {
    it('Reshape (0 and -1), Unsqueeze, Squeeze, Flatten, Expand, Transpose', async () => {
      expectClose(await gradientCase([x([2, 3, 4])], (g) => g.node('Reshape', ['x', g.ints([0, -1, 2])])));
      expectClose(await gradientCase([x([2, 3])], (g) => g.node('Unsqueeze', ['x', g.ints([0, 3])])));
      expectClose(await gradientCase([x([2, 1, 3])], (g) => g.node('Squeeze', ['x', g.ints([1])])));
      expectClose(
        await gradientCase([x([2, 3, 4])], (g) => g.node('Flatten', ['x'], { attrs: { axis: 2 } })),
      );
      expectClose(await gradientCase([x([3, 1])], (g) => g.node('Expand', ['x', g.ints([2, 3, 4])])));
      expectClose(
        await gradientCase([x([2, 3, 4, 5])], (g) =>
          g.node('Transpose', ['x'], { attrs: { perm: [0, 2, 3, 1] } }),
        ),
      );
    });
    it('Concat with one input off the gradient path', async () => {
      const ins: In[] = [...pair([2, 3], [2, 1]), { name: 'c', dims: [2, 2], shape: [2, 2] }];
      expectClose(
        await gradientCase(ins, (g) => g.node('Concat', ['a', 'b', 'c'], { attrs: { axis: 1 } }), ['a', 'c']),
      );
    });
    it('Split, with an output no gradient reaches', async () => {
      const r = await gradientCase([x([6, 2])], (g) => {
        const [p, , q] = g.node('Split', ['x', g.ints([1, 2, 3])], { attrs: { axis: 0 }, outputs: 3 });
        return [p, q];
      });
      expectClose(r);
      // Rows 1-2 reach the loss through no output: their gradient is exactly 0.
      expect(Array.from(r.analytic.get('x')!.slice(2, 6))).toEqual([0, 0, 0, 0]);
    });
    it('Slice with negative starts, ends past the end, and axes (rotate-half)', async () => {
      expectClose(
        await gradientCase([x([2, 3, 8])], (g) =>
          g.node('Slice', ['x', g.ints([4]), g.ints([8]), g.ints([-1])]),
        ),
      );
      expectClose(
        await gradientCase([x([4, 6])], (g) =>
          g.node('Slice', ['x', g.ints([-3, 1]), g.ints([2 ** 40, 5]), g.ints([0, 1])]),
        ),
      );
    });
    it('Gather rows with repeated indices (embedding lookup) and GatherElements (label log-probs)', async () => {
      expectClose(
        await gradientCase([x([5, 3])], (g) =>
          g.node('Gather', [
            'x',
            g.ints(
              [
                [1, 3, 1],
                [0, 1, 4],
              ].flat(),
              [2, 3],
            ),
          ]),
        ),
      );
      const labels = g64([2, 0, 4, 2], [2, 2, 1]);
      expectClose(
        await gradientCase(
          [x([2, 2, 5])],
          (g) => g.node('GatherElements', ['x', 'labels'], { attrs: { axis: -1 } }),
          ['x'],
          {
            labels,
          },
        ),
      );
    });
    it('Cast float32 -> float64 returns a float32 gradient', async () => {
      const ins: In[] = [{ name: 'x', dims: [2, 3], shape: [2, 3], dtype: 'float32' }];
      const r = await gradientCase(
        ins,
        (g) => g.node('Cast', ['x'], { attrs: { to: 11 } }),
        ['x'],
        {},
        1e-3,
        'float64',
      );
      expect(r.analytic.get('x')).toBeInstanceOf(Float32Array);
      // x ± eps is rounded to float32 (half an ulp, ≤ 6e-8, of eps = 1e-3): 1e-4 relative bounds that.
      expect(r.worst).toBeLessThan(1e-4);
    });
  });

  describe('shapes known only at run time', () => {
    it('broadcasting along a symbolic dimension that is 1 at run time', async () => {
      const ins: In[] = [
        { name: 'a', dims: ['n', 3], shape: [2, 3] },
        { name: 'b', dims: ['m', 3], shape: [1, 3] },
      ];
      expectClose(await gradientCase(ins, (g) => g.node('Mul', ['a', 'b'])));
    });
    it('Slice and Concat over symbolic dimensions', async () => {
      const ins: In[] = [
        { name: 'a', dims: ['n', 'k'], shape: [2, 5] },
        { name: 'b', dims: ['n', 'j'], shape: [2, 3] },
      ];
      expectClose(
        await gradientCase(ins, (g) => {
          const [s] = g.node('Slice', ['a', g.ints([1]), g.ints([-1]), g.ints([1])]);
          return g.node('Concat', [s, 'b'], { attrs: { axis: 1 } });
        }),
      );
    });
    it('ReduceMean over a symbolic axis', async () => {
      const ins: In[] = [{ name: 'x', dims: [2, 'n'], shape: [2, 5] }];
      expectClose(
        await gradientCase(ins, (g) => g.node('ReduceMean', ['x'], { attrs: { axes: [1], keepdims: 0 } })),
      );
    });
  });

  it('a value used by several nodes sums their gradients', async () => {
    const r = await gradientCase([x([2, 3], 0.5, 2)], (g) => {
      const [e] = g.node('Exp', ['x']);
      const [m] = g.node('Mul', [e, 'x']);
      return g.node('Div', [m, e]); // = x, through three uses of x
    });
    expectClose(r);
  });

  it('names the node and op it cannot differentiate', () => {
    const g = new GraphBuilder();
    g.input('x', 'float32', [2]);
    g.node('Erf', ['x'], { name: '/act/Erf', outputs: ['loss'] });
    g.output('loss', 'float32', [2]);
    expect(() => differentiate(g.build(), { loss: 'loss', wrt: ['x'] })).toThrow(ModelFormatError);
    expect(() => differentiate(g.build(), { loss: 'loss', wrt: ['x'] })).toThrow(
      /\/act\/Erf.*no gradient rule for ai\.onnx\.Erf/,
    );
    expect(() => differentiate(g.build(), { loss: 'loss', wrt: ['nope'] })).toThrow(/nope/);
  });
});

function g64(values: number[], dims: number[]): Feed {
  return { data: BigInt64Array.from(values, BigInt), dims };
}
