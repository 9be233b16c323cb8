/**
 * Turns a growing token sequence into text deltas. Decoding token by token breaks multi-byte
 * characters (byte-fallback pieces) and loses context-dependent spacing, so each step decodes a
 * short window and emits only the new, complete text (the prefix/read-offset scheme of Hugging Face
 * text-generation-inference). Stop strings are held back until they can no longer start a match.
 */
import type { Tokenizer } from '../formats/tokenizer.js';

export class TextStream {
  private readonly tokens: number[];
  private prefixOffset: number;
  private readOffset: number;
  private pending = '';
  /** The stop string that ended the text, once one has. */
  stopped: string | undefined;

  constructor(
    private readonly tokenizer: Tokenizer,
    context: readonly number[],
    private readonly stopStrings: readonly string[] = [],
  ) {
    this.tokens = [...context];
    // Keep a few context tokens in the window so spacing rules see what precedes the new text.
    this.readOffset = this.tokens.length;
    this.prefixOffset = Math.max(0, this.readOffset - 4);
  }

  /** Adds a token; returns the text that is now final (possibly empty). */
  push(token: number): string {
    this.tokens.push(token);
    const prefix = this.tokenizer.decode(this.tokens.slice(this.prefixOffset, this.readOffset));
    const text = this.tokenizer.decode(this.tokens.slice(this.prefixOffset));
    if (text.length <= prefix.length || text.endsWith('\uFFFD') || !text.startsWith(prefix))
      return this.release('');
    this.prefixOffset = this.readOffset;
    this.readOffset = this.tokens.length;
    return this.release(text.slice(prefix.length));
  }

  /** The text held back at the end of generation (an incomplete stop-string candidate). */
  flush(): string {
    if (this.stopped !== undefined) return '';
    const rest = this.pending;
    this.pending = '';
    return rest;
  }

  private release(delta: string): string {
    if (this.stopped !== undefined) return '';
    this.pending += delta;
    if (this.stopStrings.length === 0) {
      const out = this.pending;
      this.pending = '';
      return out;
    }
    let cut = -1;
    for (const stop of this.stopStrings) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        this.stopped = stop;
      }
    }
    if (cut >= 0) {
      const out = this.pending.slice(0, cut);
      this.pending = '';
      return out;
    }
    // Hold back the longest tail that is a prefix of some stop string.
    let hold = 0;
    for (const stop of this.stopStrings) {
      for (let n = Math.min(stop.length - 1, this.pending.length); n > hold; n--) {
        if (this.pending.endsWith(stop.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return out;
  }
}
