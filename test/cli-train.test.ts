/**
 * `edge-adapters train` on the real stories260K: each method writes a PEFT folder that the runtime
 * loads, with the requested config; the first losses are the closed forms (DPO ln 2 and KTO 1/2,
 * since the policy is its own reference at step 1); SFT learns and moves the model's logits toward
 * the corrected name; --last-layers / --targets select the modules PEFT would; --adapter continues
 * from a folder (byte for byte with --lr 0); bad input fails naming the flag or file:line and field,
 * and writes nothing.
 */
import { execFile } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture } from './fixtures.js';
import { makeIa3Adapter, makeLoraAdapter } from './helpers/peft-fixtures.js';
import { main } from '../src/cli.js';
import { Runtime } from '../src/runtime.js';
import { parsePeftConfig, type LoraConfig } from '../src/formats/peft-config.js';
import {
  adapterTensor,
  loraModules,
  parsePeftAdapter,
  serializePeftAdapter,
  type PeftAdapter,
} from '../src/formats/peft-adapter.js';
import { initLora } from '../src/train/init-lora.js';
import { IncompatibleAdapterError, InvalidInputError } from '../src/errors.js';
import type { LlamaConfig } from '../src/formats/checkpoint.js';

const exec = promisify(execFile);
const BIN = path.resolve('bin/edge-adapters.js');
const work = mkdtempSync(path.join(tmpdir(), 'edge-adapters-cli-train-'));
const model = path.join(work, 'stories260K');
const at = (name: string) => path.join(work, name);

async function cli(args: string[]): Promise<string> {
  let out = '';
  await main(args, (s) => (out += s));
  return out;
}

interface Step {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  gradNorm: number;
  skipped: boolean;
}

/** Runs `train` and reads its progress lines and summary. */
async function train(args: string[]): Promise<{ steps: Step[]; summary: string }> {
  const text = await cli(['train', '--model', model, ...args]);
  const steps: Step[] = [];
  const rest: string[] = [];
  for (const line of text.trimEnd().split('\n')) {
    const m = /^step (\d+)\/(\d+) {2}loss (\S+) {2}lr (\S+) {2}grad_norm (\S+) {2}skipped (yes|no)$/.exec(
      line,
    );
    if (m)
      steps.push({
        step: Number(m[1]),
        steps: Number(m[2]),
        loss: Number(m[3]),
        lr: Number(m[4]),
        gradNorm: Number(m[5]),
        skipped: m[6] === 'yes',
      });
    else rest.push(line);
  }
  return { steps, summary: rest.join('\n') };
}

const readAdapter = (dir: string): PeftAdapter =>
  parsePeftAdapter(
    {
      config: readFileSync(path.join(dir, 'adapter_config.json')),
      weights: new Uint8Array(readFileSync(path.join(dir, 'adapter_model.safetensors'))),
    },
    dir,
  );
const readConfig = (dir: string) =>
  parsePeftConfig(JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'))) as LoraConfig;
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** Every linear module of stories260K's 5 layers, by hand, in named_modules order. */
const KINDS = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.up_proj',
  'mlp.down_proj',
];
const modulesOf = (layers: number[], kinds: string[]) =>
  layers.flatMap((l) => kinds.map((k) => `model.layers.${l}.${k}`)).sort();
/** The modules an adapter file holds (safetensors stores tensors sorted by name). */
const modulesIn = (dir: string) => [...loraModules(readAdapter(dir)).keys()].sort();

// Feedback in the model's own style: corrections renaming Lily to Tom, thumbs up/down, a pair, a demo.
const prompt = 'Once upon a time';
const lily = [
  ', there was a little girl named Lily. She loved to play outside.',
  ', there was a little girl named Lily. She had a big red ball.',
  ', there was a little girl named Lily. She saw a bird in the tree.',
];
const dog = ', there was a little dog. The dog liked to run in the park.';
const feedback = [
  { prompt, completion: lily[0], correction: lily[0].replace('Lily', 'Tom') },
  { prompt, completion: lily[1], correction: lily[1].replace('Lily', 'Tom') },
  { prompt, completion: lily[2].replace('Lily', 'Tom'), rating: 1 },
  { prompt, completion: lily[2], rating: -1 },
  { prompt, chosen: dog.replaceAll('dog', 'cat'), rejected: dog },
  { prompt, completion: ', there was a little girl named Tom. Tom liked to sing.' },
];
// sft: 2 corrections + the thumbs up + the chosen + the demonstration.
const SFT_EXAMPLES = 5;
const jsonl = (events: object[]) => events.map((e) => JSON.stringify(e)).join('\n') + '\n';
const FEEDBACK = at('feedback.jsonl');

let rt: Runtime;
let config: LlamaConfig;

beforeAll(async () => {
  await cli([
    'convert',
    'llama2c',
    fixture('llama2c/stories260K.bin'),
    fixture('llama2c/tok512.bin'),
    '--out',
    model,
  ]);
  writeFileSync(FEEDBACK, jsonl(feedback));
  rt = await Runtime.create({ model });
  config = rt.model.config;
});

afterAll(async () => {
  await rt?.release();
  rmSync(work, { recursive: true, force: true });
});

describe('edge-adapters train', () => {
  const sftDir = at('sft');
  let sft: { steps: Step[]; summary: string };

  it('sft: the loss falls; a valid PEFT LoRA with the default config whose lora_B left zero', async () => {
    sft = await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--steps',
      '15',
      '--lr',
      '5e-3',
      '--out',
      sftDir,
    ]);
    expect(sft.steps.map((s) => s.step)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    for (const s of sft.steps) {
      expect(s).toMatchObject({ steps: 15, lr: 5e-3, skipped: false });
      expect(s.gradNorm).toBeGreaterThan(0);
    }
    const first = sft.steps[0].loss;
    const last = sft.steps[14].loss;
    expect(last).toBeLessThan(0.8 * first);
    expect(sft.summary).toContain(
      `trained sft: 15 steps, 0 skipped, loss ${first.toFixed(6)} -> ${last.toFixed(6)}, ${SFT_EXAMPLES} examples`,
    );
    expect(sft.summary).toMatch(/examples, \d+\.\d s\nwrote /);
    expect(sft.summary.endsWith(`wrote ${sftDir}`)).toBe(true);
    expect(readdirSync(sftDir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);

    // Defaults: r 8, lora_alpha 2·r, PEFT's Llama targets, every layer.
    const c = readConfig(sftDir);
    expect(c).toMatchObject({
      peft_type: 'LORA',
      r: 8,
      lora_alpha: 16,
      target_modules: ['q_proj', 'v_proj'],
    });
    expect(c.layers_to_transform).toBeNull();
    const adapter = readAdapter(sftDir);
    const modules = loraModules(adapter);
    expect([...modules.keys()].sort()).toEqual(
      modulesOf([0, 1, 2, 3, 4], ['self_attn.q_proj', 'self_attn.v_proj']),
    );
    // PEFT starts lora_B at 0 and lora_A at the seed-0 draw: both moved.
    const init = initLora(config, { rank: 8, seed: 0 });
    for (const t of modules.values()) {
      expect(t.rank).toBe(8);
      expect(maxAbs(adapterTensor(adapter, t.b))).toBeGreaterThan(1e-4);
      const a = adapterTensor(adapter, t.a);
      const a0 = adapterTensor(init, t.a);
      expect(a.some((v, i) => v !== a0[i])).toBe(true);
    }
    await expect(rt.adapters.add('sft', sftDir)).resolves.toBeDefined();
  });

  it('sft moves the logits the trained way: log p(Tom) - log p(Lily) after "...a little girl named" rises', async () => {
    const context = 'Once upon a time, there was a little girl named';
    const tokenizer = rt.model.tokenizer;
    const before = tokenizer.encode(context, { bos: true });
    /** log p(name | context): the sum of the log-softmax of each of the name's tokens. */
    const logp = async (name: string) => {
      const ids = tokenizer.encode(`${context} ${name}`, { bos: true });
      expect(ids.slice(0, before.length)).toEqual(before);
      expect(ids.length).toBeGreaterThan(before.length);
      const logits = await rt.logits(ids);
      let sum = 0;
      for (let j = before.length; j < ids.length; j++) {
        const row = logits[j - 1];
        const max = row.reduce((m, v) => Math.max(m, v), -Infinity);
        const z = row.reduce((s, v) => s + Math.exp(v - max), 0);
        sum += row[ids[j]] - max - Math.log(z);
      }
      return sum;
    };
    rt.adapters.deactivate();
    const base = (await logp('Tom')) - (await logp('Lily'));
    await rt.adapters.activate('sft');
    const trained = (await logp('Tom')) - (await logp('Lily'));
    rt.adapters.deactivate();
    expect(trained).toBeGreaterThan(base + 1);
  });

  it('kto starts at 1/2 and dpo at ln 2 (policy = reference at step 1), with the requested config', async () => {
    const cases = [
      {
        method: 'kto',
        first: 0.5,
        args: ['--rank', '4', '--alpha', '8', '--targets', 'q_proj,k_proj,v_proj,o_proj'],
      },
      {
        method: 'dpo',
        first: Math.LN2,
        args: [
          '--rank',
          '2',
          '--alpha',
          '4',
          '--targets',
          'v_proj,down_proj',
          '--beta',
          '0.2',
          '--batch-size',
          '2',
        ],
      },
    ];
    for (const { method, first, args } of cases) {
      const dir = at(method);
      const r = await train([
        '--feedback',
        FEEDBACK,
        '--method',
        method,
        '--steps',
        '3',
        '--lr',
        '5e-3',
        '--seed',
        '1',
        ...args,
        '--out',
        dir,
      ]);
      expect(r.steps).toHaveLength(3);
      expect(Math.abs(r.steps[0].loss - first), method).toBeLessThan(1e-5);
      expect(r.steps[2].loss, method).toBeLessThan(first);
      const c = readConfig(dir);
      const [rank, alpha, targets] = [Number(args[1]), Number(args[3]), args[5].split(',')];
      expect(c).toMatchObject({ r: rank, lora_alpha: alpha, target_modules: targets });
      const adapter = readAdapter(dir);
      const modules = loraModules(adapter);
      expect(modules.size).toBe(5 * targets.length);
      for (const t of modules.values()) expect(maxAbs(adapterTensor(adapter, t.b))).toBeGreaterThan(0);
      await expect(rt.adapters.add(method, dir)).resolves.toBeDefined();
    }
  });

  it('--last-layers 2 trains layers 3 and 4 only; --targets all-linear is every linear but lm_head', async () => {
    const last = at('last-2');
    await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--steps',
      '1',
      '--rank',
      '2',
      '--last-layers',
      '2',
      '--targets',
      'q_proj,down_proj',
      '--out',
      last,
    ]);
    expect(modulesIn(last)).toEqual(modulesOf([3, 4], ['self_attn.q_proj', 'mlp.down_proj']));
    expect(readConfig(last).layers_to_transform).toEqual([3, 4]);

    const all = at('all-linear');
    await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--steps',
      '1',
      '--rank',
      '2',
      '--targets',
      'all-linear',
      '--out',
      all,
    ]);
    expect(readConfig(all).target_modules).toBe('all-linear');
    const names = modulesIn(all);
    expect(names).toEqual(modulesOf([0, 1, 2, 3, 4], KINDS));
    expect(names).not.toContain('lm_head');

    // PEFT refuses a string target_modules with layers_to_transform: all-linear is written out by name.
    const both = at('all-linear-last-2');
    await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--steps',
      '1',
      '--rank',
      '2',
      '--targets',
      'all-linear',
      '--last-layers',
      '2',
      '--out',
      both,
    ]);
    expect(modulesIn(both)).toEqual(modulesOf([3, 4], KINDS));
    await expect(rt.adapters.add('all-linear-last-2', both)).resolves.toBeDefined();
  });

  it('--adapter INIT_DIR starts from that folder (byte for byte with --lr 0) and refuses --rank', async () => {
    // A PEFT fixture with non-zero lora_B: a fresh init could not reproduce its bytes.
    const initDir = at('init');
    mkdirSync(initDir, { recursive: true });
    const files = makeLoraAdapter({ seed: 5, scale: 0.05 });
    for (const [name, bytes] of files) writeFileSync(path.join(initDir, name), bytes);
    const same = at('continued-lr0');
    await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--steps',
      '2',
      '--lr',
      '0',
      '--adapter',
      initDir,
      '--out',
      same,
    ]);
    expect(
      Buffer.compare(
        readFileSync(path.join(same, 'adapter_model.safetensors')),
        readFileSync(path.join(initDir, 'adapter_model.safetensors')),
      ),
    ).toBe(0);
    // IA3 trains too: the same holds for an IA3 folder.
    const ia3Dir = at('init-ia3');
    mkdirSync(ia3Dir, { recursive: true });
    for (const [name, bytes] of makeIa3Adapter({ seed: 2 })) writeFileSync(path.join(ia3Dir, name), bytes);
    const ia3Same = at('continued-ia3-lr0');
    await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'kto',
      '--steps',
      '1',
      '--lr',
      '0',
      '--adapter',
      ia3Dir,
      '--out',
      ia3Same,
    ]);
    expect(
      Buffer.compare(
        readFileSync(path.join(ia3Same, 'adapter_model.safetensors')),
        readFileSync(path.join(ia3Dir, 'adapter_model.safetensors')),
      ),
    ).toBe(0);
    // DoRA cannot be trained yet: refused naming the file and field, before any work.
    const doraDir = at('init-dora');
    mkdirSync(doraDir, { recursive: true });
    for (const [name, bytes] of makeLoraAdapter({ dora: true }))
      writeFileSync(path.join(doraDir, name), bytes);
    await expect(
      cli([
        'train',
        '--model',
        model,
        '--feedback',
        FEEDBACK,
        '--method',
        'sft',
        '--adapter',
        doraDir,
        '--out',
        at('x'),
      ]),
    ).rejects.toThrow(/init-dora\/adapter_config\.json: use_dora: training DoRA adapters is not supported/);

    const init = readConfig(initDir);
    expect(readConfig(same)).toMatchObject({
      r: init.r,
      lora_alpha: init.lora_alpha,
      target_modules: init.target_modules,
    });

    // Continuing the sft adapter: its first loss is well below a fresh adapter's on the same batch.
    const more = at('sft-more');
    const r = await train([
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--steps',
      '1',
      '--lr',
      '5e-3',
      '--adapter',
      sftDir,
      '--out',
      more,
    ]);
    expect(r.steps[0].loss).toBeLessThan(0.5 * sft.steps[0].loss);
    expect(readConfig(more)).toMatchObject({ r: 8, lora_alpha: 16 });

    await expect(
      cli([
        'train',
        '--model',
        model,
        '--feedback',
        FEEDBACK,
        '--method',
        'sft',
        '--adapter',
        initDir,
        '--rank',
        '4',
        '--out',
        at('x'),
      ]),
    ).rejects.toThrow(/--rank cannot be used with --adapter/);
    await expect(
      cli([
        'train',
        '--model',
        model,
        '--feedback',
        FEEDBACK,
        '--method',
        'sft',
        '--adapter',
        initDir,
        '--targets',
        'all-linear',
        '--alpha',
        '3',
        '--out',
        at('x'),
      ]),
    ).rejects.toThrow(/--alpha, --targets cannot be used with --adapter/);

    // An init adapter for another base (7 layers) is refused against this one, naming the module.
    const foreign = at('foreign');
    mkdirSync(foreign, { recursive: true });
    for (const [name, bytes] of serializePeftAdapter(
      initLora({ ...config, num_hidden_layers: 7 }, { rank: 2 }),
    ))
      writeFileSync(path.join(foreign, name), bytes);
    const refused = await cli([
      'train',
      '--model',
      model,
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--adapter',
      foreign,
      '--out',
      at('x'),
    ]).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(IncompatibleAdapterError);
    expect((refused as Error).message).toMatch(/model\.layers\.5\.self_attn\.q_proj/);
    expect(existsSync(at('x'))).toBe(false);
  });

  it('a malformed line fails naming file:line and field; nothing is written, an existing --out stays whole', async () => {
    const bad = at('bad.jsonl');
    const lines = jsonl(feedback).split('\n');
    lines.splice(2, 0, JSON.stringify({ prompt, completion: lily[0], ratting: 1 }));
    writeFileSync(bad, lines.join('\n'));
    const out = at('never');
    const error = await cli([
      'train',
      '--model',
      model,
      '--feedback',
      bad,
      '--method',
      'sft',
      '--out',
      out,
    ]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as InvalidInputError).file).toBe(`${bad}:3`);
    expect((error as InvalidInputError).field).toBe('ratting');
    expect((error as Error).message).toMatch(
      /bad\.jsonl:3: ratting: unknown key \(did you mean "rating"\?\)/,
    );
    expect(existsSync(out)).toBe(false);

    const notJson = at('not-json.jsonl');
    writeFileSync(notJson, `${JSON.stringify(feedback[0])}\n{"prompt": "x", "completion": \n`);
    await expect(
      cli(['train', '--model', model, '--feedback', notJson, '--method', 'sft', '--out', out]),
    ).rejects.toThrow(/not-json\.jsonl:2: not JSON/);

    // An existing output folder survives failures before and after the model loads, byte for byte.
    const keep = at('keep');
    mkdirSync(keep);
    const before = new Map(readdirSync(sftDir).map((f) => [f, readFileSync(path.join(sftDir, f))]));
    for (const [f, bytes] of before) writeFileSync(path.join(keep, f), bytes);
    const upOnly = at('up-only.jsonl');
    writeFileSync(upOnly, jsonl([{ prompt, completion: lily[0], rating: 1 }]));
    await expect(
      cli(['train', '--model', model, '--feedback', bad, '--method', 'sft', '--out', keep]),
    ).rejects.toThrow(/bad\.jsonl:3/);
    await expect(
      cli(['train', '--model', model, '--feedback', upOnly, '--method', 'dpo', '--out', keep]),
    ).rejects.toThrow(/up-only\.jsonl: none of its 1 feedback events is an example for --method dpo/);
    expect(readdirSync(keep).sort()).toEqual([...before.keys()].sort());
    for (const [f, bytes] of before)
      expect(Buffer.compare(readFileSync(path.join(keep, f)), bytes), f).toBe(0);
    // and no temporary sibling is left behind
    expect(readdirSync(work).filter((f) => /\.(partial|old)-\d+$/.test(f))).toEqual([]);
  });

  it('usage errors name the flag; an empty feedback file or one without examples names the file', async () => {
    const base = ['train', '--model', model, '--feedback', FEEDBACK, '--out', at('x')];
    const cases: [string[], RegExp][] = [
      [['train', '--model', model, '--feedback', FEEDBACK, '--out', at('x')], /--method is required/],
      [['train', '--model', model, '--method', 'sft', '--out', at('x')], /--feedback is required/],
      [['train', '--model', model, '--feedback', FEEDBACK, '--method', 'sft'], /--out is required/],
      [[...base, '--method', 'ppo'], /--method must be sft, kto or dpo, got "ppo"/],
      [[...base, '--method', 'sft', '--steps', 'abc'], /--steps expects a number, got "abc"/],
      [[...base, '--method', 'sft', '--steps', '1.5'], /--steps expects an integer >= 1, got "1\.5"/],
      [[...base, '--method', 'sft', '--lr', 'fast'], /--lr expects a number, got "fast"/],
      [[...base, '--method', 'sft', '--lr=-1'], /--lr expects a number >= 0/],
      [[...base, '--method', 'sft', '--rank', '0'], /--rank expects an integer >= 1, got "0"/],
      [[...base, '--method', 'sft', '--beta', ''], /--beta expects a number, got ""/],
      [[...base, '--method', 'sft', '--targets', 'q_proj,,v_proj'], /--targets expects module names/],
      [[...base, '--method', 'sft', '--last-layers', '6'], /--last-layers must be at most 5/],
      [[...base, '--method', 'sft', '--targets', 'foo_proj'], /--targets: \["foo_proj"\] selects no module/],
      [
        [...base, '--method', 'sft', '--adapter', at('a'), '--adapter', at('b')],
        /one --adapter INIT_DIR, got 2/,
      ],
    ];
    for (const [args, message] of cases) await expect(cli(args), args.join(' ')).rejects.toThrow(message);
    expect(existsSync(at('x'))).toBe(false);

    const empty = at('empty.jsonl');
    writeFileSync(empty, '\n  \n');
    await expect(
      cli(['train', '--model', model, '--feedback', empty, '--method', 'sft', '--out', at('x')]),
    ).rejects.toThrow(/empty\.jsonl: holds no feedback \(the file is empty\)/);
    const downOnly = at('down-only.jsonl');
    writeFileSync(downOnly, jsonl([{ prompt, completion: lily[0], rating: -1 }]));
    const none = await cli([
      'train',
      '--model',
      model,
      '--feedback',
      downOnly,
      '--method',
      'sft',
      '--out',
      at('x'),
    ]).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(InvalidInputError);
    expect((none as InvalidInputError).file).toBe(downOnly);
    expect((none as Error).message).toMatch(/--method sft: sft learns from demonstrations/);
    await expect(
      cli(['train', '--model', model, '--feedback', at('nope.jsonl'), '--method', 'sft', '--out', at('x')]),
    ).rejects.toThrow(/nope\.jsonl: cannot be read/);
    expect(existsSync(at('x'))).toBe(false);

    const help = await cli(['--help']);
    expect(help).toMatch(/edge-adapters train --model DIR --feedback FILE\.jsonl --method sft\|kto\|dpo/);
  });

  it('as a process: a usage error exits 2 with the usage, a bad feedback line exits 1 naming it', async () => {
    type Failure = { code: number; stderr: string };
    const usage = (await exec(process.execPath, [
      BIN,
      'train',
      '--model',
      model,
      '--feedback',
      FEEDBACK,
      '--method',
      'sft',
      '--adapter',
      sftDir,
      '--rank',
      '4',
      '--out',
      at('x'),
    ]).catch((e: Failure) => e)) as Failure;
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/edge-adapters: --rank cannot be used with --adapter/);
    expect(usage.stderr).toMatch(/usage:[\s\S]*edge-adapters train/);
    const bad = (await exec(process.execPath, [
      BIN,
      'train',
      '--model',
      model,
      '--feedback',
      at('bad.jsonl'),
      '--method',
      'kto',
      '--out',
      at('x'),
    ]).catch((e: Failure) => e)) as Failure;
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/InvalidInputError: .*bad\.jsonl:3: ratting: unknown key/);
    expect(existsSync(at('x'))).toBe(false);
  });
});
