/**
 * Seeded synthetic Llama checkpoints for benchmarks and tests: real model shapes, random weights.
 * Linear and embedding weights ~ N(0, 0.02), norm weights ~ 1 + N(0, 0.02), so logits are finite
 * and softmax is far from one-hot. Each tensor has its own stream seeded from (seed, name), so a
 * tensor does not depend on the others.
 *
 * Memory is 4 bytes per parameter: smollm2-135m ~0.54 GB, smollm2-360m ~1.4 GB, llama-1b ~5 GB.
 */
import { type Checkpoint, type Float32Tensor, type LlamaConfig, expectedShapes } from './checkpoint.js';

const LLAMA: Omit<
  LlamaConfig,
  | 'hidden_size'
  | 'intermediate_size'
  | 'num_hidden_layers'
  | 'num_attention_heads'
  | 'num_key_value_heads'
  | 'vocab_size'
> = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
  hidden_act: 'silu',
};

/** Model shapes by name; fields not given take the llama defaults above. */
export const SYNTH_SHAPES: Record<string, Partial<LlamaConfig>> = {
  /** llama2.c stories260K dimensions. */
  tiny: {
    hidden_size: 64,
    intermediate_size: 172,
    num_hidden_layers: 5,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 512,
    max_position_embeddings: 512,
  },
  /**
   * stories260K's widths, 12 layers: deeper than WebGPU's storage-buffer limit per shader (a Split
   * of every layer's block would bind more outputs than a device allows; tests use it for that).
   */
  'tiny-deep': {
    hidden_size: 64,
    intermediate_size: 172,
    num_hidden_layers: 12,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 512,
    max_position_embeddings: 512,
  },
  'smollm2-135m': {
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    vocab_size: 49152,
    rope_theta: 100000,
    max_position_embeddings: 2048,
  },
  'smollm2-360m': {
    hidden_size: 960,
    intermediate_size: 2560,
    num_hidden_layers: 32,
    num_attention_heads: 15,
    num_key_value_heads: 5,
    vocab_size: 49152,
    rope_theta: 100000,
    max_position_embeddings: 2048,
  },
  /** Llama-3.2-1B dimensions (without its rope scaling): ~1.24B parameters, ~5 GB as float32. */
  'llama-1b': {
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    rope_theta: 500000,
    max_position_embeddings: 2048,
  },
};

/** The full config of a named shape. */
export function synthConfig(name: string): LlamaConfig {
  const shape = SYNTH_SHAPES[name];
  if (shape === undefined) {
    throw new RangeError(`unknown synthetic shape "${name}"; known: ${Object.keys(SYNTH_SHAPES).join(', ')}`);
  }
  return { ...LLAMA, ...shape } as LlamaConfig;
}

/** FNV-1a over the UTF-16 code units, mixed with the seed: a per-tensor stream seed. */
function streamSeed(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/**
 * Fill `out` with mean + std * (approximate standard normal) from a mulberry32 stream. The normal is
 * Irwin–Hall of four 16-bit uniforms (two 32-bit draws), rescaled to unit variance.
 */
export function fillNormal(out: Float32Array, seed: number, mean: number, std: number): void {
  let s = seed | 0;
  // sum of four U(0,1) has mean 2 and variance 1/3; the 16-bit halves are (k + 0.5) / 65536
  const scale = (std * Math.sqrt(3)) / 65536;
  const offset = mean - std * Math.sqrt(3) * 2 + 2 * scale; // the +0.5 per uniform, four times
  for (let i = 0; i < out.length; i++) {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    const a = t ^ (t >>> 14); // int32: the shifts below read its bits unsigned
    s = (s + 0x6d2b79f5) | 0;
    t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    const b = t ^ (t >>> 14);
    out[i] = offset + scale * ((a >>> 16) + (a & 0xffff) + (b >>> 16) + (b & 0xffff));
  }
}

/** Standard deviation of the linear and embedding weights. */
export const SYNTH_STD = 0.02;

/** A seeded random checkpoint with the shapes of `shape` (a SYNTH_SHAPES name or a full config). */
export function synthCheckpoint(shape: string | LlamaConfig, seed = 0): Checkpoint {
  const config = typeof shape === 'string' ? synthConfig(shape) : { ...shape };
  const tensors = new Map<string, Float32Tensor>();
  for (const [name, dims] of expectedShapes(config)) {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    const isNorm = name.endsWith('norm.weight');
    fillNormal(data, streamSeed(seed, name), isNorm ? 1 : 0, SYNTH_STD);
    tensors.set(name, { shape: dims, data });
  }
  return { config, tensors };
}
