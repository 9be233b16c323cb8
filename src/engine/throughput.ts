/**
 * Prefill and decode throughput of a decoder session, measured the way a user meets it: prefill a
 * prompt from an empty cache, then decode one token at a time (greedy) through the KV cache.
 */
import type { DecoderSession } from './decoder-session.js';
import { argmax, seededRandom } from './sampling.js';

export interface ThroughputOptions {
  promptTokens?: number;
  decodeTokens?: number;
  /** Untimed runs first (session warm-up). */
  warmup?: number;
  /** Timed repetitions; the median is reported. */
  repeats?: number;
}

export interface Throughput {
  promptTokens: number;
  decodeTokens: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
}

export async function measureThroughput(
  session: DecoderSession,
  options: ThroughputOptions = {},
): Promise<Throughput> {
  const promptTokens = options.promptTokens ?? 128;
  const decodeTokens = options.decodeTokens ?? 64;
  const random = seededRandom(1);
  const vocab = session.config.vocab_size;
  const prompt = Array.from({ length: promptTokens }, () => Math.floor(random() * vocab));
  const prefill: number[] = [];
  const decode: number[] = [];
  const repeats = options.repeats ?? 3;
  for (let r = -(options.warmup ?? 1); r < repeats; r++) {
    let t0 = performance.now();
    let { logits, cache } = await session.forward(prompt, session.emptyCache());
    const prefillMs = performance.now() - t0;
    let token = argmax(logits.subarray((promptTokens - 1) * vocab));
    t0 = performance.now();
    for (let i = 0; i < decodeTokens; i++) {
      ({ logits, cache } = await session.forward([token], cache));
      token = argmax(logits);
    }
    const decodeMs = performance.now() - t0;
    if (r >= 0) {
      prefill.push((promptTokens / prefillMs) * 1000);
      decode.push((decodeTokens / decodeMs) * 1000);
    }
  }
  return {
    promptTokens,
    decodeTokens,
    prefillTokensPerSecond: median(prefill),
    decodeTokensPerSecond: median(decode),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
