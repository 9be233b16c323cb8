import { create } from '@bufbuild/protobuf';
import * as ort from 'onnxruntime-web';
import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import {
  AttributeProto_AttributeType,
  type ModelProto,
  ModelProtoSchema,
  type TensorProto,
  TensorProto_DataLocation,
  TensorProto_DataType,
  decodeModel,
  encodeModel,
  externalLocations,
  externalizeData,
  forEachTensor,
  internalizeData,
  tensorData,
  tensorProto,
} from '../src/formats/onnx/index.js';

function randomFloats(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

const W = randomFloats(64 * 32, 1); // 8192 bytes: an initializer
const B = randomFloats(32, 2); // 128 bytes: an initializer
const C = randomFloats(4 * 32, 3); // 512 bytes: a Constant node's attribute
const X = randomFloats(64, 4);

const bytesOf = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** y [4, 32] = MatMul(x [1, 64], W) + b + c, c from a Constant node. */
function model(): ModelProto {
  const info = (name: string, dims: number[]) => ({
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
    opsetImport: [{ domain: '', version: 17n }],
    graph: {
      name: 'g',
      node: [
        {
          opType: 'Constant',
          output: ['c'],
          attribute: [
            {
              name: 'value',
              type: AttributeProto_AttributeType.TENSOR,
              t: tensorProto('c', 'float32', [4, 32], C),
            },
          ],
        },
        { opType: 'MatMul', input: ['x', 'W'], output: ['xw'] },
        { opType: 'Add', input: ['xw', 'b'], output: ['xwb'] },
        { opType: 'Add', input: ['xwb', 'c'], output: ['y'] },
      ],
      initializer: [tensorProto('W', 'float32', [64, 32], W), tensorProto('b', 'float32', [32], B)],
      input: [info('x', [1, 64])],
      output: [info('y', [4, 32])],
    },
  });
}

/** The float64 oracle: y[r][j] = sum_k x[k] W[k][j] + b[j] + c[r][j]. */
function reference(): number[] {
  const y: number[] = [];
  for (let r = 0; r < 4; r++) {
    for (let j = 0; j < 32; j++) {
      let s = 0;
      for (let k = 0; k < 64; k++) s += X[k] * W[k * 32 + j];
      y.push(s + B[j] + C[r * 32 + j]);
    }
  }
  return y;
}

async function run(
  modelBytes: Uint8Array,
  externalData?: { path: string; data: Uint8Array }[],
): Promise<Float32Array> {
  // In Node, onnxruntime-web takes external data as bytes keyed by the location written in the
  // model; no other option is needed (a string `data` would be fetched as a URL/path instead).
  const session = await ort.InferenceSession.create(modelBytes, externalData ? { externalData } : {});
  try {
    const out = await session.run({ x: new ort.Tensor('float32', X, [1, 64]) });
    return out.y.data as Float32Array;
  } finally {
    await session.release();
  }
}

const entries = (t: TensorProto) => t.externalData.map((e) => [e.key, e.value]);

describe('externalizeData', () => {
  it('moves W (8192 B) and keeps b (128 B) inline at the default 1024-byte threshold, as onnx.save_model', () => {
    const m = model();
    const before = encodeModel(m);
    const ext = externalizeData(m);
    expect(encodeModel(m)).toEqual(before); // the caller's model is untouched
    expect(ext.location).toBe('model.onnx_data');
    const [w, b] = decodeModel(ext.model).graph!.initializer;
    expect(w.dataLocation).toBe(TensorProto_DataLocation.EXTERNAL);
    expect(entries(w)).toEqual([
      ['location', 'model.onnx_data'],
      ['offset', '0'],
      ['length', '8192'],
    ]);
    expect(w.rawData.byteLength).toBe(0);
    expect(b.externalData).toEqual([]);
    expect(tensorData(b).data).toEqual(B);
    expect(ext.data).toEqual(bytesOf(W));
    // W's 8192 bytes left the model; its three external_data entries (under 64 bytes) came in.
    expect(ext.model.byteLength).toBeLessThan(before.byteLength - 8192 + 64);
    expect(encodeModel(decodeModel(ext.model))).toEqual(ext.model);
  });

  it('lays out attribute tensors after initializers with convertAttribute, padding to `align`', () => {
    const ext = externalizeData(model(), {
      location: 'weights.bin',
      sizeThreshold: 256,
      convertAttribute: true,
      align: 3000,
    });
    const g = decodeModel(ext.model).graph!;
    expect(entries(g.initializer[0])).toEqual([
      ['location', 'weights.bin'],
      ['offset', '0'],
      ['length', '8192'],
    ]);
    expect(entries(g.node[0].attribute[0].t!)).toEqual([
      ['location', 'weights.bin'],
      ['offset', '9000'],
      ['length', '512'],
    ]);
    expect(g.initializer[1].dataLocation).toBe(TensorProto_DataLocation.DEFAULT); // 128 B < 256
    expect(ext.data.byteLength).toBe(9512);
    expect(ext.data.subarray(0, 8192)).toEqual(bytesOf(W));
    expect(ext.data.subarray(8192, 9000).every((x) => x === 0)).toBe(true);
    expect(ext.data.subarray(9000)).toEqual(bytesOf(C));
    // Without convertAttribute the Constant's tensor stays inline whatever its size (onnx's default).
    const initializersOnly = decodeModel(externalizeData(model(), { sizeThreshold: 256 }).model).graph!;
    expect(tensorData(initializersOnly.node[0].attribute[0].t!).data).toEqual(C);
  });

  it('internalizeData gives back the original bytes as views of the data file', () => {
    const original = encodeModel(model());
    const ext = externalizeData(model(), { sizeThreshold: 256, convertAttribute: true });
    const m = decodeModel(ext.model);
    expect(externalLocations(m)).toEqual(['model.onnx_data']);
    const back = internalizeData(m, (loc) => (loc === 'model.onnx_data' ? ext.data : undefined));
    expect(encodeModel(back)).toEqual(original);
    const w = back.graph!.initializer[0].rawData;
    expect(w).toEqual(bytesOf(W));
    expect(w.buffer).toBe(ext.data.buffer);
    expect(externalLocations(back)).toEqual([]);
    expect(m.graph!.initializer[0].dataLocation).toBe(TensorProto_DataLocation.EXTERNAL); // input untouched
  });

  it('runs the same in onnxruntime-web inline and with external data', async () => {
    const want = reference();
    const inline = await run(encodeModel(model()));
    const ext = externalizeData(model(), { sizeThreshold: 256, convertAttribute: true });
    const external = await run(ext.model, [{ path: ext.location, data: ext.data }]);
    for (const y of [inline, external]) {
      expect(y.length).toBe(128);
      y.forEach((v, i) => expect(Math.abs(v - want[i])).toBeLessThan(1e-5));
    }
  });
});

describe('internalizeData errors', () => {
  const ext = externalizeData(model());
  const m = decodeModel(ext.model);

  it('a tensor past the end of the data file names the data file and the tensor', () => {
    const short = ext.data.subarray(0, ext.data.length - 1);
    const call = () => internalizeData(m, () => short);
    expect(call).toThrow(ModelFormatError);
    expect(call).toThrow(
      'model.onnx_data: tensor W: bytes [0, 8192) are past the end of the file (8191 bytes)',
    );
  });

  it('a missing data file names it', () => {
    expect(() => internalizeData(m, () => undefined, 'decoder.onnx')).toThrow(
      'model.onnx_data: tensor W: data file not found (referenced by decoder.onnx)',
    );
  });

  it('a length that does not match dtype and dims, or a location outside the model folder, is rejected', () => {
    const bad = (key: string, value: string) => {
      const copy = decodeModel(ext.model);
      copy.graph!.initializer[0].externalData.find((e) => e.key === key)!.value = value;
      return copy;
    };
    const files = () => new Uint8Array(10000);
    expect(() => internalizeData(bad('length', '4096'), files)).toThrow(
      'model.onnx: tensor W: external data length 4096 does not match float32 dims (8192 bytes)',
    );
    expect(() => internalizeData(bad('offset', '-1'), files)).toThrow(/offset "-1" is not a byte count/);
    expect(() => internalizeData(bad('location', '../secret'), files)).toThrow(ModelFormatError);
    expect(() => externalLocations(bad('location', '/etc/x'))).toThrow(/not a relative path/);
  });
});

describe('tensor visiting order', () => {
  it('is initializers (subgraphs included) first, then attribute tensors, as onnx', () => {
    const t = (name: string) => tensorProto(name, 'uint8', [1], new Uint8Array([0]));
    const m = create(ModelProtoSchema, {
      graph: {
        initializer: [t('init_main')],
        node: [
          {
            opType: 'Constant',
            attribute: [{ name: 'value', type: AttributeProto_AttributeType.TENSOR, t: t('const_main') }],
          },
          {
            opType: 'If',
            attribute: [
              {
                name: 'then_branch',
                type: AttributeProto_AttributeType.GRAPH,
                g: {
                  initializer: [t('init_sub')],
                  node: [
                    {
                      opType: 'Constant',
                      attribute: [
                        { name: 'value', type: AttributeProto_AttributeType.TENSOR, t: t('const_sub') },
                      ],
                    },
                  ],
                },
              },
            ],
          },
        ],
      },
    });
    const seen: string[] = [];
    forEachTensor(m, (tensor, role) => seen.push(`${role}:${tensor.name}`));
    expect(seen).toEqual([
      'initializer:init_main',
      'initializer:init_sub',
      'attribute:const_main',
      'attribute:const_sub',
    ]);
  });
});
