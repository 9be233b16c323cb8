/**
 * X-LoRA (src/mixtures/xlora.ts): PEFT's XLORA files (the config and the classifier's weights) over
 * three LoRA experts on stories260K, run with a scaling pass before every call, against the float64
 * oracle (src/reference/xlora.ts) at every position of a prompt and token by token with the caches,
 * for a depth-1 classifier and for a deeper, layer-wise, top-k one with a non-zero scaling pass.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdapterFormatError, InvalidInputError } from '../src/errors.js';
import { checkpointToModelFolder } from '../src/convert.js';
import { memorySource } from '../src/formats/files.js';
import { parseLlama2cCheckpoint } from '../src/formats/llama2c-checkpoint.js';
import { parseXLora } from '../src/mixtures/xlora.js';
import { argmax } from '../src/reference/llama.js';
import { referenceLogitsWithAdapters } from '../src/reference/peft.js';
import { XLoraReferenceSession } from '../src/reference/xlora.js';
import { Runtime } from '../src/runtime.js';
import { fixture } from './fixtures.js';
import { maxAbsDiff } from './helpers/numeric.js';
import { loadAdapter, makeLoraAdapter } from './helpers/peft-fixtures.js';
import { xloraFiles } from './helpers/xlora-fixtures.js';

const bytes = (p: string) => new Uint8Array(readFileSync(p));
const ckpt = parseLlama2cCheckpoint(bytes(fixture('llama2c/stories260K.bin')), 'stories260K.bin');
const folder = checkpointToModelFolder(ckpt, {
  tokenizerFiles: new Map([['tokenizer.bin', bytes(fixture('llama2c/tok512.bin'))]]),
});
const experts = [
  loadAdapter(makeLoraAdapter({ seed: 11, r: 4, scale: 0.1 }), 'e0'),
  loadAdapter(makeLoraAdapter({ seed: 12, r: 8, alpha: 16, scale: 0.05 }), 'e1'),
  loadAdapter(makeLoraAdapter({ seed: 13, r: 2, targets: ['q_proj', 'v_proj', 'o_proj'], scale: 0.1 }), 'e2'),
];
const TOKENS = [1, 403, 407, 261, 378, 316, 291, 400, 46, 29, 90, 300];

const maxDiffRows = (a: ArrayLike<number>[], b: ArrayLike<number>[]) =>
  Math.max(...a.map((r, i) => maxAbsDiff(r, b[i])));

describe('X-LoRA against the float64 oracle', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await Runtime.create({ model: memorySource(folder, 'stories260K'), slots: { router: 'given' } });
    for (const e of experts) await rt.adapters.add(e.label, e);
  });
  afterAll(() => rt.release());
  const ids = experts.map((e) => e.label);

  const cases: [string, Parameters<typeof xloraFiles>[0]][] = [
    ['depth 1, the same scalings for every module (PEFT defaults)', { depth: 1 }],
    [
      'depth 3 with ReLU, layer-wise, top 2, temperature 0.7, scaling pass 0.5, global weight 1.3',
      {
        depth: 3,
        layerwise: true,
        relu: true,
        extra: {
          top_k_lora: 2,
          softmax_temperature: 0.7,
          scaling_pass_value: 0.5,
          global_scaling_weight: 1.3,
        },
      },
    ],
  ];
  for (const [name, o] of cases) {
    it(`${name}: every position within 1e-4, then greedy decoding token for token`, async () => {
      const { oracle, ...files } = xloraFiles(o);
      await rt.adapters.activateXLora(files, ids); // read by the project's parser
      const want = new XLoraReferenceSession(ckpt, oracle, experts).forward(TOKENS); // the fixture's own numbers
      expect(maxDiffRows(await rt.logits(TOKENS), want)).toBeLessThan(1e-4);
      // The scalings matter: an even blend is far away.
      const even = referenceLogitsWithAdapters(
        ckpt,
        experts.map((adapter) => ({ adapter, weight: 1 / 3 })),
        TOKENS,
      );
      expect(maxDiffRows(want, even)).toBeGreaterThan(1e-2);
      const out = await rt.complete(TOKENS.slice(0, 5), { maxTokens: 10, temperature: 0, eosTokenIds: [] });
      const ref = new XLoraReferenceSession(ckpt, oracle, experts);
      let last = ref.forward(TOKENS.slice(0, 5)).at(-1)!;
      const greedy: number[] = [];
      for (let i = 0; i < 10; i++) {
        greedy.push(argmax(last));
        last = ref.forward([greedy[i]])[0];
      }
      expect(out.tokens).toEqual(greedy);
    });
  }

  it('removing an expert deactivates X-LoRA (its classifier needs them all); no blend is left behind', async () => {
    await rt.adapters.activateXLora(parseXLora(xloraFiles({ depth: 1 })), ids);
    expect(rt.adapters.combinationActive()).toBe(true);
    await rt.adapters.remove('e2');
    expect(rt.adapters.active()).toEqual([]);
    expect(rt.adapters.combinationActive()).toBe(false);
    expect(maxDiffRows(await rt.logits(TOKENS), referenceLogitsWithAdapters(ckpt, [], TOKENS))).toBeLessThan(
      1e-4,
    );
    await rt.adapters.add('e2', experts[2]);
  });

  it('refuses what it cannot run, naming the file and field', async () => {
    const topk = xloraFiles({ depth: 1, extra: { enable_softmax_topk: true, top_k_lora: 2 } });
    expect(() => parseXLora(topk, 'x')).toThrow(AdapterFormatError);
    expect(() => parseXLora(topk, 'x')).toThrow(/x\/adapter_config\.json.*enable_softmax_topk/);
    const shallow = xloraFiles({ depth: 2 });
    expect(() => parseXLora({ ...shallow, config: { ...shallow.config, xlora_depth: 1 } }, 'x')).toThrow(
      /xlora_depth/,
    );
    const wrong = xloraFiles({ depth: 1, layerwise: true });
    const fewer = structuredClone(wrong.config) as Record<string, unknown>;
    fewer.hidden_size = 32;
    expect(() => parseXLora({ config: fewer, weights: wrong.weights }, 'x')).toThrow(/hidden_size is 32/);
    expect(() => parseXLora({ config: new TextEncoder().encode('[1'), weights: wrong.weights }, 'x')).toThrow(
      /x\/adapter_config\.json.*not valid UTF-8 JSON/,
    );
    // A layer-wise classifier sized for 35 modules over experts that adapt only 15 of them.
    await rt.adapters.add('qvo', experts[2]);
    await expect(rt.adapters.activateXLora(parseXLora(wrong), ['qvo', 'qvo', 'qvo'])).rejects.toThrow(
      /last\.weight.*105 outputs.*need 45/,
    );
    await rt.adapters.remove('qvo');
    await expect(
      rt.adapters.activateXLora(parseXLora(xloraFiles({ depth: 1 })), ['e0', 'e1']),
    ).rejects.toThrow(InvalidInputError);
  });
});
