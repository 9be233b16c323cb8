/**
 * Validate a Hugging Face config.json for the decoder this project builds: a Llama-family causal LM
 * with RMSNorm, rotate-half RoPE (no scaling), SwiGLU (silu) and no biases. Missing optional fields
 * take transformers' LlamaConfig / MistralConfig defaults; the sizes are required.
 */
import { ModelFormatError } from '../errors.js';
import type { LlamaConfig } from './checkpoint.js';

export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral'] as const;

/** transformers' defaults for the optional fields, per model_type. */
const DEFAULTS = {
  llama: { max_position_embeddings: 2048, rms_norm_eps: 1e-6, rope_theta: 10000, sliding_window: null },
  mistral: {
    max_position_embeddings: 4096 * 32,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    sliding_window: 4096,
  },
} as const;

const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

export function parseLlamaConfig(json: unknown, file = 'config.json'): LlamaConfig {
  const fail = (field: string | undefined, message: string): never => {
    throw new ModelFormatError(file, field, message);
  };
  if (!isRecord(json)) return fail(undefined, 'must be a JSON object');
  const c = json;
  const present = (k: string) => c[k] !== undefined && c[k] !== null;

  const modelType = c.model_type;
  if (modelType !== 'llama' && modelType !== 'mistral') {
    return fail(
      'model_type',
      `unsupported architecture ${JSON.stringify(modelType ?? null)}; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
    );
  }
  const defaults = DEFAULTS[modelType];

  const size = (k: string, fallback?: number): number => {
    const v = present(k) ? c[k] : fallback;
    if (v === undefined) return fail(k, 'missing');
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      return fail(k, `must be a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const positive = (k: string, fallback: number): number => {
    const v = present(k) ? c[k] : fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      return fail(k, `must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const flag = (k: string, fallback: boolean): boolean => {
    const v = present(k) ? c[k] : fallback;
    if (typeof v !== 'boolean') return fail(k, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };

  const hidden = size('hidden_size');
  const intermediate = size('intermediate_size');
  const layers = size('num_hidden_layers');
  const heads = size('num_attention_heads');
  const kvHeads = size('num_key_value_heads', heads);
  const vocab = size('vocab_size');
  const maxPos = size('max_position_embeddings', defaults.max_position_embeddings);
  const eps = positive('rms_norm_eps', defaults.rms_norm_eps);
  const tie = flag('tie_word_embeddings', false);

  let headDim: number | undefined;
  if (present('head_dim')) headDim = size('head_dim');
  else if (hidden % heads !== 0) {
    fail(
      'hidden_size',
      `${hidden} is not divisible by num_attention_heads ${heads} (and head_dim is not set)`,
    );
  }
  if (heads % kvHeads !== 0) {
    fail(
      'num_key_value_heads',
      `num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`,
    );
  }

  const act = present('hidden_act') ? c.hidden_act : 'silu';
  if (act !== 'silu') fail('hidden_act', `unsupported activation ${JSON.stringify(act)}; supported: silu`);
  if (flag('attention_bias', false)) fail('attention_bias', 'attention biases are not supported');
  if (flag('mlp_bias', false)) fail('mlp_bias', 'MLP biases are not supported');

  // RoPE: plain rotate-half only. transformers v5 moves rope_theta into rope_parameters.
  let ropeTheta = positive('rope_theta', defaults.rope_theta);
  for (const k of ['rope_scaling', 'rope_parameters']) {
    if (!present(k)) continue;
    const r = c[k];
    if (!isRecord(r)) return fail(k, `must be an object or null, got ${JSON.stringify(r)}`);
    const type = r.rope_type ?? r.type;
    if (type !== 'default')
      fail(k, `unsupported RoPE scaling ${JSON.stringify(r)}; only plain RoPE is supported`);
    if (r.rope_theta !== undefined) {
      if (typeof r.rope_theta !== 'number' || !Number.isFinite(r.rope_theta) || r.rope_theta <= 0) {
        fail(`${k}.rope_theta`, `must be a positive number, got ${JSON.stringify(r.rope_theta)}`);
      }
      ropeTheta = r.rope_theta as number;
    }
  }

  if (modelType === 'mistral') {
    const window = 'sliding_window' in c ? c.sliding_window : defaults.sliding_window;
    if (window !== null && !(typeof window === 'number' && window >= maxPos)) {
      fail(
        'sliding_window',
        `sliding-window attention (${JSON.stringify(window)}) is not supported; set it to null`,
      );
    }
  }

  const config: LlamaConfig = {
    model_type: modelType,
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: vocab,
    max_position_embeddings: maxPos,
    rms_norm_eps: eps,
    rope_theta: ropeTheta,
    tie_word_embeddings: tie,
    hidden_act: 'silu',
  };
  if (headDim !== undefined) config.head_dim = headDim;
  if (Array.isArray(c.architectures) && c.architectures.every((a) => typeof a === 'string')) {
    config.architectures = c.architectures as string[];
  }
  const tokenId = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (tokenId(c.bos_token_id)) config.bos_token_id = c.bos_token_id as number;
  if (tokenId(c.eos_token_id) || (Array.isArray(c.eos_token_id) && c.eos_token_id.every(tokenId))) {
    config.eos_token_id = c.eos_token_id as number | number[];
  }
  const dtype = c.torch_dtype ?? c.dtype;
  if (typeof dtype === 'string') config.torch_dtype = dtype;
  return config;
}
