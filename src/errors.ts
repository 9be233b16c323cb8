/**
 * Typed errors. Every error that a user can cause names the file (or input) and the field at
 * fault, so a message reads like "model.safetensors: tensor model.norm.weight: expected shape [64],
 * got [32]".
 */
export class EdgeAdaptersError extends Error {
  // Each class names itself in a string (not new.target.name), so minified bundles keep the names
  // that identify errors across the worker boundary (src/wire-errors.ts).
  /** The file, URL or input the error is about ("config.json", "tokens", ...). */
  readonly file: string;
  /** The field, tensor or key inside it, when one is at fault. */
  readonly field: string | undefined;

  constructor(file: string, field: string | undefined, message: string) {
    super(`${file}${field === undefined ? '' : `: ${field}`}: ${message}`);
    this.name = 'EdgeAdaptersError';
    this.file = file;
    this.field = field;
  }
}

/** A model file (checkpoint, config.json, ONNX, tokenizer) is malformed or unsupported. */
export class ModelFormatError extends EdgeAdaptersError {
  override name = 'ModelFormatError';
}

/** A PEFT adapter file (adapter_config.json, safetensors) is malformed or unsupported. */
export class AdapterFormatError extends EdgeAdaptersError {
  override name = 'AdapterFormatError';
}

/** A well-formed adapter that does not fit the loaded base model. */
export class IncompatibleAdapterError extends EdgeAdaptersError {
  override name = 'IncompatibleAdapterError';
}

/** A request the model cannot serve: token ids outside the vocabulary, a prompt past the context. */
export class InvalidInputError extends EdgeAdaptersError {
  override name = 'InvalidInputError';
}
