/**
 * The float64 reference forward pass of a Llama-family model: the oracle the tests compare every
 * ONNX graph against. Written for clarity, like llama2.c's run.c, with Hugging Face semantics
 * (`LlamaForCausalLM`): RMSNorm, rotate-half RoPE at the given position ids, grouped-query causal
 * attention, SwiGLU MLP, tied or untied lm_head. It shares nothing with the ONNX code.
 *
 * Every linear layer goes through `linear(x, module)`, named like the PEFT target modules
 * (`model.layers.0.self_attn.q_proj`, ..., `lm_head`), and every token's input embedding through
 * `embed(token)`, so adapter branches go in one place (see ./peft.ts). `forwardEmbeddings` feeds
 * vectors instead of token ids (virtual tokens) and `prefill` puts given keys and values at the
 * start of the cache (a prefix).
 */
import { InvalidInputError, ModelFormatError } from '../errors.js';
import type { Checkpoint, LlamaConfig } from '../formats/checkpoint.js';
import { expectedShapes, headDim } from '../formats/checkpoint.js';

export interface ReferenceOptions {
  /** RoPE position id of every token; defaults to 0..n-1. */
  positions?: readonly number[];
}

/** Logits for every position, each token attending causally to the tokens before it. */
export function referenceLogits(
  ckpt: Checkpoint,
  tokens: readonly number[],
  opts: ReferenceOptions = {},
): Float64Array[] {
  return new ReferenceSession(ckpt).forward(tokens, opts.positions);
}

/** Index of the largest logit (the first one on ties): greedy sampling. */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** The forward pass with a KV cache: feed tokens a block or a step at a time. */
export class ReferenceSession {
  readonly config: LlamaConfig;
  /** keys[layer][t], values[layer][t]: the cached K and V (after RoPE) of every token so far. */
  private readonly keys: Float64Array[][];
  private readonly values: Float64Array[][];

  constructor(readonly ckpt: Checkpoint) {
    this.config = checkConfig(ckpt);
    this.keys = Array.from({ length: this.config.num_hidden_layers }, () => []);
    this.values = Array.from({ length: this.config.num_hidden_layers }, () => []);
  }

  /** Number of tokens in the KV cache. */
  get length(): number {
    return this.keys[0]?.length ?? 0;
  }

  /** Appends one token at `position` (default: the number of tokens so far); returns its logits. */
  step(token: number, position: number = this.length): Float64Array {
    return this.forward([token], [position])[0];
  }

  /** Appends tokens after the cached ones and returns the logits of each. */
  forward(tokens: readonly number[], positions?: readonly number[]): Float64Array[] {
    const pos = positions ?? tokens.map((_, i) => this.length + i);
    checkTokens(this.config, tokens);
    checkPositions(tokens.length, pos);
    return this.forwardEmbeddings(
      tokens.map((t) => this.embed(t)),
      pos,
    );
  }

  /**
   * Appends inputs given as embeddings (`hidden_size` numbers each, the vectors `embed_tokens` would
   * give) after the cached ones and returns the logits of each: Hugging Face's `inputs_embeds`.
   */
  forwardEmbeddings(embeddings: readonly ArrayLike<number>[], positions?: readonly number[]): Float64Array[] {
    const c = this.config;
    const hd = headDim(c);
    const nRep = c.num_attention_heads / c.num_key_value_heads;
    const start = this.length;
    const pos = positions ?? embeddings.map((_, i) => start + i);
    embeddings.forEach((e, i) => {
      if (e.length !== c.hidden_size)
        throw new InvalidInputError(
          'embeddings',
          `embeddings[${i}]`,
          `has ${e.length} numbers, expected hidden_size ${c.hidden_size}`,
        );
    });
    checkPositions(embeddings.length, pos);

    // The residual stream of every new token, starting from its embedding.
    const xs = embeddings.map((e) => Float64Array.from(e));

    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `model.layers.${l}`;

      // Attention: project every new token to q, k, v; rotate q and k; cache k and v.
      const qs = xs.map((x, i) => {
        const h = rmsNorm(x, this.weight(`${p}.input_layernorm`), c.rms_norm_eps);
        const q = this.linear(h, `${p}.self_attn.q_proj`);
        const k = this.linear(h, `${p}.self_attn.k_proj`);
        const v = this.linear(h, `${p}.self_attn.v_proj`);
        rope(q, c.num_attention_heads, hd, pos[i], c.rope_theta);
        rope(k, c.num_key_value_heads, hd, pos[i], c.rope_theta);
        this.keys[l].push(k);
        this.values[l].push(v);
        return q;
      });
      qs.forEach((q, i) => {
        const visible = start + i + 1; // causal: the cache up to and including this token
        const att = new Float64Array(c.num_attention_heads * hd);
        for (let h = 0; h < c.num_attention_heads; h++) {
          const kvOff = Math.floor(h / nRep) * hd; // grouped-query attention
          const scores = new Float64Array(visible);
          for (let t = 0; t < visible; t++) {
            let s = 0;
            for (let j = 0; j < hd; j++) s += q[h * hd + j] * this.keys[l][t][kvOff + j];
            scores[t] = s / Math.sqrt(hd);
          }
          softmax(scores);
          for (let t = 0; t < visible; t++) {
            for (let j = 0; j < hd; j++) att[h * hd + j] += scores[t] * this.values[l][t][kvOff + j];
          }
        }
        addInPlace(xs[i], this.linear(att, `${p}.self_attn.o_proj`));
      });

      // MLP: down(silu(gate(h)) * up(h)).
      xs.forEach((x) => {
        const h = rmsNorm(x, this.weight(`${p}.post_attention_layernorm`), c.rms_norm_eps);
        const gate = this.linear(h, `${p}.mlp.gate_proj`);
        const up = this.linear(h, `${p}.mlp.up_proj`);
        for (let j = 0; j < gate.length; j++) gate[j] = (gate[j] / (1 + Math.exp(-gate[j]))) * up[j];
        addInPlace(x, this.linear(gate, `${p}.mlp.down_proj`));
      });
    }

    return xs.map((x) => this.linear(rmsNorm(x, this.weight('model.norm'), c.rms_norm_eps), 'lm_head'));
  }

  /**
   * Appends keys and values to the cache as they are, without running the model: `keys[layer][t]`
   * and `values[layer][t]` hold `num_key_value_heads * head_dim` numbers (keys already rotated, if
   * at all). This is how a prefilled `past_key_values` (PEFT's prefix tuning) enters the cache.
   */
  prefill(
    keys: readonly (readonly ArrayLike<number>[])[],
    values: readonly (readonly ArrayLike<number>[])[],
  ): void {
    const c = this.config;
    const width = c.num_key_value_heads * headDim(c);
    const n = keys[0]?.length ?? 0;
    for (const [name, kv] of [
      ['keys', keys],
      ['values', values],
    ] as const) {
      if (kv.length !== c.num_hidden_layers)
        throw new InvalidInputError(name, undefined, `${kv.length} layers, expected ${c.num_hidden_layers}`);
      kv.forEach((rows, l) => {
        if (rows.length !== n)
          throw new InvalidInputError(name, `${name}[${l}]`, `${rows.length} entries, expected ${n}`);
        rows.forEach((row, t) => {
          if (row.length !== width)
            throw new InvalidInputError(
              name,
              `${name}[${l}][${t}]`,
              `has ${row.length} numbers, expected ${width}`,
            );
        });
      });
    }
    for (let l = 0; l < c.num_hidden_layers; l++) {
      for (let t = 0; t < n; t++) {
        this.keys[l].push(Float64Array.from(keys[l][t]));
        this.values[l].push(Float64Array.from(values[l][t]));
      }
    }
  }

  /** The cached keys (after RoPE) and values of one layer, oldest first. */
  cached(layer: number): { keys: readonly Float64Array[]; values: readonly Float64Array[] } {
    return { keys: this.keys[layer], values: this.values[layer] };
  }

  /** The input embedding of a token: its row of `model.embed_tokens`. */
  protected embed(token: number): Float64Array {
    const d = this.config.hidden_size;
    return Float64Array.from(this.weight('model.embed_tokens').subarray(token * d, (token + 1) * d));
  }

  /** y = W x for the linear module `module` (W is [out, in], Hugging Face layout). */
  protected linear(x: Float64Array, module: string): Float64Array {
    const w = this.weight(module);
    const n = x.length;
    const y = new Float64Array(w.length / n);
    for (let o = 0; o < y.length; o++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += w[o * n + i] * x[i];
      y[o] = s;
    }
    return y;
  }

  /** The weight of a module ([out, in] for a linear one); a tied lm_head is the embedding. */
  protected weight(module: string): Float32Array {
    const name =
      module === 'lm_head' && this.config.tie_word_embeddings
        ? 'model.embed_tokens.weight'
        : `${module}.weight`;
    const t = this.ckpt.tensors.get(name);
    if (t === undefined) throw new ModelFormatError('checkpoint', name, 'missing');
    return t.data;
  }
}

/** RMSNorm: x / sqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(x: Float64Array, weight: ArrayLike<number>, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * scale * weight[i]);
}

/**
 * Rotate-half RoPE in place on `heads` heads of size `hd`: the pair (j, j + hd/2) is rotated by the
 * angle position * theta^(-2j/hd).
 */
export function rope(x: Float64Array, heads: number, hd: number, position: number, theta: number): void {
  const half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      const angle = position * Math.pow(theta, (-2 * j) / hd);
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      const a = x[h * hd + j];
      const b = x[h * hd + j + half];
      x[h * hd + j] = a * cos - b * sin;
      x[h * hd + j + half] = b * cos + a * sin;
    }
  }
}

function softmax(x: Float64Array): void {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < x.length; i++) x[i] /= sum;
}

function addInPlace(x: Float64Array, y: Float64Array): void {
  for (let i = 0; i < x.length; i++) x[i] += y[i];
}

/** The config fields this forward pass implements, and every tensor at its expected shape. */
function checkConfig(ckpt: Checkpoint): LlamaConfig {
  const c = ckpt.config;
  if (c.hidden_act !== 'silu')
    throw new ModelFormatError('config.json', 'hidden_act', `unsupported ${JSON.stringify(c.hidden_act)}`);
  if (c.rope_scaling !== undefined && c.rope_scaling !== null)
    throw new ModelFormatError('config.json', 'rope_scaling', 'not supported');
  if (c.attention_bias === true) throw new ModelFormatError('config.json', 'attention_bias', 'not supported');
  if (c.mlp_bias === true) throw new ModelFormatError('config.json', 'mlp_bias', 'not supported');
  if (c.num_attention_heads % c.num_key_value_heads !== 0) {
    throw new ModelFormatError(
      'config.json',
      'num_key_value_heads',
      `${c.num_key_value_heads} does not divide num_attention_heads`,
    );
  }
  for (const [name, shape] of expectedShapes(c)) {
    const t = ckpt.tensors.get(name);
    const size = shape.reduce((a, b) => a * b, 1);
    if (t === undefined) throw new ModelFormatError('checkpoint', name, 'missing');
    if (t.data.length !== size)
      throw new ModelFormatError(
        'checkpoint',
        name,
        `expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`,
      );
  }
  return c;
}

function checkTokens(c: LlamaConfig, tokens: readonly number[]): void {
  tokens.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t >= c.vocab_size) {
      throw new InvalidInputError(
        'tokens',
        `tokens[${i}]`,
        `token id ${t} is outside the vocabulary [0, ${c.vocab_size})`,
      );
    }
  });
}

function checkPositions(count: number, positions: readonly number[]): void {
  if (positions.length !== count) {
    throw new InvalidInputError('positions', undefined, `${positions.length} positions for ${count} tokens`);
  }
  positions.forEach((p, i) => {
    if (!Number.isInteger(p) || p < 0)
      throw new InvalidInputError('positions', `positions[${i}]`, `must be a non-negative integer, got ${p}`);
  });
}
