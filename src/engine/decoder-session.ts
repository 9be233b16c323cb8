/**
 * One onnxruntime session over a decoder graph with the Hugging Face / optimum I/O layout
 * (input_ids, attention_mask, position_ids, past_key_values.{i}.key|value -> logits,
 * present.{i}.key|value), and the KV cache carried between calls.
 */
import type * as ort from 'onnxruntime-web';
import type { Backend } from './backend.js';
import { headDim, type LlamaConfig } from '../formats/checkpoint.js';
import { InvalidInputError, ModelFormatError } from '../errors.js';
import type { SlotLayout } from '../graph/adapter-slots.js';
import type { AdapterFeeds } from '../methods/feeds.js';
import { slotTensors } from './slot-feeds.js';

/** The keys and values of every layer for the tokens seen so far (batch 1). */
export interface KvCache {
  /** Tokens held. */
  readonly length: number;
  /** `past_key_values.{i}.key|value` -> tensor [1, kv_heads, length, head_dim]. */
  readonly tensors: ReadonlyMap<string, ort.Tensor>;
}

export interface ExternalDataFile {
  path: string;
  data: Uint8Array;
}

/** The active adapter as the session feeds it; a request keeps the one it started with. */
export interface Conditioning {
  slots: Record<string, ort.Tensor>;
  /** Virtual token ids (prompt tuning, P-tuning), run before the prompt. */
  virtualTokens: number[];
  /** Prefix tuning: the cache every request starts from. */
  prefix?: KvCache;
}

export class DecoderSession {
  private conditioning: Conditioning;

  private constructor(
    private readonly backend: Backend,
    private readonly session: ort.InferenceSession,
    readonly config: LlamaConfig,
    private readonly pastNames: string[],
    /** The adapter slots of the graph, when it was patched with them. */
    readonly slots: SlotLayout | undefined,
  ) {
    this.conditioning = {
      slots: slots ? slotTensors(backend.ort, slots, undefined, this.minRank) : {},
      virtualTokens: [],
    };
  }

  static async create(
    backend: Backend,
    model: Uint8Array,
    config: LlamaConfig,
    options: { externalData?: ExternalDataFile[]; file?: string; slots?: SlotLayout } = {},
  ): Promise<DecoderSession> {
    const file = options.file ?? 'model.onnx';
    const sessionOptions: ort.InferenceSession.SessionOptions = { ...backend.sessionOptions };
    if (options.externalData?.length) sessionOptions.externalData = options.externalData;
    let session: ort.InferenceSession;
    try {
      session = await backend.ort.InferenceSession.create(model, sessionOptions);
    } catch (cause) {
      throw new ModelFormatError(file, undefined, `onnxruntime could not load the model: ${String(cause)}`);
    }
    for (const name of ['input_ids', 'attention_mask']) {
      if (!session.inputNames.includes(name)) {
        throw new ModelFormatError(
          file,
          name,
          `the graph has no input "${name}"; expected the Hugging Face decoder layout`,
        );
      }
    }
    if (!session.outputNames.includes('logits')) {
      throw new ModelFormatError(file, 'logits', 'the graph has no output "logits"');
    }
    const pastNames: string[] = [];
    for (let i = 0; i < config.num_hidden_layers; i++) {
      for (const kind of ['key', 'value']) {
        const name = `past_key_values.${i}.${kind}`;
        if (!session.inputNames.includes(name)) {
          throw new ModelFormatError(
            file,
            name,
            `missing KV cache input for layer ${i} of ${config.num_hidden_layers}`,
          );
        }
        pastNames.push(name);
      }
    }
    return new DecoderSession(backend, session, config, pastNames, options.slots);
  }

  /**
   * Makes `feeds` the active adapter (undefined = the base) from the next forward on. Everything is
   * built before anything changes: on an error the previous adapter stays active.
   */
  setAdapter(feeds: AdapterFeeds | undefined): void {
    if (feeds && !this.slots) {
      throw new InvalidInputError('adapter', undefined, 'this model was loaded without adapter slots');
    }
    const slots = this.slots ? slotTensors(this.backend.ort, this.slots, feeds, this.minRank) : {};
    const virtualTokens = Array.from(
      { length: feeds?.prompt?.tokens ?? 0 },
      (_, k) => this.config.vocab_size + k,
    );
    let prefix: KvCache | undefined;
    if (feeds?.prefix) {
      const { tokens, keys, values } = feeds.prefix;
      const shape = [1, this.config.num_key_value_heads, tokens, headDim(this.config)];
      const tensors = new Map<string, ort.Tensor>();
      for (let i = 0; i < this.config.num_hidden_layers; i++) {
        tensors.set(`past_key_values.${i}.key`, new this.backend.ort.Tensor('float32', keys[i], shape));
        tensors.set(`past_key_values.${i}.value`, new this.backend.ort.Tensor('float32', values[i], shape));
      }
      prefix = { length: tokens, tensors };
    }
    this.conditioning = { slots, virtualTokens, prefix };
  }

  /** WebGPU cannot bind the empty buffers of rank-0 slots: feed rank 1 of zeros there instead. */
  private get minRank(): number {
    return this.backend.name === 'webgpu' ? 1 : 0;
  }

  /** The active adapter, for a request to keep using until it ends. */
  get active(): Conditioning {
    return this.conditioning;
  }

  /** The cache a request starts from: empty, or the prefix of `conditioning` (prefix tuning). */
  startCache(conditioning: Conditioning = this.conditioning): KvCache {
    return conditioning.prefix ?? this.emptyCache();
  }

  emptyCache(): KvCache {
    const shape = [1, this.config.num_key_value_heads, 0, headDim(this.config)];
    const tensors = new Map<string, ort.Tensor>();
    for (const name of this.pastNames)
      tensors.set(name, new this.backend.ort.Tensor('float32', new Float32Array(0), shape));
    return { length: 0, tensors };
  }

  /**
   * Runs `tokens` after the cached ones. Returns the logits of every new position, row-major
   * [tokens.length, vocab_size], and the cache extended by the new tokens. The given cache is not
   * changed, so it can be reused (e.g. to branch from a shared prompt).
   */
  async forward(
    tokens: readonly number[],
    cache: KvCache,
    conditioning: Conditioning = this.conditioning,
  ): Promise<{ logits: Float32Array; cache: KvCache }> {
    const { vocab_size: vocab, max_position_embeddings: context } = this.config;
    const { slots, virtualTokens } = conditioning;
    if (tokens.length === 0) throw new InvalidInputError('tokens', undefined, 'no tokens to run');
    const limit = vocab + virtualTokens.length;
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= limit) {
        throw new InvalidInputError(
          'tokens',
          `[${i}]`,
          `token id ${t} is outside the vocabulary [0, ${vocab})`,
        );
      }
    });
    const total = cache.length + tokens.length;
    if (total > context) {
      throw new InvalidInputError(
        'tokens',
        undefined,
        `${total} tokens (${cache.length} cached + ${tokens.length} new) exceed the context of ${context} (max_position_embeddings)`,
      );
    }
    const { Tensor } = this.backend.ort;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, tokens.length]),
      attention_mask: new Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (this.session.inputNames.includes('position_ids')) {
      const positions = BigInt64Array.from(tokens, (_, i) => BigInt(cache.length + i));
      feeds.position_ids = new Tensor('int64', positions, [1, tokens.length]);
    }
    for (const [name, tensor] of cache.tensors) feeds[name] = tensor;
    Object.assign(feeds, slots);

    const out = await this.session.run(feeds);
    const next = new Map<string, ort.Tensor>();
    for (const name of this.pastNames) {
      const present = out[name.replace('past_key_values', 'present')];
      if (!present)
        throw new ModelFormatError(
          'model.onnx',
          name,
          'the graph returned no present tensor for this cache entry',
        );
      next.set(name, present);
    }
    const logits = out.logits.data as Float32Array;
    if (logits.length !== tokens.length * vocab) {
      throw new ModelFormatError(
        'model.onnx',
        'logits',
        `expected ${tokens.length}x${vocab} logits, got ${logits.length} values`,
      );
    }
    return { logits, cache: { length: total, tensors: next } };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
