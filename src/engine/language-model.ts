/**
 * A base model ready to generate: its config, tokenizer and decoder session.
 */
import type { Conditioning, DecoderSession } from './decoder-session.js';
import type { AdapterFeeds } from '../methods/feeds.js';
import { generateTokens, type FinishReason, type GenerateOptions, type GenerationChunk } from './generate.js';
import type { LlamaConfig } from '../formats/checkpoint.js';
import type { Tokenizer } from '../formats/tokenizer.js';
import type { BackendName } from './backend.js';
import { InvalidInputError } from '../errors.js';
import type { QuantFormat } from '../quant/index.js';

/** How a quantized base runs: its linears' formats, as quantized ops or dequantized at load. */
export interface Quantization {
  formats: QuantFormat[];
  kernels: 'native' | 'dequantize';
}

export interface Completion {
  text: string;
  tokens: number[];
  finishReason: FinishReason;
}

export class LanguageModel {
  constructor(
    readonly config: LlamaConfig,
    readonly tokenizer: Tokenizer,
    readonly session: DecoderSession,
    readonly backend: BackendName,
    /** Defaults from generation_config.json. */
    readonly generationDefaults: GenerateOptions = {},
    /** Set for a quantized base. */
    readonly quantization?: Quantization,
  ) {}

  /** Text to token ids, with BOS as the model expects; token arrays pass through unchanged. */
  encode(prompt: string | readonly number[], active: Conditioning = this.session.active): number[] {
    const tokens = typeof prompt === 'string' ? this.tokenizer.encode(prompt, { bos: true }) : [...prompt];
    const adapterTokens = active.virtualTokens.length + (active.prefix?.length ?? 0);
    if (adapterTokens + tokens.length >= this.config.max_position_embeddings) {
      const adapter = adapterTokens ? ` (and ${adapterTokens} virtual tokens of the active adapter)` : '';
      throw new InvalidInputError(
        'prompt',
        undefined,
        `${tokens.length} tokens${adapter} leave no room to generate in a context of ${this.config.max_position_embeddings}`,
      );
    }
    return tokens;
  }

  /**
   * Streams generated text chunk by chunk, with the active adapter or, given `adapter`, with those
   * feeds for this request only (the active adapter stays as it is).
   */
  generate(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
    adapter?: AdapterFeeds,
  ): AsyncGenerator<GenerationChunk, FinishReason> {
    const conditioning = adapter && this.session.prepare(adapter);
    return generateTokens(
      this.session,
      this.tokenizer,
      this.encode(prompt, conditioning),
      { ...this.generationDefaults, ...options },
      conditioning,
    );
  }

  /** Generates to the end and returns the new text and tokens. */
  async complete(
    prompt: string | readonly number[],
    options: GenerateOptions = {},
    adapter?: AdapterFeeds,
  ): Promise<Completion> {
    let text = '';
    const tokens: number[] = [];
    let finishReason: FinishReason = 'length';
    for await (const chunk of this.generate(prompt, options, adapter)) {
      text += chunk.text;
      tokens.push(chunk.token);
      if (chunk.finishReason) finishReason = chunk.finishReason;
    }
    return { text, tokens, finishReason };
  }

  /**
   * Logits of every position of `tokens` for one forward pass from the start of a request, with the
   * active adapter (its virtual tokens, if any, run first and get no rows here).
   */
  async logits(tokens: readonly number[]): Promise<Float32Array[]> {
    const adapter = this.session.begin();
    const virtual = adapter.virtualTokens;
    let logits: Float32Array;
    try {
      const step = await this.session.forward(
        [...virtual, ...tokens],
        this.session.startCache(adapter),
        adapter,
      );
      this.session.dispose(step.cache);
      logits = step.logits;
    } finally {
      this.session.end(adapter);
    }
    const vocab = this.config.vocab_size;
    const skip = virtual.length;
    return tokens.map((_, i) => logits.slice((skip + i) * vocab, (skip + i + 1) * vocab));
  }

  /**
   * One forward of `tokens` from the start of a request with no adapter: the base model's logits and
   * its last hidden state (after the final norm) at every position, one row of each per token.
   */
  async baseForward(tokens: readonly number[]): Promise<{ logits: Float32Array[]; hidden: Float32Array[] }> {
    const base = this.session.begin(this.session.prepare(undefined));
    try {
      const step = await this.session.forward(tokens, this.session.startCache(base), base, { hidden: true });
      this.session.dispose(step.cache);
      const rows = (data: Float32Array, width: number) =>
        tokens.map((_, i) => data.slice(i * width, (i + 1) * width));
      return {
        logits: rows(step.logits, this.config.vocab_size),
        hidden: rows(step.hidden as Float32Array, this.config.hidden_size),
      };
    } finally {
      this.session.end(base);
    }
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
