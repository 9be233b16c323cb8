import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { fixture } from './fixtures.js';

/** A llama2.c file whose float number k (in file order) is k, so every weight names its origin. */
function syntheticCheckpoint(header: number[], floats: number): Uint8Array {
  const bytes = new Uint8Array(28 + 4 * floats);
  const view = new DataView(bytes.buffer);
  header.forEach((v, i) => view.setInt32(4 * i, v, true));
  for (let k = 0; k < floats; k++) view.setFloat32(28 + 4 * k, k, true);
  return bytes;
}

// dim 4, hidden 3, 1 layer, 1 head of size 4, 1 kv head, vocab 2, seq_len 2:
// embed 8, rms_att 4, wq 16, wk 16, wv 16, wo 16, rms_ffn 4, w1 12, w2 12, w3 12, rms_final 4,
// freq_cis 2*2*2 = 8  -> 128 floats tied, + wcls 8 untied.
const TINY = [4, 3, 1, 1, 1, 2, 2];

describe('parseLlama2cCheckpoint', () => {
  it('reads a tiny tied checkpoint into HF names, with the q/k rows permuted for rotate-half', () => {
    const ckpt = parseLlama2cCheckpoint(syntheticCheckpoint(TINY, 128), 'tiny.bin');
    const t = (name: string): number[] => Array.from(ckpt.tensors.get(name)?.data ?? []);
    expect(ckpt.config.tie_word_embeddings).toBe(true);
    expect([...ckpt.tensors.keys()]).not.toContain('lm_head.weight');
    expect(t('model.embed_tokens.weight')).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(t('model.layers.0.input_layernorm.weight')).toEqual([8, 9, 10, 11]);
    // wq starts at float 12; rows (0,1,2,3) -> HF order (0,2,1,3) within the one head of size 4.
    const row = (start: number, r: number): number[] => [0, 1, 2, 3].map((c) => start + 4 * r + c);
    expect(t('model.layers.0.self_attn.q_proj.weight')).toEqual([
      ...row(12, 0),
      ...row(12, 2),
      ...row(12, 1),
      ...row(12, 3),
    ]);
    expect(t('model.layers.0.self_attn.k_proj.weight')).toEqual([
      ...row(28, 0),
      ...row(28, 2),
      ...row(28, 1),
      ...row(28, 3),
    ]);
    expect(t('model.layers.0.self_attn.v_proj.weight')[0]).toBe(44);
    expect(t('model.layers.0.self_attn.o_proj.weight')[0]).toBe(60);
    expect(t('model.layers.0.post_attention_layernorm.weight')).toEqual([76, 77, 78, 79]);
    expect(t('model.layers.0.mlp.gate_proj.weight')[0]).toBe(80); // w1
    expect(t('model.layers.0.mlp.down_proj.weight')[0]).toBe(92); // w2
    expect(t('model.layers.0.mlp.up_proj.weight')[0]).toBe(104); // w3
    expect(ckpt.tensors.get('model.layers.0.mlp.down_proj.weight')?.shape).toEqual([4, 3]);
    expect(t('model.norm.weight')).toEqual([116, 117, 118, 119]);
  });

  it('reads the untied classifier after the freq_cis tables when vocab_size is negative', () => {
    const header = [...TINY];
    header[5] = -2;
    const ckpt = parseLlama2cCheckpoint(syntheticCheckpoint(header, 136));
    expect(ckpt.config.tie_word_embeddings).toBe(false);
    expect(ckpt.config.vocab_size).toBe(2);
    expect(Array.from(ckpt.tensors.get('lm_head.weight')?.data ?? [])).toEqual([
      128, 129, 130, 131, 132, 133, 134, 135,
    ]);
  });

  it('permutes each of several heads separately (HF view/transpose/reshape)', () => {
    // dim 8, 2 heads of size 4, 1 kv head; hidden 1, vocab 1, seq_len 1.
    const header = [8, 1, 1, 2, 1, 1, 1];
    // embed 8, rms 8, wq 64, wk 32, wv 32, wo 64, rms 8, w1 8, w2 8, w3 8, rms 8, freq 4 = 252
    const ckpt = parseLlama2cCheckpoint(syntheticCheckpoint(header, 252));
    const firstCol = (name: string, cols: number): number[] => {
      const d = ckpt.tensors.get(name)?.data ?? new Float32Array();
      return Array.from({ length: d.length / cols }, (_, r) => d[r * cols]);
    };
    const qRows = firstCol('model.layers.0.self_attn.q_proj.weight', 8).map((v) => (v - 16) / 8);
    expect(qRows).toEqual([0, 2, 1, 3, 4, 6, 5, 7]);
    const kRows = firstCol('model.layers.0.self_attn.k_proj.weight', 8).map((v) => (v - 80) / 8);
    expect(kRows).toEqual([0, 2, 1, 3]);
  });

  it('reads stories260K with its config and the wq rows of the real file permuted', () => {
    const bytes = new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin')));
    const ckpt = parseLlama2cCheckpoint(bytes, 'stories260K.bin');
    expect(ckpt.config).toMatchObject({
      hidden_size: 64,
      intermediate_size: 172,
      num_hidden_layers: 5,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      vocab_size: 512,
      max_position_embeddings: 512,
      tie_word_embeddings: true,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      bos_token_id: 1,
      eos_token_id: 2,
    });
    expect(ckpt.tensors.size).toBe(1 + 5 * 9 + 1);
    // Raw wq of layer 0 starts after embed (512*64) and rms_att (5*64); HF row 1 of head 3 is raw row
    // 3*8 + 2 (the first element of the second interleaved pair).
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const rawWq = (row: number, col: number): number =>
      view.getFloat32(28 + 4 * (512 * 64 + 5 * 64 + row * 64 + col), true);
    const q = ckpt.tensors.get('model.layers.0.self_attn.q_proj.weight')?.data ?? new Float32Array();
    for (const col of [0, 17, 63]) {
      expect(q[(3 * 8 + 1) * 64 + col]).toBe(rawWq(3 * 8 + 2, col));
      expect(q[(3 * 8 + 4) * 64 + col]).toBe(rawWq(3 * 8 + 1, col));
    }
  });

  it('rejects malformed files with a ModelFormatError naming the file and field', () => {
    const bad = (header: number[], floats: number): ModelFormatError => {
      try {
        parseLlama2cCheckpoint(syntheticCheckpoint(header, floats), 'x.bin');
      } catch (e) {
        expect(e).toBeInstanceOf(ModelFormatError);
        return e as ModelFormatError;
      }
      throw new Error('expected an error');
    };
    expect(() => parseLlama2cCheckpoint(new Uint8Array(20), 'x.bin')).toThrow(
      /x\.bin: header: truncated: 20 bytes/,
    );
    expect(bad([4, 3, 0, 1, 1, 2, 2], 0).field).toBe('n_layers');
    expect(bad([4, 3, 1, 3, 1, 2, 2], 0).message).toMatch(/x\.bin: n_heads: 3 does not divide dim 4/);
    expect(bad([8, 3, 1, 4, 3, 2, 2], 0).field).toBe('n_kv_heads');
    expect(bad(TINY, 127).message).toMatch(/implies 540 bytes, the file has 536/);
    expect(bad(TINY, 136).message).toMatch(/vocab_size 2.*implies 540 bytes, the file has 572/);
  });
});

describe('parseLlama2cCheckpoint input types', () => {
  it('a Node Buffer (a view into a shared pool) parses to the same tensors as a plain Uint8Array', () => {
    const buffer = readFileSync(fixture('llama2c/stories260K.bin'));
    const pooled = Buffer.concat([Buffer.alloc(13), buffer]).subarray(13);
    const a = parseLlama2cCheckpoint(pooled);
    const b = parseLlama2cCheckpoint(new Uint8Array(buffer));
    for (const [name, t] of b.tensors)
      expect(Array.from(a.tensors.get(name)!.data)).toEqual(Array.from(t.data));
  });
});
