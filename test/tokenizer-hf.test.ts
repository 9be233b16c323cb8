import { readFileSync } from 'node:fs';
import { Tokenizer as RawHfTokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { InvalidInputError, ModelFormatError } from '../src/errors.js';
import { HfTokenizer } from '../src/formats/hf-tokenizer.js';
import {
  Llama2cTokenizer,
  llama2cTokenizerToHfConfig,
  llama2cTokenizerToHfJson,
} from '../src/formats/llama2c-tokenizer.js';
import { fixture } from './fixtures.js';

const tok = Llama2cTokenizer.parse(
  new Uint8Array(readFileSync(fixture('llama2c/tok512.bin'))),
  512,
  'tok512.bin',
);
const json = llama2cTokenizerToHfJson(tok);
const hf = HfTokenizer.fromJson(json, llama2cTokenizerToHfConfig(tok));

describe('llama2cTokenizerToHfJson + HfTokenizer', () => {
  it('writes sentencepiece names (▁ for space, <s>) and finds BOS/EOS with or without tokenizer_config.json', () => {
    const raw = new RawHfTokenizer(json, { clean_up_tokenization_spaces: false });
    expect(raw.id_to_token(403)).toBe('▁Once');
    expect(raw.id_to_token(1)).toBe('<s>');
    expect(raw.id_to_token(3)).toBe('<0x00>');
    // The TemplateProcessing post-processor adds BOS the way HF's Llama tokenizer does.
    expect(raw.encode('Once upon a time').ids).toEqual([1, 403, 407, 261, 378]);
    expect([hf.vocabSize, hf.bosId, hf.eosId]).toEqual([512, 1, 2]);
    const bare = HfTokenizer.fromJson(json);
    expect([bare.bosId, bare.eosId]).toEqual([1, 2]);
  });

  it('encodes and decodes every sampled TinyStories line exactly like run.c', () => {
    const lines = readFileSync(fixture('corpora/tinystories-197KB.txt'), 'utf8')
      .split('\n')
      .filter((line) => line.length > 0)
      .filter((_, i) => i % 3 === 0);
    expect(lines.length).toBeGreaterThan(300);
    for (const line of lines) {
      const ids = tok.encode(line, { bos: true });
      expect(hf.encode(line, { bos: true })).toEqual(ids);
      expect(tok.decode(ids)).toBe(line);
      expect(hf.decode(ids)).toBe(line);
    }
  });

  it('agrees on whitespace, byte fallback, the empty string and EOS', () => {
    for (const text of ['', ' ', '  two  spaces ', 'tab\tand\nnewline', 'café ☃ 𝄞 “quoted”', 'â€™']) {
      const ids = tok.encode(text, { bos: true, eos: true });
      expect(hf.encode(text, { bos: true, eos: true })).toEqual(ids);
      expect(hf.decode(ids)).toBe(text);
    }
  });

  it('holds back an unfinished UTF-8 sequence, so each prefix decodes to a prefix', () => {
    const text = 'A snowman ☃ and a clef 𝄞.';
    const ids = tok.encode(text, { bos: true });
    expect(ids).toContain(0xe2 + 3); // byte fallback is exercised
    for (let n = 0; n <= ids.length; n++) expect(text.startsWith(hf.decode(ids.slice(0, n)))).toBe(true);
  });

  it('reports bad input with typed errors', () => {
    expect(() => HfTokenizer.fromJson({}, undefined, 'my/tokenizer.json')).toThrow(
      /my\/tokenizer\.json: model: /,
    );
    expect(() => HfTokenizer.fromJson(json, { bos_token: '<nope>' })).toThrow(ModelFormatError);
    expect(() => HfTokenizer.fromJson(json, { bos_token: '<nope>' })).toThrow(
      /tokenizer_config\.json: bos_token/,
    );
    expect(() => hf.decode([5, 512])).toThrow(InvalidInputError);
  });
});
