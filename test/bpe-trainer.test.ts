import { readFileSync } from 'node:fs';
import { Tokenizer as RawHfTokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import {
  BYTE_TO_UNICODE,
  encodeWithMerges,
  trainBpe,
  type BpeTrainOptions,
} from '../src/formats/bpe-trainer.js';
import { HfTokenizer } from '../src/formats/hf-tokenizer.js';
import { fixture } from './fixtures.js';

const corpus = readFileSync(fixture('corpora/tinystories-lowercase-4MB.txt'), 'utf8');
const TRAIN = corpus.slice(0, 200_000);
const HELD_OUT = corpus.slice(3_000_000, 3_100_000);
const ODD = [
  '  double  spaces\n\nnew lines',
  'café ☃ 😀',
  'digits 0123456789, 3.14159 and 2024-01-01',
  'punctuation!?... "quoted" (paren) — dash; semi:colon \'s \'ll',
  '\ttabs\t and \r\n crlf  \n',
  ' leading and trailing ',
  '',
  'Ünïcödé 中文 日本語 한국어 🙂🙃 e\u0301 \u00a0nbsp',
];
const utf8Length = (s: string): number => new TextEncoder().encode(s).length;

const trained = trainBpe(TRAIN, { vocabSize: 1024 });
const json = trained.tokenizerJson;
const hf = HfTokenizer.fromJson(json, trained.tokenizerConfig);

/** BPE training with every pair recounted from scratch before each merge: the oracle for the incremental counts. */
function naiveMerges(text: string, vocabSize: number, minFrequency: number): string[] {
  const pattern = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  const counts = new Map<string, number>();
  for (const piece of text.match(pattern) ?? []) counts.set(piece, (counts.get(piece) ?? 0) + 1);
  const words = [...counts].map(([piece, n]) => ({
    symbols: Array.from(new TextEncoder().encode(piece), (b) => BYTE_TO_UNICODE[b]),
    n,
  }));
  // ids: 3 specials, the bytes in code-point order, then merged tokens in order.
  const ids = new Map<string, number>();
  [...BYTE_TO_UNICODE]
    .sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!)
    .forEach((c, i) => ids.set(c, 3 + i));
  const merges: string[] = [];
  while (ids.size + 3 < vocabSize) {
    const pairs = new Map<string, { a: string; b: string; n: number }>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.symbols.length; i++) {
        const k = `${w.symbols[i]} ${w.symbols[i + 1]}`;
        const p = pairs.get(k) ?? { a: w.symbols[i], b: w.symbols[i + 1], n: 0 };
        p.n += w.n;
        pairs.set(k, p);
      }
    }
    let best: { a: string; b: string; n: number } | undefined;
    for (const p of pairs.values()) {
      const better =
        best === undefined ||
        p.n > best.n ||
        (p.n === best.n &&
          (ids.get(p.a)! < ids.get(best.a)! || (p.a === best.a && ids.get(p.b)! < ids.get(best.b)!)));
      if (better) best = p;
    }
    if (best === undefined || best.n < minFrequency) break;
    const { a, b } = best;
    merges.push(`${a} ${b}`);
    if (!ids.has(a + b)) ids.set(a + b, ids.size + 3);
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.symbols.length; i++) {
        if (w.symbols[i] === a && w.symbols[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w.symbols[i]);
      }
      w.symbols = out;
    }
  }
  return merges;
}

function invalidField(options: BpeTrainOptions): string | undefined {
  try {
    trainBpe('some text', options);
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidInputError);
    return (e as InvalidInputError).field;
  }
  throw new Error('expected trainBpe to throw');
}

describe('trainBpe', () => {
  it('builds a vocabulary of exactly vocabSize contiguous ids: specials, the 256 bytes, the merges', () => {
    const vocab = json.model.vocab;
    expect(Object.keys(vocab)).toHaveLength(1024);
    expect(Object.values(vocab).sort((a, b) => a - b)).toEqual([...Array(1024).keys()]);
    expect([vocab['<unk>'], vocab['<s>'], vocab['</s>']]).toEqual([0, 1, 2]);
    expect(json.added_tokens.map((t) => [t.id, t.content, t.special, t.normalized])).toEqual([
      [0, '<unk>', true, false],
      [1, '<s>', true, false],
      [2, '</s>', true, false],
    ]);
    // Byte symbols in code-point order, so that GPT-2's own ids reappear shifted by the 3 specials:
    // GPT-2's vocab.json has "!" 0, "Ā" (byte 0) 188, "ĉ" (tab) 197, "Ġ" (space) 220.
    expect([vocab['!'], vocab['Ā'], vocab['ĉ'], vocab['Ġ']]).toEqual([3, 191, 200, 223]);
    for (const c of BYTE_TO_UNICODE) expect(vocab[c]).toBeLessThan(259);
    expect(trained.merges).toBe(1024 - 259);
    expect(json.model.merges).toHaveLength(trained.merges);
    // Each merge's result is the next id.
    json.model.merges.slice(0, 50).forEach((m, i) => expect(vocab[m.replace(' ', '')]).toBe(259 + i));
  });

  it('writes the tokenizer.json fields of a Hugging Face ByteLevel BPE tokenizer', () => {
    expect(json.model).toMatchObject({
      type: 'BPE',
      unk_token: null,
      byte_fallback: false,
      ignore_merges: false,
    });
    expect(json.pre_tokenizer).toEqual({
      type: 'ByteLevel',
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    });
    expect(json.decoder).toMatchObject({ type: 'ByteLevel' });
    expect(trained.tokenizerConfig).toMatchObject({
      tokenizer_class: 'PreTrainedTokenizerFast',
      bos_token: '<s>',
      eos_token: '</s>',
      unk_token: '<unk>',
      add_bos_token: true,
      model_max_length: 512,
    });
    // The post-processor puts bos before a sequence, as add_bos_token says.
    const raw = new RawHfTokenizer(json, { clean_up_tokenization_spaces: false });
    const ids = raw.encode('once upon a time').ids;
    expect(ids[0]).toBe(1);
    expect(ids.slice(1)).toEqual(encodeWithMerges('once upon a time', trained));
  });

  it('merges exactly as a trainer that recounts every pair before each merge', () => {
    const text = corpus.slice(500_000, 520_000);
    const small = trainBpe(text, { vocabSize: 420 });
    const expected = naiveMerges(text, 420, 2);
    expect(expected).toHaveLength(420 - 259);
    expect(small.tokenizerJson.model.merges).toEqual(expected);
  });

  it("reproduces Hugging Face BpeTrainer's own unit test (ties go to the smaller pair of ids)", () => {
    // tokenizers/src/models/bpe/trainer.rs test_train: min_frequency 2 gives 're', then 'are' and 'is'
    // (both 2: 'a' < 'i'), and nothing more.
    const words = { roses: 1, are: 2, red: 1, voilets: 1, blue: 1, BERT: 1, is: 2, big: 1, and: 1, so: 1 };
    const docs = Object.entries(words).flatMap(([w, n]) => Array<string>(n).fill(w));
    const t = trainBpe(docs, { vocabSize: 1000, minFrequency: 2 });
    expect(t.tokenizerJson.model.merges).toEqual(['r e', 'a re', 'i s']);
    expect(Object.keys(t.tokenizerJson.model.vocab)).toHaveLength(262);
  });

  it('encodes held-out text with @huggingface/tokenizers exactly as the merges list does, and decodes it back', () => {
    const ids = hf.encode(HELD_OUT);
    expect(ids).toEqual(encodeWithMerges(HELD_OUT, trained));
    expect(hf.decode(ids)).toBe(HELD_OUT);
    for (const text of ODD) {
      const oddIds = hf.encode(text);
      expect(oddIds).toEqual(encodeWithMerges(text, trained));
      expect(oddIds).not.toContain(0); // byte-level: never <unk>
      expect(hf.decode(oddIds)).toBe(text);
    }
  });

  it('resolves bos and eos to 1 and 2 through HfTokenizer', () => {
    expect([hf.vocabSize, hf.bosId, hf.eosId]).toEqual([1024, 1, 2]);
    const ids = hf.encode('the end.', { bos: true, eos: true });
    expect(ids[0]).toBe(1);
    expect(ids[ids.length - 1]).toBe(2);
    expect(hf.decode(ids)).toBe('the end.');
  });

  it('compresses held-out text to more than 2.5 bytes per token at vocab 1024', () => {
    // Measured: 3.05 bytes per token on this 100 KB held-out slice (1 byte per token before merges).
    const bytesPerToken = utf8Length(HELD_OUT) / hf.encode(HELD_OUT).length;
    expect(bytesPerToken).toBeGreaterThan(2.5);
    expect(bytesPerToken).toBeLessThan(4);
  });

  it('is deterministic: the same input, or the same documents in another order, give identical files', () => {
    const again = trainBpe(TRAIN, { vocabSize: 1024 });
    expect(JSON.stringify(again.tokenizerJson)).toBe(JSON.stringify(json));
    expect(JSON.stringify(again.tokenizerConfig)).toBe(JSON.stringify(trained.tokenizerConfig));
    const docs = corpus.slice(0, 50_000).split('\n\n');
    const forward = trainBpe(docs, { vocabSize: 400 });
    const backward = trainBpe([...docs].reverse(), { vocabSize: 400 });
    expect(JSON.stringify(backward.tokenizerJson)).toBe(JSON.stringify(forward.tokenizerJson));
  });

  it('never learns from special tokens in the text, and encodes them as their ids', () => {
    const docs = Array<string>(40).fill('</s><s>the cat sat.</s>');
    const t = trainBpe(docs, { vocabSize: 300, minFrequency: 2 });
    expect(t.tokenizerJson.model.merges.some((m) => m.includes('<') || m.includes('>'))).toBe(false);
    const tok = HfTokenizer.fromJson(t.tokenizerJson, t.tokenizerConfig);
    const text = 'a cat<s>sat</s> ';
    const ids = tok.encode(text);
    expect(ids).toEqual(encodeWithMerges(text, t));
    expect(ids.filter((id) => id === 1 || id === 2)).toEqual([1, 2]);
  });

  it('progress counts the merges up to the total', () => {
    const seen: [number, number][] = [];
    trainBpe(corpus.slice(0, 20_000), { vocabSize: 300, onProgress: (m, total) => seen.push([m, total]) });
    expect(seen).toHaveLength(41);
    expect(seen[seen.length - 1]).toEqual([41, 41]);
  });

  it('rejects invalid options with an InvalidInputError naming the field', () => {
    expect(invalidField({ vocabSize: 258 })).toBe('vocabSize');
    expect(invalidField({ vocabSize: 1000.5 })).toBe('vocabSize');
    expect(invalidField({ vocabSize: 259, specialTokens: ['<unk>', '<s>', '</s>', '<pad>'] })).toBe(
      'vocabSize',
    );
    expect(invalidField({ vocabSize: 1024, specialTokens: ['<unk>', '<s>'] })).toBe('specialTokens');
    expect(invalidField({ vocabSize: 1024, specialTokens: ['<unk>', '<s>', '<s>'] })).toBe(
      'specialTokens[2]',
    );
    expect(invalidField({ vocabSize: 1024, specialTokens: ['<unk>', 'a', '</s>'] })).toBe('specialTokens[1]');
    expect(invalidField({ vocabSize: 1024, minFrequency: 0 })).toBe('minFrequency');
    expect(() => trainBpe('some text', { vocabSize: 258 })).toThrow(/vocabSize: must be an integer >= 259/);
    // The smallest valid vocabulary: bytes and specials, no merges.
    const bare = trainBpe('some text', { vocabSize: 259 });
    expect([bare.merges, Object.keys(bare.tokenizerJson.model.vocab).length]).toEqual([0, 259]);
  });
});
