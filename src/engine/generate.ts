/**
 * The generation loop: prefill the prompt, then one token at a time through the KV cache, streaming
 * text as it becomes final. Stops on EOS, a stop string, max tokens or the end of the context;
 * an AbortSignal cancels between tokens.
 */
import type { Conditioning, DecoderSession, KvCache } from './decoder-session.js';
import { sampleToken, seededRandom, validateSampling, type SamplingOptions } from './sampling.js';
import { TextStream } from './text-stream.js';
import type { Tokenizer } from '../formats/tokenizer.js';

export interface GenerateOptions extends SamplingOptions {
  /** New tokens to generate at most (default 256). */
  maxTokens?: number;
  /** Stop when the text contains one of these; the stop string is not returned. */
  stop?: string[];
  /** Token ids that end generation (default: the tokenizer's EOS). They are not returned as text. */
  eosTokenIds?: number[];
  signal?: AbortSignal;
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'context';

export interface GenerationChunk {
  /** The token just generated. */
  token: number;
  /** Text that became final with this token (may be empty, e.g. inside a multi-byte character). */
  text: string;
  /** Set on the last chunk. */
  finishReason?: FinishReason;
}

export async function* generateTokens(
  session: DecoderSession,
  tokenizer: Tokenizer,
  prompt: readonly number[],
  options: GenerateOptions = {},
  /** The adapter of this request (default: the active one). */
  conditioning?: Conditioning,
): AsyncGenerator<GenerationChunk, FinishReason> {
  validateSampling(options);
  const maxTokens = options.maxTokens ?? 256;
  const eos = new Set(options.eosTokenIds ?? (tokenizer.eosId === undefined ? [] : [tokenizer.eosId]));
  const random = seededRandom(options.seed ?? Date.now());
  const context = session.config.max_position_embeddings;
  const stream = new TextStream(tokenizer, prompt, options.stop);
  const tokens = [...prompt];
  options.signal?.throwIfAborted();

  // The adapter active now serves the whole request, even if another is activated meanwhile.
  const adapter = session.begin(conditioning);
  let cache: KvCache = session.startCache(adapter);
  try {
    let input: readonly number[] = [...adapter.virtualTokens, ...prompt];
    for (let generated = 0; generated < maxTokens; generated++) {
      const step = await session.forward(input, cache, adapter);
      if (cache !== step.cache) session.dispose(cache);
      cache = step.cache;
      options.signal?.throwIfAborted();
      const vocab = session.config.vocab_size;
      const last = step.logits.slice((input.length - 1) * vocab, input.length * vocab);
      const token = sampleToken(last, tokens, options, random);
      tokens.push(token);

      if (eos.has(token)) {
        const rest = stream.flush();
        yield { token, text: rest, finishReason: 'eos' };
        return 'eos';
      }
      const text = stream.push(token);
      if (stream.stopped !== undefined) {
        yield { token, text, finishReason: 'stop' };
        return 'stop';
      }
      const atLimit = generated + 1 === maxTokens;
      const atContext = cache.length + 1 > context;
      if (atLimit || atContext) {
        const reason = atLimit ? 'length' : 'context';
        yield { token, text: text + stream.flush(), finishReason: reason };
        return reason;
      }
      yield { token, text };
      input = [token];
    }
  } finally {
    // Frees the GPU cache (WebGPU) however the request ends: done, aborted, or the consumer stopped.
    session.dispose(cache);
    session.end(adapter);
  }
  return 'length';
}
