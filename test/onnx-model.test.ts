import { create } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import {
  type ModelProto,
  ModelProtoSchema,
  TensorProtoSchema,
  TensorProto_DataType,
  TensorProto_DataLocation,
  decodeModel,
  encodeModel,
  tensorData,
  tensorProto,
} from '../src/formats/onnx/index.js';

/** Deterministic float32 values in [-1, 1). */
function randomFloats(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** y = MatMul(x, W) + b with W [64, 32] and b [32] initializers. */
function matmulAddModel(w: Float32Array, b: Float32Array): ModelProto {
  const floatInfo = (name: string, dims: number[]) => ({
    name,
    type: {
      value: {
        case: 'tensorType' as const,
        value: {
          elemType: TensorProto_DataType.FLOAT,
          shape: { dim: dims.map((d) => ({ value: { case: 'dimValue' as const, value: BigInt(d) } })) },
        },
      },
    },
  });
  return create(ModelProtoSchema, {
    irVersion: 8n,
    producerName: 'edge-adapters-test',
    opsetImport: [{ domain: '', version: 17n }],
    graph: {
      name: 'matmul_add',
      node: [
        { opType: 'MatMul', input: ['x', 'W'], output: ['xw'], name: 'matmul' },
        { opType: 'Add', input: ['xw', 'b'], output: ['y'], name: 'add' },
      ],
      initializer: [tensorProto('W', 'float32', [64, 32], w), tensorProto('b', 'float32', [32], b)],
      input: [floatInfo('x', [1, 64])],
      output: [floatInfo('y', [1, 32])],
    },
  });
}

const W = randomFloats(64 * 32, 1);
const B = randomFloats(32, 2);

describe('decodeModel / encodeModel', () => {
  it('round-trips a hand-built model byte for byte, without copying raw_data', () => {
    const bytes = encodeModel(matmulAddModel(W, B));
    const model = decodeModel(bytes);
    expect(encodeModel(model)).toEqual(bytes);
    const raw = model.graph!.initializer[0].rawData;
    expect(raw.buffer).toBe(bytes.buffer);
    expect(raw.byteLength).toBe(64 * 32 * 4);
  });

  it('tensorData returns exactly the stored values, aligned or not', () => {
    const bytes = encodeModel(matmulAddModel(W, B));
    for (let shift = 0; shift < 4; shift++) {
      const shifted = new Uint8Array(bytes.length + shift);
      shifted.set(bytes, shift);
      const model = decodeModel(shifted.subarray(shift));
      const w = tensorData(model.graph!.initializer[0]);
      expect(w.dtype).toBe('float32');
      expect(w.dims).toEqual([64, 32]);
      expect(w.data).toEqual(W);
      expect(tensorData(model.graph!.initializer[1]).data).toEqual(B);
    }
  });

  it('keeps fields the schema does not declare (ModelProto.functions, NodeProto.overload)', () => {
    const str = (w: BinaryWriter, no: number, s: string) => w.tag(no, WireType.LengthDelimited).string(s);
    const node = new BinaryWriter();
    str(node, 1, 'x');
    str(node, 2, 'y');
    str(node, 4, 'Relu');
    str(node, 8, 'my_overload'); // NodeProto.overload, not in our schema
    const graph = new BinaryWriter();
    graph.tag(1, WireType.LengthDelimited).bytes(node.finish());
    str(graph, 2, 'g');
    const opset = new BinaryWriter();
    opset.tag(2, WireType.Varint).int64(17n);
    const fn = new BinaryWriter();
    str(fn, 1, 'my_function');
    str(fn, 10, 'custom.domain');
    const model = new BinaryWriter();
    model.tag(1, WireType.Varint).int64(8n);
    model.tag(7, WireType.LengthDelimited).bytes(graph.finish());
    model.tag(8, WireType.LengthDelimited).bytes(opset.finish());
    model.tag(25, WireType.LengthDelimited).bytes(fn.finish()); // ModelProto.functions
    const bytes = model.finish();

    const decoded = decodeModel(bytes);
    expect(decoded.graph!.node[0].opType).toBe('Relu');
    expect(decoded.graph!.node[0].$unknown?.map((u) => u.no)).toEqual([8]);
    expect(decoded.$unknown?.map((u) => u.no)).toEqual([25]);
    expect(encodeModel(decoded)).toEqual(bytes);
  });

  it('names the file when the bytes are truncated or have no graph', () => {
    const bytes = encodeModel(matmulAddModel(W, B));
    const truncated = () => decodeModel(bytes.subarray(0, bytes.length >> 1), 'tiny.onnx');
    expect(truncated).toThrow(ModelFormatError);
    expect(truncated).toThrow(/^tiny\.onnx: not a valid ONNX model protobuf/);
    const noGraph = encodeModel(create(ModelProtoSchema, { irVersion: 8n }));
    expect(() => decodeModel(noGraph, 'empty.onnx')).toThrow('empty.onnx: graph: the model has no graph');
  });
});

describe('tensorProto / tensorData', () => {
  it('writes raw_data little-endian', () => {
    const t = tensorProto('a', 'int32', [2], new Int32Array([1, -2]));
    expect([...t.rawData]).toEqual([1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
    expect(t.dataType).toBe(TensorProto_DataType.INT32);
    expect(t.dims).toEqual([2n]);
    const h = tensorProto('h', 'float16', [1], new Uint16Array([0x3c00])); // 1.0 in half precision
    expect([...h.rawData]).toEqual([0x00, 0x3c]);
  });

  it('round-trips every dtype through protobuf bytes', () => {
    const cases = [
      tensorProto('f64', 'float64', [2], new Float64Array([Math.PI, -0.5])),
      tensorProto('bf16', 'bfloat16', [2], new Uint16Array([0x3f80, 0xc000])),
      tensorProto('i8', 'int8', [3], new Int8Array([-128, 0, 127])),
      tensorProto('u8', 'uint8', [2], new Uint8Array([0, 255])),
      tensorProto('i16', 'int16', [2], new Int16Array([-32768, 7])),
      tensorProto('u16', 'uint16', [1], new Uint16Array([65535])),
      tensorProto('i64', 'int64', [2], new BigInt64Array([-(2n ** 40n), 5n])),
      tensorProto('u32', 'uint32', [1], new Uint32Array([4294967295])),
      tensorProto('u64', 'uint64', [1], new BigUint64Array([2n ** 64n - 1n])),
      tensorProto('bool', 'bool', [2, 1], new Uint8Array([1, 0])),
      tensorProto('i4', 'int4', [3], new Uint8Array([0x21, 0x0f])), // 1, 2, -1: low nibble first
      tensorProto('u4', 'uint4', [], new Uint8Array([0x0a])),
    ];
    const model = create(ModelProtoSchema, { graph: { initializer: cases } });
    const decoded = decodeModel(encodeModel(model));
    decoded.graph!.initializer.forEach((t, i) => {
      const want = tensorData(cases[i]);
      const got = tensorData(t);
      expect(got.dtype).toBe(want.dtype);
      expect(got.dims).toEqual(want.dims);
      expect(got.data).toEqual(want.data);
    });
    expect(tensorData(decoded.graph!.initializer[6]).data).toEqual(new BigInt64Array([-(2n ** 40n), 5n]));
    expect(tensorData(decoded.graph!.initializer[10]).data).toEqual(new Uint8Array([0x21, 0x0f]));
  });

  it('rejects data of the wrong size', () => {
    expect(() => tensorProto('w', 'float32', [3], new Float32Array(2))).toThrow(
      /tensor w: data: .*needs 12 bytes/,
    );
    expect(() => tensorProto('w', 'float32', [2], new Float64Array(1))).toThrow(/needs 8 bytes/);
  });

  it('reads the typed fields: float_data, int64_data, int32_data holding float16 bits', () => {
    const f = create(TensorProtoSchema, {
      name: 'f',
      dataType: TensorProto_DataType.FLOAT,
      dims: [2n],
      floatData: [1.5, -2.25],
    });
    expect(tensorData(f)).toEqual({ dtype: 'float32', dims: [2], data: new Float32Array([1.5, -2.25]) });
    const i = create(TensorProtoSchema, {
      name: 'i',
      dataType: TensorProto_DataType.INT64,
      dims: [1, 2].map(BigInt),
      int64Data: [2n ** 40n, -3n],
    });
    expect(tensorData(i)).toEqual({
      dtype: 'int64',
      dims: [1, 2],
      data: new BigInt64Array([2n ** 40n, -3n]),
    });
    // float16 1.0 = 0x3c00, -2.0 = 0xc000
    const h = create(TensorProtoSchema, {
      name: 'h',
      dataType: TensorProto_DataType.FLOAT16,
      dims: [2n],
      int32Data: [0x3c00, 0xc000],
    });
    expect(tensorData(h)).toEqual({ dtype: 'float16', dims: [2], data: new Uint16Array([0x3c00, 0xc000]) });
    const d = create(TensorProtoSchema, {
      name: 'd',
      dataType: TensorProto_DataType.DOUBLE,
      dims: [],
      doubleData: [0.1],
    });
    expect(tensorData(d).data).toEqual(new Float64Array([0.1]));
  });

  it('names the tensor when its data does not fit, is external, or has an unsupported type', () => {
    const short = create(TensorProtoSchema, {
      name: 'f',
      dataType: TensorProto_DataType.FLOAT,
      dims: [3n],
      floatData: [1],
    });
    expect(() => tensorData(short, 'm.onnx')).toThrow(
      'm.onnx: tensor f: float_data has 1 values, expected 3 for 3 float32',
    );
    const raw = create(TensorProtoSchema, {
      name: 'r',
      dataType: TensorProto_DataType.INT32,
      dims: [2n],
      rawData: new Uint8Array(7),
    });
    expect(() => tensorData(raw)).toThrow(
      'model.onnx: tensor r: raw_data has 7 bytes, expected 8 for 2 int32',
    );
    const ext = create(TensorProtoSchema, {
      name: 'e',
      dataType: TensorProto_DataType.FLOAT,
      dims: [1n],
      dataLocation: TensorProto_DataLocation.EXTERNAL,
      externalData: [{ key: 'location', value: 'model.onnx_data' }],
    });
    expect(() => tensorData(ext)).toThrow(/tensor e: data is in an external file that was not loaded/);
    const str = create(TensorProtoSchema, { name: 's', dataType: TensorProto_DataType.STRING, dims: [1n] });
    expect(() => tensorData(str)).toThrow(ModelFormatError);
  });
});
