/**
 * A byte-level tokenizer.json for models without a tokenizer of their own (synthetic benchmark
 * models): <unk>, <s>, </s>, then the 256 byte pieces <0x00>..<0xFF> (llama's byte-fallback
 * layout), then filler pieces up to the model's vocabulary size. Text encodes to its UTF-8 bytes.
 */
export function byteTokenizerJson(vocabSize: number): object {
  if (vocabSize < 259)
    throw new RangeError(`a byte tokenizer needs a vocabulary of at least 259, got ${vocabSize}`);
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (let id = 259; id < vocabSize; id++) vocab[`<extra_${id}>`] = id;
  const special = (content: string, id: number) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special('<unk>', 0), special('<s>', 1), special('</s>', 2)],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

export const BYTE_TOKENIZER_CONFIG = {
  bos_token: '<s>',
  eos_token: '</s>',
  unk_token: '<unk>',
  add_bos_token: true,
  clean_up_tokenization_spaces: false,
};
