/**
 * The float64 oracle of UniPELT (Mao et al. 2022) as AdapterHub's `adapters` library runs it on a
 * Llama model (configuration/adapter_config.py UniPELTConfig: prefix tuning, a sequential bottleneck
 * adapter and LoRA, each with use_gating=True). Each part's gate is a sigmoid of a linear map of the
 * part's input, averaged over the tokens of the forward call (torch.mean(gate, dim=1)), so a call's
 * gate is one number per part and layer; with a KV cache, a prompt's call averages over the prompt
 * and each decode step over its one token, as the library's own generation does.
 *
 *   LoRA (q_proj, v_proj)  y = W x + g_lora · B A x             methods/lora.py: no alpha / r with gating
 *   prefix (every layer)   keys [P_k · g ; K], values [P_v · g ; V]   methods/prefix_tuning.py
 *                          P_k, P_v [heads, P, head_dim]: no RoPE, not in the cache, every head its own
 *                          (the prefix is prepended after repeat_kv), always visible to every query
 *   bottleneck (after the MLP)  z = h + mlp(...);  out = z + g_bn · (U relu(D z + b_d) + b_u)
 *                          methods/modeling.py Adapter with original_ln_before/after, residual_before_ln
 *   g = mean_t σ(w · x_t + b)   x: the part's input (q/v_proj's input; the attention's input, the
 *                          normed hidden state; z)
 *
 * Positions start at 0 for the first real token: the prefix is not in the cache.
 */
import { InvalidInputError } from '../errors.js';
import type { Checkpoint } from '../formats/checkpoint.js';
import { headDim } from '../formats/checkpoint.js';
import { rmsNorm, rope } from './llama.js';

/** A gate: σ(w · x + b) per token, averaged over the call. */
export interface Gate {
  w: ArrayLike<number>;
  b: number;
}

export interface UniPeltLayer {
  /** LoRA on q_proj and v_proj: a [r, in], b [out, r] (PEFT / torch layout), and its gate. */
  lora?: Partial<
    Record<'q_proj' | 'v_proj', { a: ArrayLike<number>; b: ArrayLike<number>; r: number; gate: Gate }>
  >;
  /** Prefix keys and values [heads, P, head_dim] row-major, and the gate (shared by keys and values). */
  prefix?: { keys: ArrayLike<number>; values: ArrayLike<number>; length: number; gate: Gate };
  /** The bottleneck: down [m, hidden], downBias [m], up [hidden, m], upBias [hidden] (torch layout). */
  bottleneck?: {
    down: ArrayLike<number>;
    downBias: ArrayLike<number>;
    up: ArrayLike<number>;
    upBias: ArrayLike<number>;
    size: number;
    gate: Gate;
  };
}

/** The forward pass with UniPELT parts per layer; `forward` appends tokens after the cached ones. */
export class UniPeltReferenceSession {
  private readonly keys: Float64Array[][];
  private readonly values: Float64Array[][];

  constructor(
    private readonly ckpt: Checkpoint,
    private readonly layers: readonly UniPeltLayer[],
  ) {
    const n = ckpt.config.num_hidden_layers;
    if (layers.length !== n)
      throw new InvalidInputError('unipelt', 'layers', `${layers.length} layers, expected ${n}`);
    this.keys = Array.from({ length: n }, () => []);
    this.values = Array.from({ length: n }, () => []);
  }

  get length(): number {
    return this.keys[0].length;
  }

  /** Logits of each new token; one call = one gate average per part and layer. */
  forward(tokens: readonly number[]): Float64Array[] {
    const c = this.ckpt.config;
    const d = c.hidden_size;
    const hd = headDim(c);
    const heads = c.num_attention_heads;
    const nRep = heads / c.num_key_value_heads;
    const start = this.length;
    const w = (name: string) => this.tensor(name);
    const table = w('model.embed_tokens.weight');
    const xs = tokens.map((t) => Float64Array.from(table.subarray(t * d, (t + 1) * d)));
    for (let l = 0; l < c.num_hidden_layers; l++) {
      const p = `model.layers.${l}`;
      const part = this.layers[l];
      const hs = xs.map((x) => rmsNorm(x, w(`${p}.input_layernorm.weight`), c.rms_norm_eps));
      const linear = (module: 'q_proj' | 'k_proj' | 'v_proj') => {
        const out = hs.map((h) => matVec(w(`${p}.self_attn.${module}.weight`), h));
        const lora = module === 'k_proj' ? undefined : part.lora?.[module];
        if (lora) {
          const g = gate(lora.gate, hs);
          out.forEach((y, t) => {
            const ax = matVec(lora.a, hs[t], lora.r);
            const bax = matVec(lora.b, ax, y.length);
            for (let o = 0; o < y.length; o++) y[o] += g * bax[o];
          });
        }
        return out;
      };
      const qs = linear('q_proj');
      const ks = linear('k_proj');
      const vs = linear('v_proj');
      qs.forEach((q, t) => {
        rope(q, heads, hd, start + t, c.rope_theta);
        rope(ks[t], c.num_key_value_heads, hd, start + t, c.rope_theta);
        this.keys[l].push(ks[t]);
        this.values[l].push(vs[t]);
      });
      const prefix = part.prefix;
      const gp = prefix ? gate(prefix.gate, hs) : 0;
      qs.forEach((q, i) => {
        const visible = start + i + 1;
        const att = new Float64Array(heads * hd);
        for (let h = 0; h < heads; h++) {
          const kvOff = Math.floor(h / nRep) * hd;
          const P = prefix?.length ?? 0;
          const scores = new Float64Array(P + visible);
          const value = (j: number, k: number) =>
            j < P
              ? gp * (prefix as NonNullable<typeof prefix>).values[(h * P + j) * hd + k]
              : this.values[l][j - P][kvOff + k];
          for (let j = 0; j < P + visible; j++) {
            let s = 0;
            for (let k = 0; k < hd; k++) {
              const key =
                j < P
                  ? gp * (prefix as NonNullable<typeof prefix>).keys[(h * P + j) * hd + k]
                  : this.keys[l][j - P][kvOff + k];
              s += q[h * hd + k] * key;
            }
            scores[j] = s / Math.sqrt(hd);
          }
          softmax(scores);
          for (let j = 0; j < scores.length; j++)
            for (let k = 0; k < hd; k++) att[h * hd + k] += scores[j] * value(j, k);
        }
        addInPlace(xs[i], matVec(w(`${p}.self_attn.o_proj.weight`), att));
      });
      xs.forEach((x) => {
        const h = rmsNorm(x, w(`${p}.post_attention_layernorm.weight`), c.rms_norm_eps);
        const gateProj = matVec(w(`${p}.mlp.gate_proj.weight`), h);
        const up = matVec(w(`${p}.mlp.up_proj.weight`), h);
        for (let j = 0; j < gateProj.length; j++)
          gateProj[j] = (gateProj[j] / (1 + Math.exp(-gateProj[j]))) * up[j];
        addInPlace(x, matVec(w(`${p}.mlp.down_proj.weight`), gateProj));
      });
      const bn = part.bottleneck;
      if (bn) {
        const g = gate(bn.gate, xs);
        xs.forEach((z) => {
          const down = matVec(bn.down, z, bn.size).map((v, j) => Math.max(0, v + bn.downBias[j]));
          const up = matVec(bn.up, down, d);
          for (let o = 0; o < d; o++) z[o] += g * (up[o] + bn.upBias[o]);
        });
      }
    }
    const head = c.tie_word_embeddings ? table : w('lm_head.weight');
    return xs.map((x) => matVec(head, rmsNorm(x, w('model.norm.weight'), c.rms_norm_eps)));
  }

  private tensor(name: string): Float32Array {
    const t = this.ckpt.tensors.get(name);
    if (!t) throw new InvalidInputError('checkpoint', name, 'missing');
    return t.data;
  }
}

/** mean over the call's tokens of σ(w · x_t + b). */
function gate({ w, b }: Gate, xs: readonly Float64Array[]): number {
  let sum = 0;
  for (const x of xs) {
    let s = b;
    for (let i = 0; i < x.length; i++) s += w[i] * x[i];
    sum += 1 / (1 + Math.exp(-s));
  }
  return sum / xs.length;
}

/** y = M x for M [rows, x.length] row-major (`rows` defaults to M.length / x.length). */
function matVec(m: ArrayLike<number>, x: ArrayLike<number>, rows = m.length / x.length): Float64Array {
  const n = x.length;
  const y = new Float64Array(rows);
  for (let o = 0; o < rows; o++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += m[o * n + i] * x[i];
    y[o] = s;
  }
  return y;
}

function softmax(x: Float64Array): void {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += x[i] = Math.exp(x[i] - max);
  for (let i = 0; i < x.length; i++) x[i] /= sum;
}

function addInPlace(x: Float64Array, y: Float64Array): void {
  for (let i = 0; i < x.length; i++) x[i] += y[i];
}
