/**
 * An onnxruntime session over a training graph (src/train/training-graph.ts): feeds a batch and the
 * adapter's slot tensors, returns the loss, each row's log-probability and the slot inputs'
 * gradients. The same session types run it as inference graphs (wasm in browsers and Node, or
 * onnxruntime-node); no training API is needed.
 */
import type * as ort from 'onnxruntime-web';
import { headDim, type LlamaConfig } from '../formats/checkpoint.js';
import { encodeModel, externalizeData } from '../formats/onnx/index.js';
import type { ModelProto } from '../formats/onnx/onnx_pb.js';
import { ModelFormatError } from '../errors.js';
import type { Backend, OrtApi } from './backend.js';

/**
 * The batch as the training graph takes it (src/train/batch.ts makes it): rows padded on the right
 * to `length`, after `prefix` cache entries (prefix tuning).
 */
export interface BatchTensors {
  size: number;
  /** Columns, virtual tokens included. */
  length: number;
  /** KV-cache entries before every row (prefix tuning): attended to, not in input_ids. */
  prefix: number;
  /** [size, length] */
  inputIds: BigInt64Array;
  /** [size, prefix + length]: 1 on the prefix and the row's tokens, 0 on padding. */
  attentionMask: BigInt64Array;
  /** [size, length]: prefix, prefix + 1, ... (as PEFT and transformers give them). */
  positionIds: BigInt64Array;
  /** [size, length]: the next token at each position (0 where not scored). */
  labels: BigInt64Array;
  /** [size, length]: 1 where the label is a completion token. */
  lossMask: Float32Array;
}

export interface TrainingOutputs {
  /** NaN for a scoring graph (no loss). */
  loss: number;
  seqLogps: Float32Array;
  /** Slot input -> gradient (same layout as the input). */
  grads: Map<string, Float32Array>;
}

/** Graphs past this size go to onnxruntime with their weights as external data (no 2 GB protobuf). */
const INLINE_LIMIT = 256 << 20;

/** Every input of a training graph run, as onnxruntime tensors. */
export function trainingFeeds(
  ortApi: OrtApi,
  config: LlamaConfig,
  batch: BatchTensors,
  slots: Record<string, ort.Tensor>,
  extra: Record<string, Float32Array | number>,
): Record<string, ort.Tensor> {
  const { Tensor } = ortApi;
  const dims = [batch.size, batch.length];
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new Tensor('int64', batch.inputIds, dims),
    attention_mask: new Tensor('int64', batch.attentionMask, [batch.size, batch.prefix + batch.length]),
    position_ids: new Tensor('int64', batch.positionIds, dims),
    labels: new Tensor('int64', batch.labels, dims),
    loss_mask: new Tensor('float32', batch.lossMask, dims),
    ...slots,
  };
  // An empty cache, unless `slots` brings one (a prefix).
  const empty = [batch.size, config.num_key_value_heads, 0, headDim(config)];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    for (const kind of ['key', 'value']) {
      const name = `past_key_values.${i}.${kind}`;
      feeds[name] ??= new Tensor('float32', new Float32Array(0), empty);
    }
  }
  for (const [name, value] of Object.entries(extra)) {
    feeds[name] =
      typeof value === 'number'
        ? new Tensor('float32', Float32Array.from([value]), [])
        : new Tensor('float32', value, [value.length]);
  }
  return feeds;
}

export class TrainingSession {
  private constructor(
    private readonly backend: Backend,
    private readonly session: ort.InferenceSession,
    private readonly config: LlamaConfig,
    /** Slot input -> gradient output. */
    readonly gradients: ReadonlyMap<string, string>,
  ) {}

  static async create(
    backend: Backend,
    graph: ModelProto,
    config: LlamaConfig,
    gradients: ReadonlyMap<string, string>,
    file = 'training graph',
  ): Promise<TrainingSession> {
    const weightBytes = (graph.graph?.initializer ?? []).reduce((n, t) => n + t.rawData.byteLength, 0);
    const options: ort.InferenceSession.SessionOptions = { ...backend.sessionOptions };
    let bytes: Uint8Array;
    if (weightBytes > INLINE_LIMIT) {
      const split = externalizeData(graph, { location: 'training.onnx_data' });
      bytes = split.model;
      options.externalData = [{ path: split.location, data: split.data }];
    } else {
      bytes = encodeModel(graph);
    }
    let session: ort.InferenceSession;
    try {
      session = await backend.ort.InferenceSession.create(bytes, options);
    } catch (cause) {
      throw new ModelFormatError(
        file,
        undefined,
        `onnxruntime could not load the training graph: ${String(cause)}`,
      );
    }
    return new TrainingSession(backend, session, config, gradients);
  }

  get ort(): OrtApi {
    return this.backend.ort;
  }

  async run(
    batch: BatchTensors,
    slots: Record<string, ort.Tensor>,
    extra: Record<string, Float32Array | number> = {},
  ): Promise<TrainingOutputs> {
    const feeds = trainingFeeds(this.backend.ort, this.config, batch, slots, extra);
    const wanted = Object.fromEntries(
      Object.keys(feeds)
        .filter((name) => this.session.inputNames.includes(name))
        .map((name) => [name, feeds[name]]),
    );
    const out = await this.session.run(wanted);
    const grads = new Map<string, Float32Array>();
    for (const [input, output] of this.gradients) grads.set(input, out[output].data as Float32Array);
    return {
      loss: out.loss ? Number((out.loss.data as Float32Array)[0]) : NaN,
      seqLogps: out.seq_logps.data as Float32Array,
      grads,
    };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
