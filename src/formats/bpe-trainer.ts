/**
 * Byte-level BPE training, the way GPT-2 and Hugging Face's BpeTrainer do it, written out as a
 * standard Hugging Face tokenizer.json + tokenizer_config.json that @huggingface/tokenizers,
 * Python's tokenizers and transformers load as they are.
 *
 * 1. Split each text on the special tokens (they are never learned from), pre-tokenize the rest with
 *    GPT-2's regex (the ByteLevel pre-tokenizer's, use_regex true) and count the distinct pre-tokens.
 * 2. Write every pre-token as its UTF-8 bytes, each byte one symbol of GPT-2's byte-to-unicode
 *    alphabet. The vocabulary starts with the special tokens, then the 256 byte symbols in code-point
 *    order (as BpeTrainer with ByteLevel.alphabet() as initial alphabet orders them).
 * 3. Repeatedly merge the most frequent adjacent pair. Ties go to the smallest (left id, right id),
 *    which is BpeTrainer's rule. Pair counts are kept up to date incrementally: merging touches only
 *    the words that contain the pair, and a max-heap with lazily refreshed counts finds the next pair.
 *
 * `encodeWithMerges` is a deliberately plain encoder written from the merges list alone (GPT-2's
 * `bpe()`: merge the lowest-ranked pair of a pre-token until none is left), kept as a test oracle.
 */
import { InvalidInputError } from '../errors.js';

export interface BpeTrainOptions {
  /** Total vocabulary size: special tokens, the 256 byte symbols and the merged tokens (e.g. 2048). */
  vocabSize: number;
  /**
   * The special tokens, at ids 0, 1, 2, ...: the first three are the unk, bos and eos tokens, any
   * further ones (a pad token, ...) are extra special tokens. Default ['<unk>', '<s>', '</s>'].
   */
  specialTokens?: string[];
  /** A pair must occur at least this often (weighted by word counts) to be merged. Default 2. */
  minFrequency?: number;
  /** tokenizer_config.json's model_max_length (the model's context). Default 512. */
  modelMaxLength?: number;
  /** Called after each merge with the merges so far and vocabSize minus the specials and bytes. */
  onProgress?: (merges: number, total: number) => void;
}

/** An added (special) token as tokenizer.json lists it. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** The fields of the tokenizer.json that trainBpe writes (the shape of GPT-2's / Llama 3's). */
export interface BpeTokenizerJson {
  version: '1.0';
  truncation: null;
  padding: null;
  added_tokens: AddedTokenJson[];
  normalizer: null;
  pre_tokenizer: { type: 'ByteLevel'; add_prefix_space: false; trim_offsets: true; use_regex: true };
  post_processor: object;
  decoder: { type: 'ByteLevel'; add_prefix_space: true; trim_offsets: true; use_regex: true };
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: false;
    byte_fallback: false;
    ignore_merges: false;
    vocab: Record<string, number>;
    /** "left right" in merge order; byte-level symbols never contain a space, so this is unambiguous. */
    merges: string[];
  };
}

export interface TrainedTokenizer {
  /** Hugging Face tokenizer.json. */
  tokenizerJson: BpeTokenizerJson;
  /** tokenizer_config.json for transformers' PreTrainedTokenizerFast. */
  tokenizerConfig: object;
  /** How many merges were learned. */
  merges: number;
}

const OPTIONS = 'trainBpe options';
const DEFAULT_SPECIALS = ['<unk>', '<s>', '</s>'];

/** GPT-2's pre-tokenizer regex, as Hugging Face's ByteLevel pre-tokenizer uses it. */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's bytes_to_unicode: byte b is written as the character BYTE_TO_UNICODE[b]. */
export const BYTE_TO_UNICODE: readonly string[] = (() => {
  const table: string[] = new Array<string>(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
})();

const utf8 = new TextEncoder();

/** A pre-token (a string) as byte-level symbols (one character per UTF-8 byte). */
function byteLevel(piece: string): string {
  let s = '';
  for (const b of utf8.encode(piece)) s += BYTE_TO_UNICODE[b];
  return s;
}

/** The special tokens of a chunk of text split out: the pieces between them, and the specials. */
function splitSpecials(text: string, specials: RegExp | undefined): { text: string; special: boolean }[] {
  if (specials === undefined) return [{ text, special: false }];
  const parts: { text: string; special: boolean }[] = [];
  let last = 0;
  for (const m of text.matchAll(specials)) {
    if (m.index > last) parts.push({ text: text.slice(last, m.index), special: false });
    parts.push({ text: m[0], special: true });
    last = m.index + m[0].length;
  }
  if (last < text.length) parts.push({ text: text.slice(last), special: false });
  return parts;
}

/** A global regex matching any of the special tokens, longest first (leftmost-longest). */
function specialsPattern(specials: readonly string[]): RegExp | undefined {
  if (specials.length === 0) return undefined;
  const sorted = [...specials].sort((a, b) => b.length - a.length);
  return new RegExp(sorted.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'gu');
}

interface Resolved {
  vocabSize: number;
  specials: string[];
  minFrequency: number;
  modelMaxLength: number;
}

function resolveOptions(options: BpeTrainOptions): Resolved {
  const specials = options.specialTokens ?? DEFAULT_SPECIALS;
  if (!Array.isArray(specials) || specials.length < 3) {
    throw new InvalidInputError(
      OPTIONS,
      'specialTokens',
      'needs at least 3 tokens: unk, bos and eos, in that order',
    );
  }
  const byteSymbols = new Set(BYTE_TO_UNICODE);
  specials.forEach((s, i) => {
    if (typeof s !== 'string' || s.length === 0) {
      throw new InvalidInputError(OPTIONS, `specialTokens[${i}]`, 'must be a non-empty string');
    }
    if (specials.indexOf(s) !== i) {
      throw new InvalidInputError(OPTIONS, `specialTokens[${i}]`, `${JSON.stringify(s)} is listed twice`);
    }
    if (byteSymbols.has(s)) {
      throw new InvalidInputError(
        OPTIONS,
        `specialTokens[${i}]`,
        `${JSON.stringify(s)} is one of the 256 byte symbols`,
      );
    }
  });
  const minVocab = 256 + specials.length;
  const { vocabSize } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < minVocab) {
    throw new InvalidInputError(
      OPTIONS,
      'vocabSize',
      `must be an integer >= ${minVocab} (256 byte symbols + ${specials.length} special tokens), got ${vocabSize}`,
    );
  }
  const minFrequency = options.minFrequency ?? 2;
  if (!Number.isInteger(minFrequency) || minFrequency < 1) {
    throw new InvalidInputError(OPTIONS, 'minFrequency', `must be an integer >= 1, got ${minFrequency}`);
  }
  const modelMaxLength = options.modelMaxLength ?? 512;
  if (!Number.isInteger(modelMaxLength) || modelMaxLength < 1) {
    throw new InvalidInputError(OPTIONS, 'modelMaxLength', `must be an integer >= 1, got ${modelMaxLength}`);
  }
  return { vocabSize, specials: [...specials], minFrequency, modelMaxLength };
}

/**
 * A max-heap of (count, pair key): larger count first, then smaller key. Entries may be stale (the
 * pair's count has dropped since); the trainer refreshes them when they come to the top.
 */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  private above(i: number, j: number): boolean {
    const ci = this.counts[i];
    const cj = this.counts[j];
    return ci > cj || (ci === cj && this.keys[i] < this.keys[j]);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j], this.counts[i]];
    [this.keys[i], this.keys[j]] = [this.keys[j], this.keys[i]];
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.keys.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.above(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** The top entry, removed. The heap must not be empty. */
  pop(): { count: number; key: number } {
    const top = { count: this.counts[0], key: this.keys[0] };
    const lastCount = this.counts.pop() as number;
    const lastKey = this.keys.pop() as number;
    const n = this.keys.length;
    if (n > 0) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < n && this.above(l, best)) best = l;
        if (r < n && this.above(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}

/**
 * Trains a byte-level BPE tokenizer. A string is one text; an iterable gives several texts (documents
 * or lines), each pre-tokenized on its own.
 */
export function trainBpe(text: string | Iterable<string>, options: BpeTrainOptions): TrainedTokenizer {
  const { vocabSize, specials, minFrequency, modelMaxLength } = resolveOptions(options);
  const specialsRe = specialsPattern(specials);

  // 1. Distinct pre-tokens and their counts.
  const wordCounts = new Map<string, number>();
  for (const chunk of typeof text === 'string' ? [text] : text) {
    if (typeof chunk !== 'string') {
      throw new InvalidInputError('trainBpe text', undefined, `expected strings, got ${typeof chunk}`);
    }
    for (const part of splitSpecials(chunk, specialsRe)) {
      if (part.special) continue;
      for (const piece of part.text.match(GPT2_SPLIT) ?? []) {
        wordCounts.set(piece, (wordCounts.get(piece) ?? 0) + 1);
      }
    }
  }

  // 2. The initial vocabulary: specials, then the byte symbols in code-point order.
  const idToToken: string[] = [...specials];
  const tokenToId = new Map<string, number>();
  specials.forEach((s, id) => tokenToId.set(s, id));
  const byteId = new Array<number>(256);
  const bytesByCodePoint = [...BYTE_TO_UNICODE.keys()].sort(
    (a, b) => (BYTE_TO_UNICODE[a].codePointAt(0) as number) - (BYTE_TO_UNICODE[b].codePointAt(0) as number),
  );
  for (const b of bytesByCodePoint) {
    byteId[b] = idToToken.length;
    tokenToId.set(BYTE_TO_UNICODE[b], idToToken.length);
    idToToken.push(BYTE_TO_UNICODE[b]);
  }
  const specialIds = new Set(specials.map((_, id) => id));
  const base = idToToken.length;

  const words: number[][] = [];
  const counts: number[] = [];
  for (const [piece, count] of wordCounts) {
    words.push(Array.from(utf8.encode(piece), (b) => byteId[b]));
    counts.push(count);
  }

  // Pairs are keys a * vocabSize + b, so key order is the lexicographic order of (a, b).
  const pairKey = (a: number, b: number): number => a * vocabSize + b;
  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  words.forEach((word, w) => {
    for (let i = 0; i + 1 < word.length; i++) {
      const key = pairKey(word[i], word[i + 1]);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + counts[w]);
      let where = pairWords.get(key);
      if (where === undefined) pairWords.set(key, (where = new Set()));
      where.add(w);
    }
  });
  const heap = new PairHeap();
  for (const [key, count] of pairCounts) heap.push(count, key);

  // 3. Merges.
  const merges: string[] = [];
  const listed = new Set<string>();
  const total = vocabSize - base;
  while (idToToken.length < vocabSize && heap.size > 0) {
    const top = heap.pop();
    const current = pairCounts.get(top.key) ?? 0;
    if (top.count !== current) {
      if (current > 0) heap.push(current, top.key);
      continue;
    }
    if (current < minFrequency) break;
    const a = Math.floor(top.key / vocabSize);
    const b = top.key - a * vocabSize;
    const merged = idToToken[a] + idToToken[b];
    const where = pairWords.get(top.key) ?? new Set<number>();
    pairCounts.delete(top.key);
    pairWords.delete(top.key);
    let id = tokenToId.get(merged);
    if (id !== undefined && specialIds.has(id)) continue; // never let a merge produce a special token
    if (id === undefined) {
      id = idToToken.length;
      idToToken.push(merged);
      tokenToId.set(merged, id);
    }
    // A pair can come back when a later merge re-creates an existing token; list each pair once.
    const rule = `${idToToken[a]} ${idToToken[b]}`;
    if (!listed.has(rule)) {
      listed.add(rule);
      merges.push(rule);
    }

    // Merge the pair in every word that has it, left to right, and update the neighbours' counts.
    const grown = new Set<number>();
    const change = (x: number, y: number, by: number, w: number): void => {
      const key = pairKey(x, y);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + by);
      if (by > 0) {
        grown.add(key);
        let at = pairWords.get(key);
        if (at === undefined) pairWords.set(key, (at = new Set()));
        at.add(w);
      }
    };
    for (const w of where) {
      const word = words[w];
      const count = counts[w];
      let out = 0;
      for (let i = 0; i < word.length;) {
        if (i + 1 < word.length && word[i] === a && word[i + 1] === b) {
          if (out > 0) {
            change(word[out - 1], a, -count, w);
            change(word[out - 1], id, count, w);
          }
          if (i + 2 < word.length) {
            change(b, word[i + 2], -count, w);
            change(id, word[i + 2], count, w);
          }
          word[out++] = id;
          i += 2;
        } else {
          word[out++] = word[i++];
        }
      }
      word.length = out;
    }
    pairCounts.delete(top.key); // the pair itself may have been touched by its own overlaps ("a a a")
    for (const key of grown) {
      const count = pairCounts.get(key) ?? 0;
      if (count > 0) heap.push(count, key);
    }
    options.onProgress?.(merges.length, total);
  }

  return {
    tokenizerJson: tokenizerJson(idToToken, merges, specials),
    tokenizerConfig: tokenizerConfig(specials, modelMaxLength),
    merges: merges.length,
  };
}

function addedToken(id: number, content: string): AddedTokenJson {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

function tokenizerJson(idToToken: readonly string[], merges: string[], specials: string[]): BpeTokenizerJson {
  // fromEntries defines own properties, so a token such as "__proto__" is an ordinary key.
  const vocab: Record<string, number> = Object.fromEntries(idToToken.map((token, id) => [token, id]));
  const bos = specials[1];
  const bosEntry = { SpecialToken: { id: bos, type_id: 0 } };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((s, id) => addedToken(id, s)),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    // As Llama 3's: ByteLevel (offsets) then a template that starts every sequence with bos.
    post_processor: {
      type: 'Sequence',
      processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: 'TemplateProcessing',
          single: [bosEntry, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            bosEntry,
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bos, type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { [bos]: { id: bos, ids: [1], tokens: [bos] } },
        },
      ],
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

function tokenizerConfig(specials: string[], modelMaxLength: number): object {
  const decoder: Record<string, object> = {};
  specials.forEach((content, id) => {
    const { id: _id, ...rest } = addedToken(id, content);
    decoder[String(id)] = rest;
  });
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    bos_token: specials[1],
    clean_up_tokenization_spaces: false,
    eos_token: specials[2],
    model_max_length: modelMaxLength,
    tokenizer_class: 'PreTrainedTokenizerFast',
    unk_token: specials[0],
  };
}

/**
 * The ids of `text` under a trained tokenizer, computed from its tokenizer.json's vocab and merges
 * list alone: special tokens are split out, each pre-token's byte symbols are merged lowest rank
 * first (every occurrence of that pair, left to right) until no listed pair is left. No post-processor
 * (no bos). A test oracle, independent of @huggingface/tokenizers.
 */
export function encodeWithMerges(text: string, trained: TrainedTokenizer): number[] {
  const { model, added_tokens } = trained.tokenizerJson;
  const rank = new Map<string, number>();
  model.merges.forEach((m, i) => {
    if (!rank.has(m)) rank.set(m, i);
  });
  const vocab = new Map(Object.entries(model.vocab));
  const idOf = (token: string): number => {
    const id = vocab.get(token);
    if (id === undefined) throw new InvalidInputError('tokenizer.json', 'model.vocab', `no token ${token}`);
    return id;
  };
  const ids: number[] = [];
  for (const part of splitSpecials(text, specialsPattern(added_tokens.map((t) => t.content)))) {
    if (part.special) {
      ids.push(idOf(part.text));
      continue;
    }
    for (const piece of part.text.match(GPT2_SPLIT) ?? []) {
      let symbols = Array.from(byteLevel(piece));
      for (;;) {
        let best = -1;
        for (let i = 0; i + 1 < symbols.length; i++) {
          const r = rank.get(`${symbols[i]} ${symbols[i + 1]}`);
          if (r !== undefined && (best < 0 || r < best)) best = r;
        }
        if (best < 0) break;
        const [left, right] = model.merges[best].split(' ');
        const next: string[] = [];
        for (let i = 0; i < symbols.length; i++) {
          if (i + 1 < symbols.length && symbols[i] === left && symbols[i + 1] === right) {
            next.push(left + right);
            i++;
          } else {
            next.push(symbols[i]);
          }
        }
        symbols = next;
      }
      for (const s of symbols) ids.push(idOf(s));
    }
  }
  return ids;
}
