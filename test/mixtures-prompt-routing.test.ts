/**
 * Per-request routing (src/mixtures/prompt-router.ts, Runtime adapters.setExamples / route,
 * generate's `adapters`): on stories260K with three LoRA experts, the engine's prompt embeddings,
 * the routing and the routed blend's logits against float64: the reference forward's last hidden
 * state (lm_head's input), the routing formula computed here, and the PEFT oracle's blend.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { argmax, ReferenceSession } from '../src/reference/llama.js';
import { PeftReferenceSession, referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { Runtime } from '../src/runtime.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const folder = checkpointToModelFolder(ckpt, {
  tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
});
const experts = [11, 12, 13].map((seed) =>
  loadAdapter(makeLoraAdapter({ seed, r: 4, scale: 0.1 }), `e${seed}`),
);
const EXAMPLES: Record<string, string[]> = {
  e11: ['The dog ran to the park.', 'Max the dog wagged his tail.', 'The puppy barked at the cat.'],
  e12: ['The sun was hot at the beach.', 'They played in the sand by the sea.', 'The waves were big.'],
  e13: ['The princess lived in a castle.', 'The king had a big crown.', 'The queen sang a song.'],
};

/** The float64 last hidden state of every token: what the reference feeds lm_head. */
class HiddenStates extends ReferenceSession {
  readonly rows: Float64Array[] = [];
  protected override linear(x: Float64Array, module: string): Float64Array {
    if (module === 'lm_head') this.rows.push(Float64Array.from(x));
    return super.linear(x, module);
  }
}

const unit = (v: Float64Array) => {
  const n = Math.hypot(...v);
  return v.map((x) => x / n);
};
const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};

/** The routing embedding in float64: surprisal-weighted last hidden states and input embeddings. */
function referenceEmbedding(tokens: number[]): Float64Array {
  const s = new HiddenStates(ckpt);
  const logits = s.forward(tokens);
  const table = ckpt.tensors.get('model.embed_tokens.weight')!.data;
  const d = ckpt.config.hidden_size;
  const h = new Float64Array(d);
  const e = new Float64Array(d);
  for (let t = 1; t < tokens.length; t++) {
    const l = logits[t - 1];
    const max = Math.max(...l);
    const w = Math.log(l.reduce((a, v) => a + Math.exp(v - max), 0)) - (l[tokens[t]] - max);
    for (let i = 0; i < d; i++) {
      h[i] += w * s.rows[t][i];
      e[i] += w * table[tokens[t] * d + i];
    }
  }
  return Float64Array.from([...unit(h), ...unit(e)]);
}

/** Σ⁻¹ by Gauss-Jordan elimination with partial pivoting (not the router's Cholesky). */
function inverse(a: Float64Array, d: number): Float64Array {
  const m = Float64Array.from(a);
  const inv = new Float64Array(d * d);
  for (let i = 0; i < d; i++) inv[i * d + i] = 1;
  for (let c = 0; c < d; c++) {
    let p = c;
    for (let r = c + 1; r < d; r++) if (Math.abs(m[r * d + c]) > Math.abs(m[p * d + c])) p = r;
    for (let k = 0; k < d; k++) {
      [m[c * d + k], m[p * d + k]] = [m[p * d + k], m[c * d + k]];
      [inv[c * d + k], inv[p * d + k]] = [inv[p * d + k], inv[c * d + k]];
    }
    const pivot = m[c * d + c];
    for (let k = 0; k < d; k++) {
      m[c * d + k] /= pivot;
      inv[c * d + k] /= pivot;
    }
    for (let r = 0; r < d; r++) {
      if (r === c) continue;
      const f = m[r * d + c];
      if (f === 0) continue;
      for (let k = 0; k < d; k++) {
        m[r * d + k] -= f * m[c * d + k];
        inv[r * d + k] -= f * inv[c * d + k];
      }
    }
  }
  return inv;
}

/**
 * The router's scores from its definition: with μ the mean of all examples and Σ the shrunk
 * within-adapter covariance, score(a) = cos_Σ⁻¹(x - μ, s_a), s_a = Σ_e (e - μ) / |e - μ|_Σ⁻¹, where
 * ⟨u, v⟩_Σ⁻¹ = uᵀ Σ⁻¹ v: the whitened cosine without forming the whitening.
 */
function referenceScores(
  examples: Map<string, Float64Array[]>,
  x: Float64Array,
): { id: string; score: number }[] {
  const all = [...examples.values()].flat();
  const d = x.length;
  const mu = all[0].map((_, i) => all.reduce((a, e) => a + e[i], 0) / all.length);
  const cov = new Float64Array(d * d);
  for (const group of examples.values()) {
    const m = group[0].map((_, i) => group.reduce((a, e) => a + e[i], 0) / group.length);
    for (const e of group)
      for (let i = 0; i < d; i++)
        for (let j = 0; j < d; j++) cov[i * d + j] += ((e[i] - m[i]) * (e[j] - m[j])) / all.length;
  }
  let trace = 0;
  for (let i = 0; i < d; i++) trace += cov[i * d + i];
  for (let i = 0; i < d; i++) cov[i * d + i] += (0.1 * trace) / d;
  const inv = inverse(cov, d);
  const apply = (v: Float64Array) =>
    Float64Array.from({ length: d }, (_, i) => dot(inv.subarray(i * d, (i + 1) * d), v));
  const norm = (v: Float64Array) => Math.sqrt(dot(v, apply(v)));
  const xc = x.map((v, i) => v - mu[i]);
  return [...examples].map(([id, group]) => {
    const s = new Float64Array(d);
    for (const e of group) {
      const ec = e.map((v, i) => v - mu[i]);
      const n = norm(ec);
      ec.forEach((v, i) => (s[i] += v / n));
    }
    return { id, score: dot(xc, apply(s)) / (norm(xc) * norm(s)) };
  });
}

describe('per-request routing by prompt embeddings', () => {
  let rt: Runtime;
  const encode = (text: string) => rt.model.tokenizer.encode(text, { bos: true });
  beforeAll(async () => {
    rt = await Runtime.create({ model: memorySource(folder, 'stories260K') });
    for (const e of experts) await rt.adapters.add(e.label, e);
    for (const [id, prompts] of Object.entries(EXAMPLES)) await rt.adapters.setExamples(id, prompts);
  });
  afterAll(() => rt.release());

  it('the engine’s base forward gives the reference’s logits and lm_head input within 1e-5', async () => {
    const tokens = encode('The dog played at the beach with the king.');
    const got = await rt.model.baseForward(tokens);
    const s = new HiddenStates(ckpt);
    const logits = s.forward(tokens);
    expect(got.hidden).toHaveLength(tokens.length);
    got.hidden.forEach((row, i) => expect(maxAbsDiff(row, s.rows[i])).toBeLessThan(1e-5));
    got.logits.forEach((row, i) => expect(maxAbsDiff(row, logits[i])).toBeLessThan(1e-4));
  });

  it('routes as the formula does on float64 embeddings, and the routed blend equals the oracle within 1e-4', async () => {
    const examples = new Map(
      Object.entries(EXAMPLES).map(([id, prompts]) => [
        id,
        prompts.map((p) => referenceEmbedding(encode(p))),
      ]),
    );
    for (const prompt of ['A little dog found a bone.', 'She built a sand castle by the sea.']) {
      const scores = referenceScores(examples, referenceEmbedding(encode(prompt))).sort(
        (a, b) => b.score - a.score,
      );
      const top = scores.slice(0, 2);
      const w = top.map((t) => Math.exp((t.score - top[0].score) / 0.1));
      const want = top.map((t, i) => ({ id: t.id, weight: w[i] / (w[0] + w[1]), score: t.score }));

      const got = await rt.adapters.route(prompt, { topK: 2, temperature: 0.1 });
      expect(got.map((c) => c.id)).toEqual(want.map((c) => c.id));
      got.forEach((c, i) => {
        expect(Math.abs(c.weight - want[i].weight)).toBeLessThan(1e-4);
        expect(Math.abs(c.score - want[i].score)).toBeLessThan(1e-4);
      });

      // The routed blend's logits, then a greedy completion with adapters: 'route' for this request.
      const adapters = want.map(({ id, weight }) => ({
        adapter: experts.find((e) => e.label === id)!,
        weight,
      }));
      const tokens = encode(prompt);
      await rt.adapters.activate(got);
      const logits = await rt.logits(tokens);
      const ref = referenceLogitsWithAdapters(ckpt, adapters, tokens);
      logits.forEach((row, i) => expect(maxAbsDiff(row, ref[i])).toBeLessThan(1e-4));
      rt.adapters.deactivate();

      const out = await rt.complete(prompt, {
        adapters: 'route',
        route: { topK: 2, temperature: 0.1 },
        maxTokens: 10,
        temperature: 0,
        eosTokenIds: [],
      });
      const session = new PeftReferenceSession(ckpt, adapters);
      let last = session.forward(tokens).at(-1)!;
      const greedy: number[] = [];
      for (let i = 0; i < 10; i++) {
        greedy.push(argmax(last));
        last = session.step(greedy[i]);
      }
      expect(out.tokens).toEqual(greedy);
      expect(rt.adapters.active()).toEqual([]); // the request's blend was its own
    }
  });

  it('refuses routing with no examples, a bad top k, and examples for an unknown adapter', async () => {
    const empty = await Runtime.create({ model: memorySource(folder, 'stories260K') });
    try {
      await expect(empty.adapters.route('The dog')).rejects.toThrow(/no adapter has example prompts/);
    } finally {
      await empty.release();
    }
    await expect(rt.adapters.route('The dog', { topK: 4 })).rejects.toThrow(InvalidInputError);
    await expect(rt.adapters.setExamples('nope', ['x'])).rejects.toThrow(/nope/);
  });
});
