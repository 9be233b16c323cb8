import { create, isFieldSet } from '@bufbuild/protobuf';
import { InvalidInputError, ModelFormatError } from '../../errors.js';
import {
  type DtypeArrays,
  type OnnxDtype,
  type OnnxTypedArray,
  arrayClass,
  arrayLength,
  byteLength,
  dtypeOf,
  onnxDataType,
} from './dtype.js';
import { type TensorProto, TensorProtoSchema, TensorProto_DataLocation } from './onnx_pb.js';

/** A tensor's values as a typed array, discriminated by dtype. */
export type TensorData = { [D in OnnxDtype]: { dtype: D; dims: number[]; data: DtypeArrays[D] } }[OnnxDtype];

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A TensorProto holding `data` in raw_data (little-endian). `data` is either the dtype's typed
 * array (see DtypeArrays) or its raw little-endian bytes. On little-endian hosts raw_data is a view
 * of `data`, not a copy.
 */
export function tensorProto(
  name: string,
  dtype: OnnxDtype,
  dims: readonly number[],
  data: OnnxTypedArray,
): TensorProto {
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0)
      throw new InvalidInputError(`tensor ${name}`, 'dims', `bad dimension ${d}`);
  }
  const expected = byteLength(dtype, elementCount(dims));
  const itemSize = data.BYTES_PER_ELEMENT;
  if (data.byteLength !== expected || (itemSize !== 1 && itemSize !== arrayClass(dtype).BYTES_PER_ELEMENT)) {
    throw new InvalidInputError(
      `tensor ${name}`,
      'data',
      `${dtype} [${dims.join(', ')}] needs ${expected} bytes, got a ${data.constructor.name} of ${data.byteLength} bytes`,
    );
  }
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return create(TensorProtoSchema, {
    name,
    dataType: onnxDataType(dtype),
    dims: dims.map((d) => BigInt(d)),
    rawData: HOST_LITTLE_ENDIAN ? bytes : swapBytes(bytes, itemSize),
  });
}

/**
 * The values of a TensorProto, from raw_data or from the typed field the ONNX spec assigns to its
 * type. Typed arrays read from raw_data are views of it when it is aligned (so of the model file's
 * bytes); unaligned raw_data is copied. `file` names the model in errors.
 */
export function tensorData(t: TensorProto, file = 'model.onnx'): TensorData {
  const field = `tensor ${t.name}`;
  const dtype = dtypeOf(t.dataType);
  if (dtype === undefined) throw new ModelFormatError(file, field, `unsupported data_type ${t.dataType}`);
  const dims = tensorDims(t, file);
  const count = elementCount(dims);
  let data: OnnxTypedArray;
  if (isFieldSet(t, TensorProtoSchema.field.rawData)) {
    data = fromRaw(t.rawData, dtype, count, file, field);
  } else if (t.dataLocation === TensorProto_DataLocation.EXTERNAL) {
    throw new ModelFormatError(
      file,
      field,
      'data is in an external file that was not loaded (see internalizeData)',
    );
  } else {
    data = fromTypedField(t, dtype, count, file, field);
  }
  return { dtype, dims, data } as TensorData;
}

/** The dims of a TensorProto as numbers (checked non-negative and exact). */
export function tensorDims(t: TensorProto, file = 'model.onnx'): number[] {
  return t.dims.map((d) => {
    if (d < 0n || d > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ModelFormatError(file, `tensor ${t.name}`, `bad dimension ${d} in dims`);
    }
    return Number(d);
  });
}

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

function fromRaw(
  raw: Uint8Array,
  dtype: OnnxDtype,
  count: number,
  file: string,
  field: string,
): OnnxTypedArray {
  const expected = byteLength(dtype, count);
  if (raw.byteLength !== expected) {
    throw new ModelFormatError(
      file,
      field,
      `raw_data has ${raw.byteLength} bytes, expected ${expected} for ${count} ${dtype}`,
    );
  }
  const Ctor = arrayClass(dtype);
  const size = Ctor.BYTES_PER_ELEMENT;
  // raw_data is usually a subarray of the file: typed arrays need an element-aligned offset.
  let bytes = raw.byteOffset % size === 0 ? raw : raw.slice();
  if (!HOST_LITTLE_ENDIAN) bytes = swapBytes(bytes, size);
  return new Ctor(bytes.buffer, bytes.byteOffset, expected / size);
}

function fromTypedField(
  t: TensorProto,
  dtype: OnnxDtype,
  count: number,
  file: string,
  field: string,
): OnnxTypedArray {
  // Which field holds which type is fixed by onnx.proto: 8/16-bit types, bool, float16/bfloat16 bits
  // and packed 4-bit pairs all go in int32_data, one value (or one packed byte) per int32.
  const [name, data]: [string, OnnxTypedArray] = (() => {
    switch (dtype) {
      case 'float32':
        return ['float_data', Float32Array.from(t.floatData)];
      case 'float64':
        return ['double_data', Float64Array.from(t.doubleData)];
      case 'int64':
        return ['int64_data', BigInt64Array.from(t.int64Data)];
      case 'uint64':
        return ['uint64_data', BigUint64Array.from(t.uint64Data)];
      case 'uint32':
        return ['uint64_data', Uint32Array.from(t.uint64Data, Number)];
      case 'int32':
        return ['int32_data', Int32Array.from(t.int32Data)];
      case 'int16':
        return ['int32_data', Int16Array.from(t.int32Data)];
      case 'int8':
        return ['int32_data', Int8Array.from(t.int32Data)];
      case 'uint16':
      case 'float16':
      case 'bfloat16':
        return ['int32_data', Uint16Array.from(t.int32Data)];
      case 'uint8':
      case 'bool':
      case 'int4':
      case 'uint4':
        return ['int32_data', Uint8Array.from(t.int32Data)];
    }
  })();
  const expected = arrayLength(dtype, count);
  if (data.length !== expected) {
    throw new ModelFormatError(
      file,
      field,
      `${name} has ${data.length} values, expected ${expected} for ${count} ${dtype}`,
    );
  }
  return data;
}

/** A copy of `bytes` with every `size`-byte group reversed (little- <-> big-endian). */
function swapBytes(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += size) {
    for (let j = 0; j < size; j++) out[i + j] = bytes[i + size - 1 - j];
  }
  return out;
}
