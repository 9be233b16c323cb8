/**
 * The one interface every tokenizer implements (llama2.c's tokenizer.bin, Hugging Face's
 * tokenizer.json), so the engine, the CLI and the tests never care which format a model came with.
 */
export interface EncodeOptions {
  /** Prepend the beginning-of-sequence token. Default false. */
  bos?: boolean;
  /** Append the end-of-sequence token. Default false. */
  eos?: boolean;
}

export interface Tokenizer {
  /** Number of token ids (the model's vocab_size). */
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  encode(text: string, opts?: EncodeOptions): number[];
  /**
   * The text a program prints for these tokens. Control tokens (BOS, EOS, unknown) print nothing.
   * Where the format allows it, the decode of a prefix of `tokens` is a prefix of the decode of
   * `tokens` (an unfinished UTF-8 sequence of byte tokens at the end is held back), so an engine
   * can stream text by diffing successive decodes.
   */
  decode(tokens: readonly number[]): string;
}
