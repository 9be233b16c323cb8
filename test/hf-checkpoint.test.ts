import { describe, expect, it } from 'vitest';
import { ModelFormatError } from '../src/errors.js';
import { type Checkpoint, expectedShapes } from '../src/formats/checkpoint.js';
import { roundToBfloat16, roundToFloat16 } from '../src/formats/dtype.js';
import { readHfCheckpoint, writeHfCheckpoint } from '../src/formats/hf-checkpoint.js';
import { parseLlamaConfig } from '../src/formats/llama-config.js';
import {
  type SafetensorsEntry,
  float32Entry,
  parseSafetensors,
  serializeSafetensors,
} from '../src/formats/safetensors.js';
import { synthCheckpoint } from '../src/formats/synth.js';

const ckpt = synthCheckpoint('tiny', 7);
const reader = (files: Map<string, Uint8Array>) => async (name: string) => files.get(name);
const read = (files: Map<string, Uint8Array>) => readHfCheckpoint(reader(files));
const json = (bytes: Uint8Array | undefined) =>
  JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;

function expectSameTensors(got: Checkpoint, want: Map<string, Float32Array>): void {
  expect([...got.tensors.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, data] of want) {
    const t = got.tensors.get(name);
    expect(t?.shape).toEqual(expectedShapes(got.config).get(name));
    // bitwise equality, all elements
    expect(
      Buffer.from(t!.data.buffer, t!.data.byteOffset, t!.data.byteLength).equals(
        Buffer.from(data.buffer, data.byteOffset, data.byteLength),
      ),
    ).toBe(true);
  }
}

const originals = (map: (d: Float32Array) => Float32Array = (d) => d) =>
  new Map([...ckpt.tensors].map(([n, t]) => [n, map(t.data)]));

/** Rewrite model.safetensors of a written folder through `edit`. */
function editWeights(edit: (tensors: Map<string, SafetensorsEntry>) => void): Map<string, Uint8Array> {
  const files = writeHfCheckpoint(ckpt);
  const file = parseSafetensors(files.get('model.safetensors')!);
  const tensors = new Map(file.tensors);
  edit(tensors);
  files.set('model.safetensors', serializeSafetensors(tensors, file.metadata));
  return files;
}

async function expectError(files: Map<string, Uint8Array>, pattern: RegExp): Promise<void> {
  const e = await read(files).then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ModelFormatError);
  expect((e as Error).message).toMatch(pattern);
}

describe('writeHfCheckpoint -> readHfCheckpoint', () => {
  it('F32: identical tensors and config, files as save_pretrained writes them', async () => {
    const files = writeHfCheckpoint(ckpt);
    expect([...files.keys()].sort()).toEqual(['config.json', 'model.safetensors']);
    const config = json(files.get('config.json'));
    expect(Object.keys(config)).toEqual(Object.keys(config).sort());
    expect(config).toMatchObject({
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      hidden_size: 64,
      torch_dtype: 'float32',
    });
    expect(
      new TextDecoder()
        .decode(files.get('config.json'))
        .startsWith('{\n  "architectures": [\n    "LlamaForCausalLM"\n  ],\n'),
    ).toBe(true);
    const st = parseSafetensors(files.get('model.safetensors')!);
    expect(st.metadata).toEqual({ format: 'pt' });
    // tiny: 512*64 + 5*(64*64*2 + 32*64*2 + 172*64*3 + 64*2) + 64 floats, tied (no lm_head)
    const params = 512 * 64 + 5 * (64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3 + 64 * 2) + 64;
    expect([...st.tensors.values()].reduce((a, t) => a + t.bytes.length, 0)).toBe(params * 4);

    const back = await read(files);
    expect(back.config).toEqual(parseLlamaConfig(config));
    expect(back.config).toMatchObject({ ...ckpt.config, torch_dtype: 'float32' });
    expectSameTensors(back, originals());
  });

  it('F16 and BF16: tensors equal the dtype rounding of the originals', async () => {
    const f16 = await read(writeHfCheckpoint(ckpt, { dtype: 'F16' }));
    expect(f16.config.torch_dtype).toBe('float16');
    expectSameTensors(f16, originals(roundToFloat16));
    const bf16 = await read(writeHfCheckpoint(ckpt, { dtype: 'BF16' }));
    expect(bf16.config.torch_dtype).toBe('bfloat16');
    expectSameTensors(bf16, originals(roundToBfloat16));
    // the rounding really happened: some values changed
    const e = ckpt.tensors.get('model.embed_tokens.weight')!.data;
    expect(bf16.tensors.get('model.embed_tokens.weight')!.data.some((v, i) => v !== e[i])).toBe(true);
  });

  it('shards as huggingface_hub splits them, with an index, and reads them back', async () => {
    const files = writeHfCheckpoint(ckpt, { shardBytes: 100_000 });
    const index = json(files.get('model.safetensors.index.json'));
    const weightMap = index.weight_map as Record<string, string>;
    const shards = [...new Set(Object.values(weightMap))].sort();
    const n = shards.length;
    expect(shards[0]).toBe(`model-00001-of-${String(n).padStart(5, '0')}.safetensors`);
    expect([...files.keys()].sort()).toEqual(
      ['config.json', 'model.safetensors.index.json', ...shards].sort(),
    );
    // embed 512*64*4 = 131072 B > 100000: alone in shard 1. Layer 0: q 16384 + k 8192 + v 8192
    // + o 16384 + gate 44032 = 93184 B; up (44032) would tip it over 100000, so it opens shard 3.
    expect(weightMap['model.embed_tokens.weight']).toBe(shards[0]);
    expect(weightMap['model.layers.0.self_attn.q_proj.weight']).toBe(shards[1]);
    expect(weightMap['model.layers.0.mlp.gate_proj.weight']).toBe(shards[1]);
    expect(weightMap['model.layers.0.mlp.up_proj.weight']).toBe(shards[2]);
    expect(Object.keys(weightMap).sort()).toEqual([...expectedShapes(ckpt.config).keys()].sort());
    expect((index.metadata as Record<string, number>).total_size).toBe(
      [...ckpt.tensors.values()].reduce((a, t) => a + t.data.length * 4, 0),
    );
    for (const shard of shards) {
      const st = parseSafetensors(files.get(shard)!);
      expect(st.tensors.size).toBeGreaterThan(0);
      for (const name of st.tensors.keys()) expect(weightMap[name]).toBe(shard);
    }
    expectSameTensors(await read(files), originals());
  });
});

describe('readHfCheckpoint errors name the file and the tensor', () => {
  it('missing files and bad config', async () => {
    await expectError(new Map(), /^config\.json: not found in model folder$/);
    const files = writeHfCheckpoint(ckpt);
    files.delete('model.safetensors');
    await expectError(
      files,
      /model\.safetensors: neither model\.safetensors nor model\.safetensors\.index\.json found/,
    );
    const gpt2 = writeHfCheckpoint(ckpt);
    gpt2.set(
      'config.json',
      new TextEncoder().encode(JSON.stringify({ ...json(gpt2.get('config.json')), model_type: 'gpt2' })),
    );
    await expectError(
      gpt2,
      /^config\.json: model_type: unsupported architecture "gpt2"; supported: llama, mistral$/,
    );
    gpt2.set('config.json', new TextEncoder().encode('{"model_type": '));
    await expectError(gpt2, /^config\.json: not valid UTF-8 JSON/);
  });

  it('missing, mis-shaped, wrongly typed and unexpected tensors', async () => {
    await expectError(
      editWeights((t) => t.delete('model.layers.2.mlp.up_proj.weight')),
      /^model\.safetensors: model\.layers\.2\.mlp\.up_proj\.weight: missing tensor$/,
    );
    await expectError(
      editWeights((t) => t.set('model.norm.weight', float32Entry(new Float32Array(32), [32]))),
      /^model\.safetensors: model\.norm\.weight: expected shape \[64\], got \[32\]$/,
    );
    await expectError(
      editWeights((t) =>
        t.set('model.layers.0.mlp.down_proj.weight', float32Entry(new Float32Array(64 * 172), [172, 64])),
      ),
      /model\.layers\.0\.mlp\.down_proj\.weight: expected shape \[64, 172\], got \[172, 64\]/,
    );
    await expectError(
      editWeights((t) =>
        t.set('model.norm.weight', { dtype: 'I32', shape: [64], bytes: new Uint8Array(256) }),
      ),
      /^model\.safetensors: model\.norm\.weight: unsupported dtype I32/,
    );
    await expectError(
      editWeights((t) =>
        t.set('model.layers.1.self_attn.q_proj.bias', float32Entry(new Float32Array(64), [64])),
      ),
      /^model\.safetensors: model\.layers\.1\.self_attn\.q_proj\.bias: unexpected tensor/,
    );
  });

  it('ignores rotary inv_freq buffers and a tied lm_head.weight', async () => {
    const files = editWeights((t) => {
      t.set('model.layers.0.self_attn.rotary_emb.inv_freq', float32Entry(new Float32Array(4), [4]));
      t.set('lm_head.weight', float32Entry(new Float32Array(512 * 64).fill(3), [512, 64]));
    });
    const back = await read(files);
    expect(back.tensors.has('lm_head.weight')).toBe(false);
    expect(back.tensors.has('model.layers.0.self_attn.rotary_emb.inv_freq')).toBe(false);
    expectSameTensors(back, originals());
  });

  it('sharded: missing shard, tensor absent from its shard, tensor in no shard', async () => {
    const base = () => writeHfCheckpoint(ckpt, { shardBytes: 100_000 });
    const files = base();
    const index = json(files.get('model.safetensors.index.json'));
    const weightMap = index.weight_map as Record<string, string>;
    const shard = weightMap['model.layers.0.mlp.up_proj.weight'];
    files.delete(shard);
    await expectError(
      files,
      new RegExp(`^${shard}: listed in model\\.safetensors\\.index\\.json but not found in model folder$`),
    );

    const moved = base();
    const wrongMap = { ...weightMap, 'model.norm.weight': weightMap['model.embed_tokens.weight'] };
    moved.set(
      'model.safetensors.index.json',
      new TextEncoder().encode(JSON.stringify({ ...index, weight_map: wrongMap })),
    );
    await expectError(
      moved,
      new RegExp(`^${weightMap['model.embed_tokens.weight']}: model\\.norm\\.weight: missing tensor`),
    );

    const dropped = base();
    const last = weightMap['model.norm.weight'];
    const st = parseSafetensors(dropped.get(last)!);
    const kept = [...st.tensors].filter(([n]) => n !== 'model.norm.weight');
    dropped.set(last, serializeSafetensors(kept, st.metadata));
    const lessMap = Object.fromEntries(Object.entries(weightMap).filter(([n]) => n !== 'model.norm.weight'));
    dropped.set(
      'model.safetensors.index.json',
      new TextEncoder().encode(JSON.stringify({ ...index, weight_map: lessMap })),
    );
    await expectError(
      dropped,
      /^model\.safetensors\.index\.json: model\.norm\.weight: missing tensor: in no shard of weight_map$/,
    );

    const evil = base();
    evil.set(
      'model.safetensors.index.json',
      new TextEncoder().encode(JSON.stringify({ weight_map: { 'model.norm.weight': '../x' } })),
    );
    await expectError(
      evil,
      /^model\.safetensors\.index\.json: weight_map\.model\.norm\.weight: invalid shard file name "\.\.\/x"$/,
    );
  });
});

describe('writeHfCheckpoint errors', () => {
  it('refuses missing, mis-shaped and unknown tensors', () => {
    const without = new Map(ckpt.tensors);
    without.delete('model.norm.weight');
    expect(() => writeHfCheckpoint({ config: ckpt.config, tensors: without })).toThrow(
      /^checkpoint: model\.norm\.weight: missing tensor$/,
    );
    const bad = new Map(ckpt.tensors);
    bad.set('model.norm.weight', { shape: [32], data: new Float32Array(32) });
    expect(() => writeHfCheckpoint({ config: ckpt.config, tensors: bad })).toThrow(
      /model\.norm\.weight: expected shape \[64\], got \[32\]/,
    );
    const extra = new Map(ckpt.tensors);
    extra.set('model.layers.0.mlp.up_proj.bias', { shape: [172], data: new Float32Array(172) });
    expect(() => writeHfCheckpoint({ config: ckpt.config, tensors: extra })).toThrow(ModelFormatError);
  });
});
