import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { main } from '../src/cli.js';
import { referenceLogits } from '../src/reference/llama.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { loadAdapter, makeLoraAdapter, makePrefixTuningAdapter } from './helpers/peft-fixtures.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { mkdirSync } from 'node:fs';
import { writeHfCheckpoint } from '../src/formats/hf-checkpoint.js';
import { roundToBfloat16 } from '../src/formats/dtype.js';
import type { Checkpoint } from '../src/formats/checkpoint.js';

const run = promisify(execFile);
const BIN = path.resolve('bin/edge-adapters.js');
const work = mkdtempSync(path.join(tmpdir(), 'edge-adapters-cli-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

async function cli(args: string[]): Promise<string> {
  let out = '';
  await main(args, (s) => (out += s));
  return out;
}

const golden = readFileSync(fixture('llama2c/stories260K.greedy-once-upon-a-time.txt'), 'utf8');

describe('edge-adapters CLI', () => {
  const model = path.join(work, 'stories260K');

  it('convert llama2c writes a model folder', async () => {
    await cli([
      'convert',
      'llama2c',
      fixture('llama2c/stories260K.bin'),
      fixture('llama2c/tok512.bin'),
      '--out',
      model,
    ]);
    for (const f of [
      'config.json',
      'model.onnx',
      'tokenizer.bin',
      'tokenizer.json',
      'generation_config.json',
    ]) {
      expect(existsSync(path.join(model, f)), f).toBe(true);
    }
    const config = JSON.parse(readFileSync(path.join(model, 'config.json'), 'utf8'));
    expect(config).toMatchObject({
      hidden_size: 64,
      num_hidden_layers: 5,
      num_key_value_heads: 4,
      vocab_size: 512,
    });
  });

  it('generate prints exactly what llama2.c run.c prints (greedy, -n 256)', async () => {
    const out = await cli([
      'generate',
      '--model',
      model,
      '--prompt',
      'Once upon a time',
      '--temperature',
      '0',
      '--max-tokens',
      '252',
    ]);
    expect(out).toBe(golden);
  });

  it('the installed binary prints the same, as a process', async () => {
    const { stdout } = await run(process.execPath, [
      BIN,
      'generate',
      '--model',
      model,
      '--prompt',
      'Once upon a time',
      '--temperature',
      '0',
      '--max-tokens',
      '252',
    ]);
    expect(stdout).toBe(golden);
  });

  it('logits prints JSON equal to the float64 reference', async () => {
    const out = JSON.parse(await cli(['logits', '--model', model, '--tokens', '1,403,407']));
    const ckpt = parseLlama2cCheckpoint(new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))));
    const ref = referenceLogits(ckpt, [1, 403, 407]);
    expect(out.logits).toHaveLength(3);
    for (let i = 0; i < 3; i++) {
      expect(out.logits[i]).toHaveLength(512);
      for (let v = 0; v < 512; v++) expect(Math.abs(out.logits[i][v] - ref[i][v])).toBeLessThan(1e-4);
    }
  });

  it('errors exit non-zero with a message naming the file and field', async () => {
    const bad = path.join(work, 'truncated.bin');
    writeFileSync(bad, readFileSync(fixture('llama2c/stories260K.bin')).subarray(0, 1000));
    const failed = await run(process.execPath, [
      BIN,
      'convert',
      'llama2c',
      bad,
      fixture('llama2c/tok512.bin'),
      '--out',
      path.join(work, 'x'),
    ]).catch((e: { code: number; stderr: string }) => e);
    expect('code' in failed && failed.code).toBe(1);
    expect((failed as { stderr: string }).stderr).toMatch(/ModelFormatError: .*truncated\.bin/);
    expect(existsSync(path.join(work, 'x'))).toBe(false);

    const usage = await run(process.execPath, [BIN, 'generate', '--prompt', 'x']).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect('code' in usage && usage.code).toBe(2);
    expect((usage as { stderr: string }).stderr).toMatch(/--model is required/);

    const tokens = await run(process.execPath, [BIN, 'logits', '--model', model, '--tokens', '1,9999']).catch(
      (e: { code: number; stderr: string }) => e,
    );
    expect((tokens as { stderr: string }).stderr).toMatch(
      /InvalidInputError: tokens: \[1\]: token id 9999 is outside the vocabulary/,
    );
  });

  it('logits and generate take --adapter (repeatable) and --weights', async () => {
    const lora = makeLoraAdapter({ seed: 3, scale: 0.1 });
    const prefix = makePrefixTuningAdapter({ seed: 4 });
    const dirs = [path.join(work, 'lora'), path.join(work, 'prefix')];
    [lora, prefix].forEach((files, i) => {
      mkdirSync(dirs[i], { recursive: true });
      for (const [name, bytes] of files) writeFileSync(path.join(dirs[i], name), bytes);
    });
    const out = JSON.parse(
      await cli([
        'logits',
        '--model',
        model,
        '--tokens',
        '1,403,407,261',
        '--adapter',
        dirs[0],
        '--adapter',
        dirs[1],
        '--weights',
        '0.5,1',
      ]),
    );
    const ckpt = parseLlama2cCheckpoint(new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))));
    const ref = referenceLogitsWithAdapters(
      ckpt,
      [{ adapter: loadAdapter(lora), weight: 0.5 }, { adapter: loadAdapter(prefix) }],
      [1, 403, 407, 261],
    );
    for (let i = 0; i < 4; i++)
      for (let v = 0; v < 512; v++) expect(Math.abs(out.logits[i][v] - ref[i][v])).toBeLessThan(1e-4);

    const text = await cli([
      'generate',
      '--model',
      model,
      '--prompt',
      'Once upon a time',
      '--max-tokens',
      '30',
      '--adapter',
      dirs[0],
    ]);
    expect(text.startsWith('Once upon a time')).toBe(true);
    expect(text).not.toBe(golden.slice(0, text.length));
    await expect(
      cli(['logits', '--model', model, '--tokens', '1', '--adapter', dirs[0], '--weights', '1,2']),
    ).rejects.toThrow(/--weights has 2 values for 1 --adapter/);
  });

  it('convert hf: a sharded BF16 checkpoint with tokenizer.json converts and runs as the reference on the rounded weights', async () => {
    const ckpt = parseLlama2cCheckpoint(new Uint8Array(readFileSync(fixture('llama2c/stories260K.bin'))));
    const src = path.join(work, 'hf-src');
    mkdirSync(src, { recursive: true });
    const files = writeHfCheckpoint(ckpt, { dtype: 'BF16', shardBytes: 200_000 });
    expect(files.has('model.safetensors.index.json')).toBe(true);
    for (const [name, bytes] of files) writeFileSync(path.join(src, name), bytes);
    writeFileSync(path.join(src, 'tokenizer.json'), readFileSync(path.join(model, 'tokenizer.json')));
    writeFileSync(
      path.join(src, 'tokenizer_config.json'),
      readFileSync(path.join(model, 'tokenizer_config.json')),
    );
    const out = path.join(work, 'hf-out');
    await cli(['convert', 'hf', src, '--out', out]);
    const rounded: Checkpoint = {
      config: ckpt.config,
      tensors: new Map(
        [...ckpt.tensors].map(([k, t]) => [k, { shape: t.shape, data: roundToBfloat16(t.data) }]),
      ),
    };
    const tokens = [1, 403, 407, 261, 378, 300];
    const got = JSON.parse(await cli(['logits', '--model', out, '--tokens', tokens.join(',')]));
    const want = referenceLogits(rounded, tokens);
    for (let i = 0; i < tokens.length; i++)
      for (let v = 0; v < 512; v++) expect(Math.abs(got.logits[i][v] - want[i][v])).toBeLessThan(1e-4);
    const text = await cli(['generate', '--model', out, '--prompt', 'Once upon a time', '--max-tokens', '8']);
    expect(text.startsWith('Once upon a time')).toBe(true);
  });

  it('synth writes a seeded model folder that runs; bench prints a throughput table', async () => {
    const out = path.join(work, 'synth-tiny');
    await cli(['synth', '--shape', 'tiny', '--seed', '3', '--out', out]);
    const config = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config).toMatchObject({ hidden_size: 64, num_hidden_layers: 5, vocab_size: 512 });
    // a byte-level tokenizer comes with it, so the folder generates like any other
    const text = await cli([
      'generate',
      '--model',
      out,
      '--prompt',
      'héllo',
      '--max-tokens',
      '4',
      '--temperature',
      '0',
    ]);
    expect(text.startsWith('héllo')).toBe(true);
    expect(JSON.parse(await cli(['logits', '--model', out, '--tokens', '1,3'])).logits).toHaveLength(2);
    const table = await cli(['bench', '--model', model, '--prompt-tokens', '16', '--decode-tokens', '8']);
    const row = table
      .trim()
      .split('\n')
      .at(-1)!
      .split('|')
      .map((c) => c.trim());
    expect(Number(row[4])).toBeGreaterThan(0);
    expect(Number(row[5])).toBeGreaterThan(0);
  });
});
