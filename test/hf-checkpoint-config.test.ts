import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import { parseLlamaConfig } from '../src/formats/llama-config.js';

const minimal = {
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 5,
  num_attention_heads: 8,
  vocab_size: 512,
};

function expectError(json: unknown, message: string): void {
  let error: unknown;
  try {
    parseLlamaConfig(json);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ModelFormatError);
  expect((error as Error).message).toBe(message);
}

describe('parseLlamaConfig', () => {
  it("fills transformers' LlamaConfig defaults", () => {
    expect(parseLlamaConfig(minimal)).toEqual({
      ...minimal,
      num_key_value_heads: 8,
      max_position_embeddings: 2048,
      rms_norm_eps: 1e-6,
      rope_theta: 10000,
      tie_word_embeddings: false,
      hidden_act: 'silu',
    });
  });

  it("reads SmolLM2-135M's config.json", () => {
    const smol = {
      architectures: ['LlamaForCausalLM'],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 0,
      eos_token_id: 0,
      head_dim: 64,
      hidden_act: 'silu',
      hidden_size: 576,
      initializer_range: 0.041666666666666664,
      intermediate_size: 1536,
      is_llama_config: true,
      max_position_embeddings: 8192,
      mlp_bias: false,
      model_type: 'llama',
      num_attention_heads: 9,
      num_hidden_layers: 30,
      num_key_value_heads: 3,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_interleaved: false,
      rope_scaling: null,
      rope_theta: 100000,
      tie_word_embeddings: true,
      torch_dtype: 'bfloat16',
      transformers_version: '4.42.3',
      use_cache: true,
      vocab_size: 49152,
    };
    expect(parseLlamaConfig(smol)).toEqual({
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: 576,
      intermediate_size: 1536,
      num_hidden_layers: 30,
      num_attention_heads: 9,
      num_key_value_heads: 3,
      head_dim: 64,
      vocab_size: 49152,
      max_position_embeddings: 8192,
      rms_norm_eps: 1e-5,
      rope_theta: 100000,
      tie_word_embeddings: true,
      hidden_act: 'silu',
      bos_token_id: 0,
      eos_token_id: 0,
      torch_dtype: 'bfloat16',
    });
  });

  it('accepts mistral without a sliding window, and rope_parameters of the default type', () => {
    const m = parseLlamaConfig({
      ...minimal,
      model_type: 'mistral',
      sliding_window: null,
      num_key_value_heads: 2,
    });
    expect(m).toMatchObject({
      model_type: 'mistral',
      max_position_embeddings: 131072,
      num_key_value_heads: 2,
    });
    // a window at least as long as the context never applies
    expect(
      parseLlamaConfig({
        ...minimal,
        model_type: 'mistral',
        sliding_window: 4096,
        max_position_embeddings: 4096,
      }).model_type,
    ).toBe('mistral');
    expect(
      parseLlamaConfig({ ...minimal, rope_parameters: { rope_type: 'default', rope_theta: 500000 } })
        .rope_theta,
    ).toBe(500000);
    expect(parseLlamaConfig({ ...minimal, hidden_size: 65, head_dim: 8 }).head_dim).toBe(8);
  });

  it('refuses what the decoder does not compute, naming the field', () => {
    expectError(
      { ...minimal, model_type: 'gpt2' },
      'config.json: model_type: unsupported architecture "gpt2"; supported: llama, mistral',
    );
    expectError(
      { hidden_size: 64 },
      'config.json: model_type: unsupported architecture null; supported: llama, mistral',
    );
    expectError([], 'config.json: must be a JSON object');
    expectError(
      { ...minimal, model_type: 'mistral', max_position_embeddings: 32768 },
      'config.json: sliding_window: sliding-window attention (4096) is not supported; set it to null',
    );
    expectError(
      { ...minimal, rope_scaling: { type: 'linear', factor: 2 } },
      'config.json: rope_scaling: unsupported RoPE scaling {"type":"linear","factor":2}; only plain RoPE is supported',
    );
    expectError(
      { ...minimal, rope_scaling: { rope_type: 'llama3', factor: 32 } },
      'config.json: rope_scaling: unsupported RoPE scaling {"rope_type":"llama3","factor":32}; only plain RoPE is supported',
    );
    expectError(
      { ...minimal, hidden_act: 'gelu' },
      'config.json: hidden_act: unsupported activation "gelu"; supported: silu',
    );
    expectError(
      { ...minimal, attention_bias: true },
      'config.json: attention_bias: attention biases are not supported',
    );
    expectError({ ...minimal, mlp_bias: true }, 'config.json: mlp_bias: MLP biases are not supported');
    expectError(
      { ...minimal, hidden_size: 65 },
      'config.json: hidden_size: 65 is not divisible by num_attention_heads 8 (and head_dim is not set)',
    );
    expectError(
      { ...minimal, num_key_value_heads: 3 },
      'config.json: num_key_value_heads: num_attention_heads 8 is not a multiple of num_key_value_heads 3',
    );
  });

  it('refuses non-integer, non-positive and missing sizes', () => {
    expectError(
      { ...minimal, hidden_size: 64.5 },
      'config.json: hidden_size: must be a positive integer, got 64.5',
    );
    expectError({ ...minimal, vocab_size: 0 }, 'config.json: vocab_size: must be a positive integer, got 0');
    expectError(
      { ...minimal, num_hidden_layers: -1 },
      'config.json: num_hidden_layers: must be a positive integer, got -1',
    );
    expectError(
      { ...minimal, intermediate_size: '172' },
      'config.json: intermediate_size: must be a positive integer, got "172"',
    );
    const noVocab: Record<string, unknown> = { ...minimal };
    delete noVocab.vocab_size;
    expectError(noVocab, 'config.json: vocab_size: missing');
    expectError(
      { ...minimal, rms_norm_eps: 0 },
      'config.json: rms_norm_eps: must be a positive number, got 0',
    );
    expectError(
      { ...minimal, tie_word_embeddings: 'yes' },
      'config.json: tie_word_embeddings: must be true or false, got "yes"',
    );
  });
});
