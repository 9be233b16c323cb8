/**
 * Teacher-forced decode steps, each timed on its own: the engine's decode step (DecoderSession.forward
 * with one token, feeds included) after a prompt's cache. Shared by the Node workers and the pages.
 */
import type { DecoderSession, KvCache } from '../../src/engine/decoder-session.js';

/** The ms of each step of `next` after `prompt` (the prompt's prefill is not timed). */
export async function timeDecode(
  session: DecoderSession,
  prompt: number[],
  next: number[],
): Promise<number[]> {
  let cache: KvCache = (await session.forward(prompt, session.startCache())).cache;
  const ms: number[] = [];
  for (const token of next) {
    const t = performance.now();
    cache = (await session.forward([token], cache)).cache;
    ms.push(performance.now() - t);
  }
  return ms;
}
