import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { ModelFormatError } from '../../errors.js';
import { type ModelProto, ModelProtoSchema } from './onnx_pb.js';
import { forEachTensor } from './walk.js';

/** Protobuf cannot parse a message of 2 GiB or more; bigger models keep their weights in external data. */
export const MAX_PROTOBUF_BYTES = 2 ** 31 - 1;

/**
 * Parses an ONNX model. Bytes fields (raw_data, unknown fields) are subarrays of `bytes`, not
 * copies: keep `bytes` unmodified while the model is in use. Fields our schema does not declare
 * are kept and written back by encodeModel. `file` names the model in errors.
 */
export function decodeModel(bytes: Uint8Array, file = 'model.onnx'): ModelProto {
  let model: ModelProto;
  try {
    model = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    throw new ModelFormatError(file, undefined, `not a valid ONNX model protobuf (${(e as Error).message})`);
  }
  if (model.graph === undefined) throw new ModelFormatError(file, 'graph', 'the model has no graph');
  return model;
}

/** Serializes an ONNX model; fails if it would pass protobuf's 2 GiB limit (use externalizeData). */
export function encodeModel(model: ModelProto, file = 'model.onnx'): Uint8Array {
  let inline = 0;
  forEachTensor(model, (t) => (inline += t.rawData.byteLength));
  if (inline > MAX_PROTOBUF_BYTES) throw tooBig(file, inline);
  const bytes = toBinary(ModelProtoSchema, model);
  if (bytes.byteLength > MAX_PROTOBUF_BYTES) throw tooBig(file, bytes.byteLength);
  return bytes;
}

function tooBig(file: string, size: number): ModelFormatError {
  return new ModelFormatError(
    file,
    undefined,
    `${size} bytes is past protobuf's 2 GiB limit: store the weights as external data (externalizeData)`,
  );
}
