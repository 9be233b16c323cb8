/**
 * A Hugging Face tokenizer.json (+ tokenizer_config.json), run by the maintained
 * @huggingface/tokenizers package, behind the project's Tokenizer interface.
 */
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { InvalidInputError, ModelFormatError } from '../errors.js';
import type { EncodeOptions, Tokenizer } from './tokenizer.js';

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const BOS_NAMES = ['<s>', '<|begin_of_text|>', '<bos>', '<|startoftext|>'];
const EOS_NAMES = ['</s>', '<|end_of_text|>', '<eos>', '<|endoftext|>'];

type Json = Record<string, unknown>;

function isObject(x: unknown): x is Json {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

export class HfTokenizer implements Tokenizer {
  private constructor(
    private readonly impl: HfTokenizerImpl,
    readonly vocabSize: number,
    readonly bosId: number | undefined,
    readonly eosId: number | undefined,
    readonly file: string,
  ) {}

  static fromJson(tokenizerJson: object, tokenizerConfig?: object, file = 'tokenizer.json'): HfTokenizer {
    if (!isObject(tokenizerJson) || !isObject(tokenizerJson.model)) {
      throw new ModelFormatError(file, 'model', 'missing or not an object');
    }
    const config: Json = { ...(tokenizerConfig ?? {}) };
    // Decoding returns the text as is unless tokenizer_config.json asks for the clean-up.
    config.clean_up_tokenization_spaces ??= false;
    let impl: HfTokenizerImpl;
    try {
      impl = new HfTokenizerImpl(tokenizerJson, config);
    } catch (e) {
      throw new ModelFormatError(file, undefined, `cannot build the tokenizer: ${(e as Error).message}`);
    }
    let vocabSize = 0;
    for (const id of impl.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);
    const bosId = specialId(impl, config, 'bos_token', leadingTemplateToken(tokenizerJson), BOS_NAMES);
    const eosId = specialId(impl, config, 'eos_token', undefined, EOS_NAMES);
    return new HfTokenizer(impl, vocabSize, bosId, eosId, file);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids = this.impl.encode(text, { add_special_tokens: false }).ids;
    if (opts.bos === true) ids.unshift(this.required(this.bosId, 'bos_token'));
    if (opts.eos === true) ids.push(this.required(this.eosId, 'eos_token'));
    return ids;
  }

  /**
   * The decoded text without special tokens. A trailing unfinished UTF-8 sequence of byte-fallback
   * tokens is held back, so the decode of a prefix is a prefix of the decode of the whole.
   */
  decode(tokens: readonly number[]): string {
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw new InvalidInputError(
          'tokens',
          `tokens[${i}]`,
          `token id ${t} is outside the vocabulary [0, ${this.vocabSize})`,
        );
      }
    });
    const ids = tokens.slice(0, tokens.length - this.unfinishedByteTail(tokens));
    if (ids.length === 0) return '';
    return this.impl.decode(ids, { skip_special_tokens: true });
  }

  /** How many trailing byte-fallback tokens form an unfinished UTF-8 sequence. */
  private unfinishedByteTail(tokens: readonly number[]): number {
    const bytes: number[] = [];
    for (let i = tokens.length - 1; i >= 0 && bytes.length < 4; i--) {
      const m = BYTE_PIECE.exec(this.impl.id_to_token(tokens[i]) ?? '');
      if (m === null) break;
      bytes.unshift(parseInt(m[1], 16));
    }
    // Walk back over continuation bytes (10xxxxxx) to the lead byte and compare its length.
    let k = bytes.length - 1;
    while (k >= 0 && (bytes[k] & 0xc0) === 0x80) k--;
    if (k < 0) return 0;
    const lead = bytes[k];
    const need = lead >= 0xf0 && lead < 0xf8 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    const have = bytes.length - k;
    return have < need ? have : 0;
  }

  private required(id: number | undefined, field: string): number {
    if (id === undefined) throw new ModelFormatError(this.file, field, 'the tokenizer defines no such token');
    return id;
  }
}

/** The id of tokenizer_config.json's bos_token/eos_token, else of a template or well-known token. */
function specialId(
  impl: HfTokenizerImpl,
  config: Json,
  key: string,
  fromTemplate: string | undefined,
  names: string[],
): number | undefined {
  const entry = config[key];
  const content = isObject(entry) ? entry.content : entry;
  if (typeof content === 'string') {
    const id = impl.token_to_id(content);
    if (id === undefined)
      throw new ModelFormatError(
        'tokenizer_config.json',
        key,
        `${JSON.stringify(content)} is not in the vocabulary`,
      );
    return id;
  }
  if (entry !== undefined && entry !== null)
    throw new ModelFormatError('tokenizer_config.json', key, 'expected a string or {content}');
  const special = [...impl.get_added_tokens_decoder().values()]
    .filter((t) => t.special)
    .map((t) => t.content);
  const name = fromTemplate ?? names.find((n) => special.includes(n));
  return name === undefined ? undefined : impl.token_to_id(name);
}

/** The special token a TemplateProcessing post-processor puts before the sequence, if any. */
function leadingTemplateToken(json: Json): string | undefined {
  const post = json.post_processor;
  if (!isObject(post) || post.type !== 'TemplateProcessing' || !Array.isArray(post.single)) return undefined;
  const first: unknown = post.single[0];
  if (!isObject(first) || !isObject(first.SpecialToken)) return undefined;
  const id = first.SpecialToken.id;
  return typeof id === 'string' ? id : undefined;
}
