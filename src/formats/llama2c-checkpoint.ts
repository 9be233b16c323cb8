/**
 * llama2.c's legacy checkpoint (run.c's `memory_map_weights`): a header of 7 little-endian int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means
 * an untied classifier at the end), then float32 weights in this order:
 *
 *   token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
 *   wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim],
 *   w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
 *   freq_cis_real [seq_len, head_size/2], freq_cis_imag [seq_len, head_size/2], (wcls [vocab, dim])
 *
 * Converted to Hugging Face names and conventions: w1/w3/w2 are gate/up/down, and the rows of wq
 * and wk are permuted per head as transformers' convert_llama_weights_to_hf.py does, so that
 * rotate-half RoPE computes what llama2.c's interleaved RoPE computes.
 */
import { ModelFormatError } from '../errors.js';
import type { Checkpoint, Float32Tensor, LlamaConfig } from './checkpoint.js';
import { expectedShapes } from './checkpoint.js';

const HEADER_FIELDS = [
  'dim',
  'hidden_dim',
  'n_layers',
  'n_heads',
  'n_kv_heads',
  'vocab_size',
  'seq_len',
] as const;
const HEADER_BYTES = HEADER_FIELDS.length * 4;

export function parseLlama2cCheckpoint(bytes: Uint8Array, file = 'checkpoint.bin'): Checkpoint {
  if (bytes.byteLength < HEADER_BYTES) {
    throw new ModelFormatError(
      file,
      'header',
      `truncated: ${bytes.byteLength} bytes, the header alone is ${HEADER_BYTES}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const header = HEADER_FIELDS.map((_, i) => view.getInt32(i * 4, true));
  const [dim, hidden, nLayers, nHeads, nKvHeads, signedVocab, seqLen] = header;
  const vocab = Math.abs(signedVocab);
  [dim, hidden, nLayers, nHeads, nKvHeads, vocab, seqLen].forEach((v, i) => {
    if (v <= 0) throw new ModelFormatError(file, HEADER_FIELDS[i], `must be positive, got ${v}`);
  });
  if (dim % nHeads !== 0) throw new ModelFormatError(file, 'n_heads', `${nHeads} does not divide dim ${dim}`);
  if (nHeads % nKvHeads !== 0)
    throw new ModelFormatError(file, 'n_kv_heads', `${nKvHeads} does not divide n_heads ${nHeads}`);
  const headSize = dim / nHeads;
  if (headSize % 2 !== 0)
    throw new ModelFormatError(file, 'n_heads', `head size ${headSize} is odd; RoPE needs pairs`);

  const config: LlamaConfig = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: dim,
    intermediate_size: hidden,
    num_hidden_layers: nLayers,
    num_attention_heads: nHeads,
    num_key_value_heads: nKvHeads,
    vocab_size: vocab,
    max_position_embeddings: seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: signedVocab > 0,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'float32',
    rope_scaling: null,
  };
  const kvDim = nKvHeads * headSize;
  const ropeTable = (seqLen * headSize) / 2;
  const floats =
    vocab * dim +
    nLayers * (2 * dim + 2 * dim * dim + 2 * kvDim * dim + 3 * hidden * dim) +
    dim +
    2 * ropeTable +
    (config.tie_word_embeddings ? 0 : vocab * dim);
  const expectedBytes = HEADER_BYTES + 4 * floats;
  if (bytes.byteLength !== expectedBytes) {
    throw new ModelFormatError(
      file,
      undefined,
      `the header (${HEADER_FIELDS.map((f, i) => `${f} ${header[i]}`).join(', ')}) implies ${expectedBytes} bytes, the file has ${bytes.byteLength}`,
    );
  }

  // Read the blocks in file order (float32 little-endian, read as the host's order, which is little-endian
  // on every platform this runs on); each per-layer block is split into one tensor per layer.
  let offset = HEADER_BYTES;
  const take = (count: number): Float32Array => {
    // Uint8Array.prototype.slice copies (Buffer#slice would return a view of a shared pool).
    const data = new Float32Array(Uint8Array.prototype.slice.call(bytes, offset, offset + count * 4).buffer);
    offset += count * 4;
    return data;
  };
  const perLayer = (rows: number, cols: number): Float32Array[] => {
    const block = take(nLayers * rows * cols);
    return Array.from({ length: nLayers }, (_, l) => block.slice(l * rows * cols, (l + 1) * rows * cols));
  };
  const embed = take(vocab * dim);
  const rmsAtt = perLayer(1, dim);
  const wq = perLayer(dim, dim);
  const wk = perLayer(kvDim, dim);
  const wv = perLayer(kvDim, dim);
  const wo = perLayer(dim, dim);
  const rmsFfn = perLayer(1, dim);
  const w1 = perLayer(hidden, dim);
  const w2 = perLayer(dim, hidden);
  const w3 = perLayer(hidden, dim);
  const rmsFinal = take(dim);
  take(2 * ropeTable); // freq_cis_real / freq_cis_imag: unused, RoPE is computed from rope_theta
  const wcls = config.tie_word_embeddings ? undefined : take(vocab * dim);

  const shapes = expectedShapes(config);
  const tensors = new Map<string, Float32Tensor>();
  const put = (name: string, data: Float32Array): void => {
    const shape = shapes.get(name);
    if (shape === undefined) throw new Error(`internal: no expected shape for ${name}`);
    tensors.set(name, { shape, data });
  };
  put('model.embed_tokens.weight', embed);
  for (let l = 0; l < nLayers; l++) {
    const p = `model.layers.${l}`;
    put(`${p}.self_attn.q_proj.weight`, permuteForRotateHalf(wq[l], nHeads, dim, dim));
    put(`${p}.self_attn.k_proj.weight`, permuteForRotateHalf(wk[l], nKvHeads, kvDim, dim));
    put(`${p}.self_attn.v_proj.weight`, wv[l]);
    put(`${p}.self_attn.o_proj.weight`, wo[l]);
    put(`${p}.mlp.gate_proj.weight`, w1[l]);
    put(`${p}.mlp.up_proj.weight`, w3[l]);
    put(`${p}.mlp.down_proj.weight`, w2[l]);
    put(`${p}.input_layernorm.weight`, rmsAtt[l]);
    put(`${p}.post_attention_layernorm.weight`, rmsFfn[l]);
  }
  put('model.norm.weight', rmsFinal);
  if (wcls !== undefined) put('lm_head.weight', wcls);
  return { config, tensors };
}

/**
 * HF's `w.view(heads, rows/heads/2, 2, cols).transpose(1, 2).reshape(rows, cols)`: within each
 * head, the interleaved pair rows (2i, 2i+1) move to (i, i + headSize/2).
 */
export function permuteForRotateHalf(
  w: Float32Array,
  heads: number,
  rows: number,
  cols: number,
): Float32Array {
  const half = rows / heads / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let t = 0; t < 2; t++) {
        const from = h * 2 * half + 2 * i + t;
        const to = h * 2 * half + t * half + i;
        out.set(w.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}
