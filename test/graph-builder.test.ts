import { toBinary } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { AttributeProto_AttributeType as AttrType, ModelProtoSchema } from '../src/formats/onnx/onnx_pb.js';
import { attribute, GraphBuilder, MS_DOMAIN } from '../src/graph/builder.js';

describe('GraphBuilder', () => {
  it('builds a graph that onnxruntime runs: relu(x @ W + b) reshaped, with symbolic dims', async () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', ['n', 3]);
    const w = g.initializer('W', Float32Array.from([1, 2, -1, 0, 0.5, 3]), [3, 2]);
    const b = g.initializer('b', Float32Array.from([0.25, -10]), [2]);
    const [xw] = g.node('MatMul', [x, w], { name: '/lin/MatMul' });
    const [sum] = g.node('Add', [xw, b]);
    const [relu] = g.node('Relu', [sum]);
    g.node('Reshape', [relu, g.ints([-1])], { outputs: ['y'] });
    g.output('y', 'float32', ['m']);
    const session = await ort.InferenceSession.create(toBinary(ModelProtoSchema, g.build()));
    const input = Float32Array.from([1, 2, 3, -1, 0, 4]);
    const out = await session.run({ x: new ort.Tensor('float32', input, [2, 3]) });
    // [1,2,3] @ W = [1 - 2 + 1.5, 2 + 0 + 9] = [0.5, 11]; + b = [0.75, 1]
    // [-1,0,4] @ W = [-1 + 0 + 2, -2 + 0 + 12] = [1, 10]; + b = [1.25, 0] (relu of 0)
    expect(Array.from(out.y.data as Float32Array)).toEqual([0.75, 1, 1.25, 0]);
    expect(out.y.dims).toEqual([4]);
  });

  it('names node outputs {node}_output_{k}, makes default node names unique, refuses duplicates', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [2]);
    expect(g.node('Relu', [x])).toEqual(['/Relu_output_0']);
    expect(g.node('Relu', [x])).toEqual(['/Relu_1_output_0']);
    expect(g.node('TopK', [x, g.ints([1])], { name: '/a/TopK', outputs: 2 })).toEqual([
      '/a/TopK_output_0',
      '/a/TopK_output_1',
    ]);
    expect(g.node('Split', [x], { name: '/s', outputs: ['p', ''] })).toEqual(['p', '']);
    expect(() => g.node('Relu', [x], { name: '/a/TopK' })).toThrow(/used twice/);
    expect(() => g.node('Relu', ['nope'])).toThrow(/not defined/);
    expect(() => g.output('missing', 'float32', [1])).toThrow(/not produced/);
  });

  it('shares equal constants and keeps different ones apart', () => {
    const g = new GraphBuilder();
    expect(g.ints([0, 0, -1])).toBe(g.ints([0, 0, -1]));
    expect(g.ints(1, [])).not.toBe(g.ints([1]));
    expect(g.floats(1, [])).not.toBe(g.ints(1, []));
    const graph = g.build().graph!;
    expect(graph.initializer.map((t) => t.dims.map(Number))).toEqual([[3], [], [1], []]);
  });

  it('stores initializers as little-endian raw_data', () => {
    const g = new GraphBuilder();
    g.initializer('f', Float32Array.from([1.5]), [1]);
    g.initializer('i', BigInt64Array.from([-2n]), [1]);
    g.initializer('j', Int32Array.from([258]), [1]);
    const [f, i, j] = g.build().graph!.initializer;
    expect(Array.from(f.rawData)).toEqual([0, 0, 0xc0, 0x3f]);
    expect(Array.from(i.rawData)).toEqual([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expect(Array.from(j.rawData)).toEqual([2, 1, 0, 0]);
    expect([f.dataType, i.dataType, j.dataType]).toEqual([1, 7, 6]); // FLOAT, INT64, INT32
    expect(() => g.initializer('bad', new Float32Array(3), [2, 2])).toThrow(/hold 4 values, got 3/);
  });

  it('encodes attributes by explicit kind: integers, { float }, lists, strings', () => {
    expect(attribute('axis', -1)).toMatchObject({ type: AttrType.INT, i: -1n });
    expect(attribute('scale', { float: 1 })).toMatchObject({ type: AttrType.FLOAT, f: 1 });
    expect(attribute('perm', [0, 2, 1])).toMatchObject({ type: AttrType.INTS, ints: [0n, 2n, 1n] });
    expect(attribute('mode', 'constant').s).toEqual(new TextEncoder().encode('constant'));
    expect(() => attribute('epsilon', 1e-5)).toThrow(/{ float: 0.00001 }/);
  });

  it('imports ai.onnx 17 (IR 8), and com.microsoft 1 only when a contrib op is used', () => {
    const plain = new GraphBuilder();
    plain.node('Relu', [plain.input('x', 'float32', [1])]);
    const model = plain.build();
    expect(model.irVersion).toBe(8n);
    expect(model.opsetImport.map((o) => [o.domain, o.version])).toEqual([['', 17n]]);
    const contrib = new GraphBuilder();
    contrib.node('FastGelu', [contrib.input('x', 'float32', [1])], { domain: MS_DOMAIN });
    expect(contrib.build().opsetImport.map((o) => [o.domain, o.version])).toEqual([
      ['', 17n],
      ['com.microsoft', 1n],
    ]);
  });
});
