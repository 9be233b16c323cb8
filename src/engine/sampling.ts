/**
 * Choosing the next token from logits, with Hugging Face `generate` semantics and order:
 * repetition penalty, then temperature, top-k, top-p. Temperature 0 is greedy (argmax, the first
 * maximum on ties, as llama2.c's run.c does).
 */

export interface SamplingOptions {
  /** 0 (the default) is greedy decoding. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1 = off). */
  topP?: number;
  /** > 1 discourages tokens already in the context (CTRL / HF `repetition_penalty`; 1 = off). */
  repetitionPenalty?: number;
  /** Seed for the random number generator: the same seed gives the same text. */
  seed?: number;
}

/** A small, fast, seedable PRNG (mulberry32): uniform floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** HF's RepetitionPenaltyLogitsProcessor: divide positive logits, multiply negative ones. */
export function applyRepetitionPenalty(
  logits: Float32Array,
  context: Iterable<number>,
  penalty: number,
): void {
  if (penalty === 1) return;
  for (const id of new Set(context)) {
    const l = logits[id];
    logits[id] = l > 0 ? l / penalty : l * penalty;
  }
}

export function validateSampling(o: SamplingOptions): void {
  const bad = (field: string, why: string) => {
    throw new RangeError(`sampling option ${field}: ${why}`);
  };
  if (o.temperature !== undefined && !(o.temperature >= 0)) bad('temperature', 'must be >= 0');
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0))
    bad('topK', 'must be an integer >= 0');
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) bad('topP', 'must be in (0, 1]');
  if (o.repetitionPenalty !== undefined && !(o.repetitionPenalty > 0))
    bad('repetitionPenalty', 'must be > 0');
}

/**
 * Picks the next token. `logits` is modified in place (penalty and temperature). `context` is the
 * prompt and the tokens generated so far, for the repetition penalty.
 */
export function sampleToken(
  logits: Float32Array,
  context: readonly number[],
  options: SamplingOptions,
  random: () => number,
): number {
  applyRepetitionPenalty(logits, context, options.repetitionPenalty ?? 1);
  const temperature = options.temperature ?? 0;
  if (temperature === 0) return argmax(logits);

  // Candidates sorted by logit, descending; top-k truncates the sorted list.
  let order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const topK = options.topK ?? 0;
  if (topK > 0 && topK < order.length) order = order.slice(0, topK);

  // Softmax over the candidates at this temperature.
  const max = logits[order[0]] / temperature;
  const probs = order.map((id) => Math.exp(logits[id] / temperature - max));
  const total = probs.reduce((s, p) => s + p, 0);
  for (let i = 0; i < probs.length; i++) probs[i] /= total;

  // Top-p: keep the most likely tokens until their mass reaches p (always at least one).
  const topP = options.topP ?? 1;
  let keep = probs.length;
  if (topP < 1) {
    let mass = 0;
    for (keep = 0; keep < probs.length && mass < topP; keep++) mass += probs[keep];
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += probs[i];

  let r = random() * kept;
  for (let i = 0; i < keep; i++) {
    r -= probs[i];
    if (r < 0) return order[i];
  }
  return order[keep - 1];
}
