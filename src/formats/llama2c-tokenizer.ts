/**
 * llama2.c's tokenizer.bin: int32 max_token_length, then per token a float32 score, an int32 byte
 * length and the piece's bytes (little-endian). Pieces are sentencepiece pieces with '▁' written as
 * a plain space; ids 0, 1, 2 are <unk>, BOS ("\n<s>\n") and EOS ("\n</s>\n"); ids 3..258 are the
 * byte-fallback pieces "<0x00>".."<0xFF>".
 *
 * encode and decode follow run.c byte for byte; llama2cTokenizerToHfJson writes the same tokenizer
 * as a Hugging Face tokenizer.json.
 */
import { InvalidInputError, ModelFormatError } from '../errors.js';
import type { EncodeOptions, Tokenizer } from './tokenizer.js';

const UNK = 0;
const BOS = 1;
const EOS = 2;
const SPACE = 0x20;
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

/** A byte string as a JS string of char codes 0..255, so lookups compare bytes exactly like strcmp. */
function binary(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

export class Llama2cTokenizer implements Tokenizer {
  readonly bosId = BOS;
  readonly eosId = EOS;
  private readonly lookup = new Map<string, number>();
  private readonly byteOf: (number | undefined)[];

  private constructor(
    readonly maxTokenLength: number,
    /** The raw bytes of every piece, as stored in tokenizer.bin. */
    readonly pieces: readonly Uint8Array[],
    /** The merge score of every piece (higher merges first). */
    readonly scores: Float32Array,
    readonly file: string,
  ) {
    pieces.forEach((p, id) => {
      const key = binary(p);
      if (!this.lookup.has(key)) this.lookup.set(key, id);
    });
    this.byteOf = pieces.map((p) => {
      const m = BYTE_PIECE.exec(binary(p));
      return m === null ? undefined : parseInt(m[1], 16);
    });
    if (!this.lookup.has(' ')) {
      throw new ModelFormatError(file, 'vocab', "no ' ' piece, needed for the dummy prefix");
    }
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  static parse(bytes: Uint8Array, vocabSize: number, file = 'tokenizer.bin'): Llama2cTokenizer {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.byteLength < 4) {
      throw new ModelFormatError(file, 'max_token_length', `truncated: file is ${bytes.byteLength} bytes`);
    }
    const maxTokenLength = view.getInt32(0, true);
    const pieces: Uint8Array[] = [];
    const scores = new Float32Array(vocabSize);
    let offset = 4;
    for (let id = 0; id < vocabSize; id++) {
      const field = `token ${id}`;
      if (offset + 8 > bytes.byteLength) {
        throw new ModelFormatError(
          file,
          field,
          `file ends after ${id} of ${vocabSize} tokens; does the model's vocab_size match this tokenizer?`,
        );
      }
      scores[id] = view.getFloat32(offset, true);
      const len = view.getInt32(offset + 4, true);
      offset += 8;
      if (len < 0 || offset + len > bytes.byteLength) {
        throw new ModelFormatError(file, field, `length ${len} runs past the end of the file`);
      }
      pieces.push(bytes.slice(offset, offset + len));
      offset += len;
    }
    if (offset !== bytes.byteLength) {
      throw new ModelFormatError(
        file,
        undefined,
        `${bytes.byteLength - offset} bytes left after ${vocabSize} tokens; does the model's vocab_size match this tokenizer?`,
      );
    }
    return new Llama2cTokenizer(maxTokenLength, pieces, scores, file);
  }

  /** run.c's encode: dummy prefix, codepoint lookup with byte fallback, then best-score merges. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const tokens: number[] = [];
    if (opts.bos === true) tokens.push(BOS);
    if (text.length > 0) tokens.push(this.id(' '));
    const encoder = new TextEncoder();
    for (const ch of text) {
      const bytes = encoder.encode(ch);
      const id = this.lookup.get(binary(bytes));
      if (id !== undefined) tokens.push(id);
      else for (const b of bytes) tokens.push(b + 3);
    }

    // Repeatedly merge the adjacent pair whose concatenation is the best-scoring piece; the
    // leftmost pair wins ties (run.c compares with a strict `>`).
    const mergeOf = (i: number): number =>
      this.lookup.get(binary(this.pieces[tokens[i]]) + binary(this.pieces[tokens[i + 1]])) ?? -1;
    const merges = tokens.slice(0, -1).map((_, i) => mergeOf(i));
    for (;;) {
      let best = -1;
      let bestScore = -1e10;
      merges.forEach((id, i) => {
        if (id !== -1 && this.scores[id] > bestScore) {
          bestScore = this.scores[id];
          best = i;
        }
      });
      if (best === -1) break;
      tokens.splice(best, 2, merges[best]);
      merges.splice(best, 1);
      if (best > 0) merges[best - 1] = mergeOf(best - 1);
      if (best < merges.length) merges[best] = mergeOf(best);
    }

    if (opts.eos === true) tokens.push(EOS);
    return tokens;
  }

  /**
   * What run.c prints for these tokens: each piece's bytes, a byte piece "<0xXX>" as that byte,
   * the leading space of a piece that follows BOS stripped. Control tokens (<unk>, BOS, EOS) print
   * nothing. An unfinished UTF-8 sequence at the end is held back (it completes in a longer decode).
   *
   * run.c's safe_printf also drops lone non-printable bytes; this decodes them as the UTF-8 text
   * they spell, as sentencepiece does.
   */
  decode(tokens: readonly number[]): string {
    const out: number[] = [];
    let prev = -1;
    tokens.forEach((t, i) => {
      this.checkId(t, i);
      if (t !== UNK && t !== BOS && t !== EOS) {
        const byte = this.byteOf[t];
        if (byte !== undefined) out.push(byte);
        else {
          const piece = this.pieces[t];
          const start = prev === BOS && piece[0] === SPACE ? 1 : 0;
          for (let k = start; k < piece.length; k++) out.push(piece[k]);
        }
      }
      prev = t;
    });
    return new TextDecoder('utf-8', { ignoreBOM: true }).decode(Uint8Array.from(out), { stream: true });
  }

  private id(piece: string): number {
    const id = this.lookup.get(piece);
    if (id === undefined) throw new ModelFormatError(this.file, 'vocab', `no piece ${JSON.stringify(piece)}`);
    return id;
  }

  private checkId(t: number, i: number): void {
    if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
      throw new InvalidInputError(
        'tokens',
        `tokens[${i}]`,
        `token id ${t} is outside the vocabulary [0, ${this.vocabSize})`,
      );
    }
  }
}

const META = '\u2581';

/**
 * The same tokenizer as a Hugging Face tokenizer.json (what transformers' LlamaConverter writes for
 * a sentencepiece BPE model with add_dummy_prefix, legacy form): a byte-fallback BPE model whose
 * merges, ranked by the merged piece's score, make HF's rank-greedy BPE merge exactly like run.c's
 * score-greedy encode.
 */
export function llama2cTokenizerToHfJson(tok: Llama2cTokenizer): object {
  const names = hfPieceNames(tok);
  const vocab: Record<string, number> = {};
  names.forEach((name, id) => {
    vocab[name] = id;
  });

  // Every way to write a (non-special, non-byte) piece as the concatenation of two such pieces.
  const mergeable = new Map<string, number>();
  names.forEach((name, id) => {
    if (id > EOS && !BYTE_PIECE.test(name)) mergeable.set(name, id);
  });
  const merges: { left: string; right: string; id: number }[] = [];
  for (const [name, id] of mergeable) {
    const chars = Array.from(name);
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join('');
      const right = chars.slice(k).join('');
      if (mergeable.has(left) && mergeable.has(right)) merges.push({ left, right, id });
    }
  }
  merges.sort((a, b) => tok.scores[b.id] - tok.scores[a.id] || a.id - b.id);

  const special = (id: number): object => ({
    id,
    content: names[id],
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const bos = names[BOS];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(UNK), special(BOS), special(EOS)],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: META },
        { type: 'Replace', pattern: { String: ' ' }, content: META },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [BOS], tokens: [bos] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: META }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: names[UNK],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => `${m.left} ${m.right}`),
    },
  };
}

/** The tokenizer_config.json that goes with llama2cTokenizerToHfJson. */
export function llama2cTokenizerToHfConfig(tok: Llama2cTokenizer): object {
  const names = hfPieceNames(tok);
  return {
    tokenizer_class: 'LlamaTokenizer',
    bos_token: names[BOS],
    eos_token: names[EOS],
    unk_token: names[UNK],
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    legacy: true,
  };
}

/** Sentencepiece's names for the pieces: '▁' for space, <unk>/<s>/</s> for the control tokens. */
function hfPieceNames(tok: Llama2cTokenizer): string[] {
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const names = tok.pieces.map((bytes, id) => {
    if (id === UNK) return '<unk>';
    if (id === BOS) return '<s>';
    if (id === EOS) return '</s>';
    try {
      return decoder.decode(bytes).replaceAll(' ', META);
    } catch {
      throw new ModelFormatError(tok.file, `token ${id}`, 'piece is not valid UTF-8');
    }
  });
  const seen = new Set<string>();
  names.forEach((name, id) => {
    if (seen.has(name))
      throw new ModelFormatError(tok.file, `token ${id}`, `duplicate piece ${JSON.stringify(name)}`);
    seen.add(name);
  });
  return names;
}
