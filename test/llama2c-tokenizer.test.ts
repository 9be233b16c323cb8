import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { InvalidInputError, ModelFormatError } from '../src/errors.js';
import { Llama2cTokenizer } from '../src/formats/llama2c-tokenizer.js';
import { fixture } from './fixtures.js';

const tok512 = (): Uint8Array => new Uint8Array(readFileSync(fixture('llama2c/tok512.bin')));

/** A tokenizer.bin in llama2.c's layout: <unk>, BOS, EOS, the 256 byte pieces, then `extra`. */
function syntheticTokenizerBin(extra: [piece: string, score: number][]): {
  bytes: Uint8Array;
  vocabSize: number;
} {
  const pieces: [string, number][] = [
    ['<unk>', 0],
    ['\n<s>\n', 0],
    ['\n</s>\n', 0],
  ];
  for (let b = 0; b < 256; b++) pieces.push([`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 0]);
  pieces.push(...extra);
  const enc = new TextEncoder();
  const parts = pieces.map(([p]) => enc.encode(p));
  const bytes = new Uint8Array(4 + parts.reduce((n, p) => n + 8 + p.length, 0));
  const view = new DataView(bytes.buffer);
  view.setInt32(0, Math.max(...parts.map((p) => p.length)), true);
  let off = 4;
  parts.forEach((p, i) => {
    view.setFloat32(off, pieces[i][1], true);
    view.setInt32(off + 4, p.length, true);
    bytes.set(p, off + 8);
    off += 8 + p.length;
  });
  return { bytes, vocabSize: pieces.length };
}

describe('Llama2cTokenizer on tok512', () => {
  const tok = Llama2cTokenizer.parse(tok512(), 512, 'tok512.bin');

  it('encodes the golden prompt like run.c and decodes it back', () => {
    expect(tok.vocabSize).toBe(512);
    expect(tok.encode('Once upon a time', { bos: true })).toEqual([1, 403, 407, 261, 378]);
    expect(tok.encode('Once upon a time')).toEqual([403, 407, 261, 378]);
    expect(tok.encode('Once upon a time', { bos: true, eos: true }).at(-1)).toBe(2);
    expect(tok.decode([1, 403, 407, 261, 378])).toBe('Once upon a time');
    expect(tok.encode('')).toEqual([]);
  });

  it("prints a piece's leading space unless it follows BOS; control tokens print nothing", () => {
    expect(tok.decode([403, 407])).toBe(' Once upon');
    expect(tok.decode([1, 403, 2, 1, 407])).toBe('Onceupon');
    expect(tok.decode([])).toBe('');
  });

  it('falls back to bytes (+3) for codepoints not in the vocabulary and decodes them, streaming-safe', () => {
    // '☃' = E2 98 83 is not a piece: ids 0xE2+3, 0x98+3, 0x83+3 after the dummy-prefix space (410).
    const ids = tok.encode('☃', { bos: true });
    expect(ids).toEqual([1, 410, 0xe2 + 3, 0x98 + 3, 0x83 + 3]);
    expect(tok.decode(ids)).toBe('☃');
    // An unfinished UTF-8 sequence is held back, so each prefix decodes to a prefix.
    const text = 'A snowman ☃ and 𝄞 café.';
    const all = tok.encode(text, { bos: true });
    expect(tok.decode(all)).toBe(text);
    for (let n = 0; n <= all.length; n++) expect(text.startsWith(tok.decode(all.slice(0, n)))).toBe(true);
  });

  it('rejects token ids outside the vocabulary', () => {
    expect(() => tok.decode([1, 512])).toThrow(InvalidInputError);
    expect(() => tok.decode([-1])).toThrow(/tokens: tokens\[0\]: token id -1/);
  });

  it('rejects truncated files and a vocab size that does not match', () => {
    const bytes = tok512();
    expect(() => Llama2cTokenizer.parse(bytes.subarray(0, 2), 512, 'tok512.bin')).toThrow(
      /tok512\.bin: max_token_length: truncated/,
    );
    expect(() => Llama2cTokenizer.parse(bytes.subarray(0, bytes.length - 3), 512, 'tok512.bin')).toThrow(
      ModelFormatError,
    );
    expect(() => Llama2cTokenizer.parse(bytes, 511, 'tok512.bin')).toThrow(
      /tok512\.bin: .*left after 511 tokens/,
    );
    expect(() => Llama2cTokenizer.parse(bytes, 513, 'tok512.bin')).toThrow(
      /tok512\.bin: token 512: file ends after 512 of 513 tokens/,
    );
  });
});

describe('Llama2cTokenizer merge rule (run.c)', () => {
  it('merges the best-scoring pair first', () => {
    // ids: ' ' 259, 'a' 260, 'b' 261, 'c' 262, 'ab' 263, 'bc' 264
    const make = (ab: number, bc: number): Llama2cTokenizer => {
      const { bytes, vocabSize } = syntheticTokenizerBin([
        [' ', -10],
        ['a', -11],
        ['b', -12],
        ['c', -13],
        ['ab', ab],
        ['bc', bc],
      ]);
      return Llama2cTokenizer.parse(bytes, vocabSize);
    };
    expect(make(-1, -2).encode('abc')).toEqual([259, 263, 262]);
    expect(make(-2, -1).encode('abc')).toEqual([259, 260, 264]);
  });

  it('lets the leftmost pair win a tie', () => {
    // ids: ' ' 259, 'a' 260, 'aa' 261: "aaa" -> ' ', 'aa', 'a'
    const { bytes, vocabSize } = syntheticTokenizerBin([
      [' ', -10],
      ['a', -11],
      ['aa', -1],
    ]);
    const tok = Llama2cTokenizer.parse(bytes, vocabSize);
    expect(tok.encode('aaa')).toEqual([259, 261, 260]);
    expect(tok.decode([1, 259, 261, 260])).toBe('aaa');
  });
});
