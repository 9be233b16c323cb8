import { TensorProto_DataType } from './onnx_pb.js';

/** The ONNX element types Edge Adapters reads and writes. */
export type OnnxDtype =
  | 'float32'
  | 'float16'
  | 'bfloat16'
  | 'float64'
  | 'int8'
  | 'uint8'
  | 'int16'
  | 'uint16'
  | 'int32'
  | 'int64'
  | 'uint32'
  | 'uint64'
  | 'bool'
  | 'int4'
  | 'uint4';

/**
 * The typed array that holds each dtype. float16 and bfloat16 are their raw bits; bool is one
 * byte per element (0 or 1); int4 and uint4 are packed two to a byte, element 0 in the low nibble.
 */
export interface DtypeArrays {
  float32: Float32Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  float64: Float64Array;
  int8: Int8Array;
  uint8: Uint8Array;
  int16: Int16Array;
  uint16: Uint16Array;
  int32: Int32Array;
  int64: BigInt64Array;
  uint32: Uint32Array;
  uint64: BigUint64Array;
  bool: Uint8Array;
  int4: Uint8Array;
  uint4: Uint8Array;
}

export type OnnxTypedArray = DtypeArrays[OnnxDtype];

interface DtypeInfo {
  dataType: TensorProto_DataType;
  /** Bits per element: 4 for the packed types. */
  bits: number;
  /** The typed array class; for int4/uint4 it holds packed bytes, not elements. */
  array: {
    new (buffer: ArrayBufferLike, byteOffset: number, length: number): OnnxTypedArray;
    BYTES_PER_ELEMENT: number;
  };
}

const T = TensorProto_DataType;

const INFO: Record<OnnxDtype, DtypeInfo> = {
  float32: { dataType: T.FLOAT, bits: 32, array: Float32Array },
  float16: { dataType: T.FLOAT16, bits: 16, array: Uint16Array },
  bfloat16: { dataType: T.BFLOAT16, bits: 16, array: Uint16Array },
  float64: { dataType: T.DOUBLE, bits: 64, array: Float64Array },
  int8: { dataType: T.INT8, bits: 8, array: Int8Array },
  uint8: { dataType: T.UINT8, bits: 8, array: Uint8Array },
  int16: { dataType: T.INT16, bits: 16, array: Int16Array },
  uint16: { dataType: T.UINT16, bits: 16, array: Uint16Array },
  int32: { dataType: T.INT32, bits: 32, array: Int32Array },
  int64: { dataType: T.INT64, bits: 64, array: BigInt64Array },
  uint32: { dataType: T.UINT32, bits: 32, array: Uint32Array },
  uint64: { dataType: T.UINT64, bits: 64, array: BigUint64Array },
  bool: { dataType: T.BOOL, bits: 8, array: Uint8Array },
  int4: { dataType: T.INT4, bits: 4, array: Uint8Array },
  uint4: { dataType: T.UINT4, bits: 4, array: Uint8Array },
};

const BY_DATA_TYPE = new Map<number, OnnxDtype>(
  (Object.keys(INFO) as OnnxDtype[]).map((d) => [INFO[d].dataType, d]),
);

/** The TensorProto.DataType of a dtype. */
export function onnxDataType(dtype: OnnxDtype): TensorProto_DataType {
  return INFO[dtype].dataType;
}

/** The dtype of a TensorProto.data_type, or undefined for types we do not support (string, complex, float8). */
export function dtypeOf(dataType: number): OnnxDtype | undefined {
  return BY_DATA_TYPE.get(dataType);
}

/** The typed array class of a dtype (packed bytes for int4/uint4). */
export function arrayClass(dtype: OnnxDtype): DtypeInfo['array'] {
  return INFO[dtype].array;
}

/** The number of bytes `count` elements take in raw_data (4-bit types packed, rounded up). */
export function byteLength(dtype: OnnxDtype, count: number): number {
  return Math.ceil((count * INFO[dtype].bits) / 8);
}

/** The number of typed-array items that hold `count` elements (bytes for the 4-bit types). */
export function arrayLength(dtype: OnnxDtype, count: number): number {
  return byteLength(dtype, count) / INFO[dtype].array.BYTES_PER_ELEMENT;
}
