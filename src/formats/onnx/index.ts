export { decodeModel, encodeModel, MAX_PROTOBUF_BYTES } from './model.js';
export { tensorProto, tensorData, tensorDims, elementCount, type TensorData } from './tensor.js';
export {
  type OnnxDtype,
  type DtypeArrays,
  type OnnxTypedArray,
  onnxDataType,
  dtypeOf,
  byteLength,
} from './dtype.js';
export {
  externalizeData,
  internalizeData,
  externalLocations,
  type ExternalizeOptions,
  type ExternalizedModel,
} from './external-data.js';
export { mapTensors, forEachTensor, withFields, type TensorRole, type TensorMapper } from './walk.js';
export {
  type ModelProto,
  ModelProtoSchema,
  type GraphProto,
  GraphProtoSchema,
  type NodeProto,
  NodeProtoSchema,
  type TensorProto,
  TensorProtoSchema,
  type ValueInfoProto,
  ValueInfoProtoSchema,
  type AttributeProto,
  AttributeProtoSchema,
  type TypeProto,
  TypeProtoSchema,
  type TypeProto_Tensor,
  TypeProto_TensorSchema,
  type TensorShapeProto,
  TensorShapeProtoSchema,
  type TensorShapeProto_Dimension,
  TensorShapeProto_DimensionSchema,
  type OperatorSetIdProto,
  OperatorSetIdProtoSchema,
  type StringStringEntryProto,
  StringStringEntryProtoSchema,
  TensorProto_DataType,
  TensorProto_DataLocation,
  AttributeProto_AttributeType,
} from './onnx_pb.js';
