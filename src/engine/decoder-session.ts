/**
 * One onnxruntime session over a decoder graph with the Hugging Face / optimum I/O layout
 * (input_ids, attention_mask, position_ids, past_key_values.{i}.key|value -> logits,
 * present.{i}.key|value), and the KV cache carried between calls.
 *
 * On WebGPU the state stays on the GPU: the KV cache is fetched as `gpu-buffer` outputs and fed back
 * as inputs (only the logits come back to the CPU), and the active adapter's slot tensors are
 * uploaded once per activation. GPU tensors are freed explicitly: a request holds the adapter it
 * started with (`begin` / `end`), and whoever drops a cache calls `dispose` (a no-op on the CPU).
 */
import type * as ort from 'onnxruntime-web';
import type { Backend } from './backend.js';
import { headDim, type LlamaConfig } from '../formats/checkpoint.js';
import { InvalidInputError, ModelFormatError } from '../errors.js';
import type { SlotLayout } from '../graph/adapter-slots.js';
import type { AdapterFeeds } from '../methods/feeds.js';
import { slotTensors } from './slot-feeds.js';
import { LAST_HIDDEN_STATE } from '../graph/hidden-state.js';

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

/**
 * Feeds computed for each forward call from its tokens (X-LoRA's scalings, from a scaling pass of
 * the base): `prepare` runs before the call, `after` learns the cache the call made.
 */
export interface PerCallFeeds {
  prepare(
    tokens: readonly number[],
    cache: KvCache,
  ): Promise<{ feeds: Record<string, ort.Tensor>; after(next: KvCache): void }>;
}

/** The active adapter as the session feeds it; a request keeps the one it started with. */
export interface Conditioning {
  slots: Record<string, ort.Tensor>;
  /** Virtual token ids (prompt tuning, P-tuning), run before the prompt. */
  virtualTokens: number[];
  /** Prefix tuning: the cache every request starts from. */
  prefix?: KvCache;
  perCall?: PerCallFeeds;
}

export class DecoderSession {
  private conditioning: Conditioning;
  /** The outputs every run fetches (not the hidden state, unless asked). */
  private readonly fetches: string[];
  /** Requests holding each conditioning (begin / end); a replaced one is freed when none is left. */
  private readonly users = new Map<Conditioning, number>();

  private constructor(
    private readonly backend: Backend,
    private readonly session: ort.InferenceSession,
    readonly config: LlamaConfig,
    private readonly pastNames: string[],
    /** The adapter slots of the graph, when it was patched with them. */
    readonly slots: SlotLayout | undefined,
    /** WebGPU: the device that holds the cache and the adapter tensors. */
    private readonly device: GPUDevice | undefined,
  ) {
    this.fetches = session.outputNames.filter((n) => n !== LAST_HIDDEN_STATE);
    this.conditioning = { slots: this.slotFeeds(undefined), virtualTokens: [] };
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
    // WebGPU: every present.* output stays on the GPU (the logits, not named here, come to the CPU).
    if (backend.name === 'webgpu') {
      sessionOptions.preferredOutputLocation = Object.fromEntries(
        Array.from({ length: config.num_hidden_layers }, (_, i) => [
          [`present.${i}.key`, 'gpu-buffer'],
          [`present.${i}.value`, 'gpu-buffer'],
        ]).flat(),
      ) as Record<string, ort.Tensor.DataLocation>;
    }
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
    const device = backend.name === 'webgpu' ? await webgpuDevice(backend) : undefined;
    return new DecoderSession(backend, session, config, pastNames, options.slots, device);
  }

  /**
   * Makes `feeds` the active adapter (undefined = the base) from the next forward on. Everything is
   * built before anything changes: on an error the previous adapter stays active.
   */
  setAdapter(feeds: AdapterFeeds | undefined, perCall?: PerCallFeeds): void {
    const replaced = this.conditioning;
    this.conditioning = { ...this.prepare(feeds), ...(perCall ? { perCall } : {}) };
    if (!this.users.has(replaced)) disposeAll(replaced.slots);
  }

  /**
   * The conditioning of `feeds` without making it active: for one request (`begin(conditioning)`),
   * whose end frees its GPU tensors.
   */
  prepare(feeds: AdapterFeeds | undefined): Conditioning {
    if (feeds && !this.slots) {
      throw new InvalidInputError('adapter', undefined, 'this model was loaded without adapter slots');
    }
    const slots = this.slotFeeds(feeds);
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
    return { slots, virtualTokens, prefix };
  }

  /** The slot tensors for `feeds`, on the GPU when the session runs there. */
  private slotFeeds(feeds: AdapterFeeds | undefined): Record<string, ort.Tensor> {
    if (!this.slots) return {};
    const cpu = slotTensors(this.backend.ort, this.slots, feeds, this.minRank);
    const device = this.device;
    if (!device) return cpu;
    // The float slot tensors go to the GPU; the router's int64 top k stays a CPU scalar.
    return Object.fromEntries(
      Object.entries(cpu).map(([name, t]) => [
        name,
        t.type === 'float32' ? uploadTensor(this.backend, device, t) : t,
      ]),
    );
  }

  /** WebGPU cannot bind the empty buffers of rank-0 slots: feed rank 1 of zeros there instead. */
  private get minRank(): number {
    return this.backend.name === 'webgpu' ? 1 : 0;
  }

  /** The onnxruntime API the session runs on (to make tensors for it). */
  get ort(): Backend['ort'] {
    return this.backend.ort;
  }

  /** The active adapter (to inspect; a request holds it with `begin`). */
  get active(): Conditioning {
    return this.conditioning;
  }

  /**
   * The active adapter (or a prepared one), held for one request until `end`, even if another is
   * activated meanwhile.
   */
  begin(conditioning: Conditioning = this.conditioning): Conditioning {
    const c = conditioning;
    this.users.set(c, (this.users.get(c) ?? 0) + 1);
    return c;
  }

  end(conditioning: Conditioning): void {
    const left = (this.users.get(conditioning) ?? 1) - 1;
    if (left > 0) {
      this.users.set(conditioning, left);
      return;
    }
    this.users.delete(conditioning);
    if (conditioning !== this.conditioning) disposeAll(conditioning.slots);
  }

  /**
   * Frees a cache's GPU tensors; CPU tensors (every cache on wasm, an adapter's prefix everywhere)
   * are left to the garbage collector.
   */
  dispose(cache: KvCache): void {
    disposeAll(Object.fromEntries(cache.tensors));
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
    options: { hidden?: boolean } = {},
  ): Promise<{ logits: Float32Array; cache: KvCache; hidden?: Float32Array }> {
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
    const call = conditioning.perCall && (await conditioning.perCall.prepare(tokens, cache));
    if (call) Object.assign(feeds, call.feeds);

    if (options.hidden && !this.session.outputNames.includes(LAST_HIDDEN_STATE)) {
      throw new InvalidInputError(
        'forward',
        'hidden',
        `the graph has no ${LAST_HIDDEN_STATE} output (a model loaded with slots: false)`,
      );
    }
    const fetches = options.hidden ? [...this.fetches, LAST_HIDDEN_STATE] : this.fetches;
    const out = await this.session.run(feeds, fetches);
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
    const result = { logits, cache: { length: total, tensors: next } };
    call?.after(result.cache);
    return options.hidden ? { ...result, hidden: out[LAST_HIDDEN_STATE].data as Float32Array } : result;
  }

  async release(): Promise<void> {
    disposeAll(this.conditioning.slots);
    await this.session.release();
  }
}

function disposeAll(tensors: Record<string, ort.Tensor>): void {
  for (const t of Object.values(tensors)) if (t.location === 'gpu-buffer') t.dispose();
}

async function webgpuDevice(backend: Backend): Promise<GPUDevice> {
  // onnxruntime-web/webgpu's env: the device its WebGPU provider runs on, known once a session exists.
  const web = backend.ort as unknown as { env: { webgpu: { device: Promise<GPUDevice> } } };
  return web.env.webgpu.device;
}

// GPUBufferUsage flags (WebGPU spec values; the constant object is not in TypeScript's DOM lib).
const GPU_COPY_SRC = 0x04;
const GPU_COPY_DST = 0x08;
const GPU_STORAGE = 0x80;

/** A float32 CPU tensor copied into a new GPU buffer, freed when the tensor is disposed. */
function uploadTensor(backend: Backend, device: GPUDevice, t: ort.Tensor): ort.Tensor {
  const data = t.data as Float32Array;
  // Rounded up to 16 bytes, as onnxruntime's own GPU buffers are: its vectorized shaders bind a
  // one-element tensor (router_temperature) as a vec4.
  const buffer = device.createBuffer({
    size: Math.ceil(Math.max(16, data.byteLength) / 16) * 16,
    usage: GPU_STORAGE | GPU_COPY_SRC | GPU_COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, data.byteLength);
  return backend.ort.Tensor.fromGpuBuffer(buffer, {
    dataType: 'float32',
    dims: t.dims,
    dispose: () => buffer.destroy(),
  });
}
