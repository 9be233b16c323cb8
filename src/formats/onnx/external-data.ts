/**
 * ONNX external data: tensor bytes kept in a separate file next to the model, referenced by
 * TensorProto.external_data entries `location` (a path relative to the model), `offset` and
 * `length` (decimal byte counts), with data_location = EXTERNAL. Models past protobuf's 2 GiB
 * limit must be stored this way; optimum exports them as `model.onnx` + `model.onnx_data`.
 *
 * externalizeData writes what the onnx python package writes (onnx.save_model with
 * save_as_external_data=True, all_tensors_to_one_file=True): tensors whose raw_data has at least
 * size_threshold (1024) bytes, initializers only unless convert_attribute, in the onnx visiting
 * order (see mapTensors), back to back with no alignment padding, each with the entries
 * location, offset, length in that order, raw_data cleared. optimum's export passes
 * convert_attribute=True; onnx's own default is False. (Older onnx releases compared
 * sys.getsizeof(raw_data), i.e. length + 33, so tensors of 991-1023 bytes also moved; current onnx
 * compares the length, as here. Readers do not care either way.)
 */
import { clearField, create, isFieldSet } from '@bufbuild/protobuf';
import { ModelFormatError } from '../../errors.js';
import { byteLength, dtypeOf } from './dtype.js';
import { encodeModel } from './model.js';
import {
  type ModelProto,
  type StringStringEntryProto,
  StringStringEntryProtoSchema,
  type TensorProto,
  TensorProtoSchema,
  TensorProto_DataLocation,
} from './onnx_pb.js';
import { elementCount, tensorDims } from './tensor.js';
import { mapTensors, forEachTensor, withFields } from './walk.js';

export interface ExternalizeOptions {
  /** The data file's path relative to the model. Default 'model.onnx_data' (optimum: the model's file name + '_data'). */
  location?: string;
  /** Tensors whose raw_data has at least this many bytes move to the data file. Default 1024, as onnx.save_model. */
  sizeThreshold?: number;
  /** Also move node attribute tensors (Constant values). Default false, as onnx; optimum passes true. */
  convertAttribute?: boolean;
  /**
   * Start every moved tensor at a multiple of this many bytes, zero-padding in between. Default 1
   * (no padding, as onnx python). onnxruntime's own writer aligns big tensors to 64 KiB so they can
   * be memory-mapped; readers accept any offset.
   */
  align?: number;
}

export interface ExternalizedModel {
  /** The model file (small: tensors past the threshold hold only their external_data entries). */
  model: Uint8Array;
  /** The data file. */
  data: Uint8Array;
  /** The data file's path relative to the model, as written in the model. */
  location: string;
}

/** The model file and one data file with its big tensors. Does not modify `model`; copies each moved tensor's bytes once, into `data`. */
export function externalizeData(model: ModelProto, opts: ExternalizeOptions = {}): ExternalizedModel {
  const location = opts.location ?? 'model.onnx_data';
  const threshold = opts.sizeThreshold ?? 1024;
  const align = opts.align ?? 1;
  checkLocation(location, 'externalizeData', 'location');
  if (!Number.isSafeInteger(align) || align < 1) {
    throw new ModelFormatError('externalizeData', 'align', `must be a positive integer, got ${align}`);
  }
  const moved: { bytes: Uint8Array; offset: number }[] = [];
  let size = 0;
  const out = mapTensors(model, (t, role) => {
    const hasRaw = isFieldSet(t, TensorProtoSchema.field.rawData);
    if (!hasRaw && isExternal(t) && externalInfo(t, 'model.onnx').location === location) {
      throw new ModelFormatError(location, `tensor ${t.name}`, 'the model already references this data file');
    }
    if (role === 'attribute' && opts.convertAttribute !== true) return t;
    if (!hasRaw || t.rawData.byteLength < threshold) return t;
    const offset = Math.ceil(size / align) * align;
    const length = t.rawData.byteLength;
    moved.push({ bytes: t.rawData, offset });
    size = offset + length;
    const external = withFields(t, {
      dataLocation: TensorProto_DataLocation.EXTERNAL,
      externalData: [
        entry('location', location),
        entry('offset', String(offset)),
        entry('length', String(length)),
      ],
    });
    clearField(external, TensorProtoSchema.field.rawData);
    return external;
  });
  const data = new Uint8Array(size);
  for (const m of moved) data.set(m.bytes, m.offset);
  return { model: encodeModel(out), data, location };
}

/**
 * The model with every external tensor's raw_data set to its bytes in the data file (a subarray,
 * not a copy) and its external_data and data_location cleared. `files` returns a data file's bytes
 * by the location written in the model. Checks that each file exists, that offset + length lie in
 * it, and that length matches the tensor's dtype and dims. Does not modify `model`.
 */
export function internalizeData(
  model: ModelProto,
  files: (location: string) => Uint8Array | undefined,
  modelFile = 'model.onnx',
): ModelProto {
  return mapTensors(model, (t) => {
    if (!isExternal(t)) return t;
    const field = `tensor ${t.name}`;
    const info = externalInfo(t, modelFile);
    const dtype = dtypeOf(t.dataType);
    if (dtype === undefined)
      throw new ModelFormatError(modelFile, field, `unsupported data_type ${t.dataType}`);
    const expected = byteLength(dtype, elementCount(tensorDims(t, modelFile)));
    const file = files(info.location);
    if (file === undefined) {
      throw new ModelFormatError(info.location, field, `data file not found (referenced by ${modelFile})`);
    }
    const length = info.length ?? file.byteLength - info.offset;
    if (info.offset + length > file.byteLength) {
      throw new ModelFormatError(
        info.location,
        field,
        `bytes [${info.offset}, ${info.offset + length}) are past the end of the file (${file.byteLength} bytes)`,
      );
    }
    if (length !== expected) {
      throw new ModelFormatError(
        modelFile,
        field,
        `external data length ${length} does not match ${dtype} dims (${expected} bytes)`,
      );
    }
    const internal = withFields(t, {
      rawData: file.subarray(info.offset, info.offset + length),
      externalData: [],
    });
    clearField(internal, TensorProtoSchema.field.dataLocation);
    return internal;
  });
}

/** The distinct data files the model's external tensors reference, in order of first use. */
export function externalLocations(model: ModelProto, modelFile = 'model.onnx'): string[] {
  const locations = new Set<string>();
  forEachTensor(model, (t) => {
    if (isExternal(t)) locations.add(externalInfo(t, modelFile).location);
  });
  return [...locations];
}

interface ExternalInfo {
  location: string;
  offset: number;
  /** Absent: to the end of the file. */
  length: number | undefined;
}

function isExternal(t: TensorProto): boolean {
  return t.dataLocation === TensorProto_DataLocation.EXTERNAL;
}

/** Reads the external_data entries (checksum and basepath are ignored, as onnxruntime does). */
function externalInfo(t: TensorProto, modelFile: string): ExternalInfo {
  const field = `tensor ${t.name}`;
  const get = (key: string): string | undefined => t.externalData.find((e) => e.key === key)?.value;
  const location = get('location');
  if (location === undefined) throw new ModelFormatError(modelFile, field, 'external_data has no location');
  checkLocation(location, modelFile, field);
  const offset = parseCount(get('offset'), 'offset', modelFile, field) ?? 0;
  const length = parseCount(get('length'), 'length', modelFile, field);
  return { location, offset, length };
}

function parseCount(value: string | undefined, key: string, file: string, field: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) {
    throw new ModelFormatError(file, field, `external_data ${key} "${value}" is not a byte count`);
  }
  return n;
}

/** A location must be a relative path that stays in the model's folder. */
function checkLocation(location: string, file: string, field: string): void {
  const absolute = /^([/\\]|[A-Za-z]:)/.test(location);
  if (location === '' || absolute || location.split(/[/\\]/).includes('..')) {
    throw new ModelFormatError(
      file,
      field,
      `external data location "${location}" is not a relative path inside the model's folder`,
    );
  }
}

function entry(key: string, value: string): StringStringEntryProto {
  return create(StringStringEntryProtoSchema, { key, value });
}
