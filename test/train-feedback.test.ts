import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import {
  type FeedbackEvent,
  feedbackKind,
  parseFeedback,
  parseFeedbackJsonl,
} from '../src/train/feedback.js';

/** The InvalidInputError that `fn` throws. */
function refusal(fn: () => unknown): InvalidInputError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidInputError);
    return e as InvalidInputError;
  }
  throw new Error('expected an InvalidInputError, nothing was thrown');
}

describe('parseFeedback: the four shapes', () => {
  const cases: [FeedbackEvent, ReturnType<typeof feedbackKind>][] = [
    [{ prompt: 'Hi', completion: 'Hello!', rating: 1 }, 'rating'],
    [{ prompt: 'Hi', completion: 'Hello!', rating: -1 }, 'rating'],
    [{ prompt: 'Hi', completion: 'Hello!', correction: 'Good morning.' }, 'correction'],
    [{ prompt: 'Hi', chosen: 'Hello!', rejected: 'Go away.' }, 'pair'],
    [{ prompt: 'Hi', completion: 'Hello!' }, 'demonstration'],
    [{ prompt: '', completion: 'A reply to no prompt' }, 'demonstration'],
  ];
  it.each(cases)('accepts %j as a %s', (event, kind) => {
    const parsed = parseFeedback(event);
    expect(parsed).toEqual(event);
    expect(parsed).not.toBe(event); // a fresh object
    expect(feedbackKind(parsed)).toBe(kind);
  });

  it("accepts the log's id and time, and drops them", () => {
    const parsed = parseFeedback({
      id: '0000000000000007',
      time: 1.7e12,
      prompt: 'p',
      completion: 'c',
      rating: 1,
    });
    expect(parsed).toEqual({ prompt: 'p', completion: 'c', rating: 1 });
    expect(Object.keys(parsed)).toEqual(['prompt', 'completion', 'rating']);
  });
});

describe('parseFeedback: malformed events are refused naming the field', () => {
  const cases: [string, unknown, string | undefined, RegExp][] = [
    ['missing prompt', { completion: 'c', rating: 1 }, 'prompt', /missing; expected a string/],
    [
      'a prompt that is not a string',
      { prompt: 3, completion: 'c' },
      'prompt',
      /expected a string, got number 3/,
    ],
    [
      'rating 0',
      { prompt: 'p', completion: 'c', rating: 0 },
      'rating',
      /expected the number 1.*or -1.*got number 0/,
    ],
    ['rating 2', { prompt: 'p', completion: 'c', rating: 2 }, 'rating', /got number 2$/],
    [
      'rating "1"',
      { prompt: 'p', completion: 'c', rating: '1' },
      'rating',
      /numbers only.*got the string "1"/,
    ],
    [
      'rating true',
      { prompt: 'p', completion: 'c', rating: true },
      'rating',
      /numbers only.*got boolean true/,
    ],
    [
      'both rating and correction',
      { prompt: 'p', completion: 'c', rating: 1, correction: 'd' },
      'correction',
      /cannot be combined with "rating"/,
    ],
    [
      'both correction and a pair',
      { prompt: 'p', completion: 'c', correction: 'd', chosen: 'x', rejected: 'y' },
      'chosen',
      /cannot be combined with "correction"/,
    ],
    [
      'an unknown key (a typo)',
      { prompt: 'p', completion: 'c', ratting: 1 },
      'ratting',
      /unknown key \(did you mean "rating"\?\)/,
    ],
    ['an unknown key', { prompt: 'p', completion: 'c', score: 5 }, 'score', /^unknown key;/],
    ['empty completion', { prompt: 'p', completion: '', rating: 1 }, 'completion', /must not be empty/],
    ['empty correction', { prompt: 'p', completion: 'c', correction: '' }, 'correction', /must not be empty/],
    ['empty chosen', { prompt: 'p', chosen: '', rejected: 'r' }, 'chosen', /must not be empty/],
    ['a completion that is not a string', { prompt: 'p', completion: null }, 'completion', /got null/],
    ['a pair without rejected', { prompt: 'p', chosen: 'c' }, 'rejected', /missing/],
    ['a pair without chosen', { prompt: 'p', rejected: 'r' }, 'chosen', /missing/],
    [
      'a pair with a completion',
      { prompt: 'p', chosen: 'a', rejected: 'b', completion: 'c' },
      'completion',
      /a preference pair has "chosen" and "rejected", not "completion"/,
    ],
    ['a rating without completion', { prompt: 'p', rating: 1 }, 'completion', /missing/],
    ['a prompt alone', { prompt: 'p' }, 'completion', /missing/],
    [
      'identical chosen and rejected',
      { prompt: 'p', chosen: 'a', rejected: 'a' },
      'rejected',
      /no preference/,
    ],
    [
      'a correction equal to the completion',
      { prompt: 'p', completion: 'a', correction: 'a' },
      'correction',
      /nothing was corrected/,
    ],
    ['an id that is not a string', { id: 7, prompt: 'p', completion: 'c' }, 'id', /non-empty string/],
    [
      'a time that is not a number',
      { time: 'now', prompt: 'p', completion: 'c' },
      'time',
      /expected a number/,
    ],
    ['not an object', 'thumbs up', undefined, /expected an object, got the string "thumbs up"/],
    ['an array', [{ prompt: 'p', completion: 'c' }], undefined, /expected an object, got an array/],
    ['null', null, undefined, /expected an object, got null/],
  ];
  it.each(cases)('%s', (_name, value, field, message) => {
    const e = refusal(() => parseFeedback(value, 'event'));
    expect(e.file).toBe('event');
    expect(e.field).toBe(field);
    const detail = e.message.slice(`event${field === undefined ? '' : `: ${field}`}: `.length);
    expect(e.message.startsWith(`event${field === undefined ? '' : `: ${field}`}: `)).toBe(true);
    expect(detail).toMatch(message);
  });

  it("names 'feedback' when no place is given", () => {
    const e = refusal(() => parseFeedback({ prompt: 'p', completion: 'c', rating: 0 }));
    expect(e.file).toBe('feedback');
    expect(e.message).toMatch(/^feedback: rating: /);
  });

  it('reports an unknown key before anything else (a typo is not read as another shape)', () => {
    const e = refusal(() => parseFeedback({ prompt: 'p', chosen: 'a', rejectd: 'b' }));
    expect(e.field).toBe('rejectd');
    expect(e.message).toContain('did you mean "rejected"?');
  });

  it('does not read keys from the prototype', () => {
    const proto = { completion: 'inherited' };
    const e = refusal(() => parseFeedback(Object.assign(Object.create(proto) as object, { prompt: 'p' })));
    expect(e.field).toBe('completion');
  });
});

describe('parseFeedbackJsonl', () => {
  const a = { prompt: 'a', completion: 'x', rating: 1 };
  const b = { prompt: 'b', chosen: 'y', rejected: 'z' };
  const c = { prompt: 'c', completion: 'w' };

  it('reads one event per line, skipping blank lines, with LF or CRLF line ends', () => {
    const lines = [JSON.stringify(a), '', '   ', JSON.stringify(b), '\t', JSON.stringify(c), ''];
    expect(parseFeedbackJsonl(lines.join('\n'), 'f.jsonl')).toEqual([a, b, c]);
    expect(parseFeedbackJsonl(lines.join('\r\n'), 'f.jsonl')).toEqual([a, b, c]);
    expect(parseFeedbackJsonl(`\uFEFF${JSON.stringify(a)}\r\n`, 'f.jsonl')).toEqual([a]);
    expect(parseFeedbackJsonl('', 'f.jsonl')).toEqual([]);
    expect(parseFeedbackJsonl('\n\r\n\n', 'f.jsonl')).toEqual([]);
  });

  it('names file:line (counting blank lines) and the field of a bad event', () => {
    const text = [JSON.stringify(a), '', JSON.stringify({ prompt: 'p', completion: 'c', rating: 0 })].join(
      '\r\n',
    );
    const e = refusal(() => parseFeedbackJsonl(text, 'feedback.jsonl'));
    expect(e.file).toBe('feedback.jsonl:3');
    expect(e.field).toBe('rating');
    expect(e.message).toMatch(/^feedback\.jsonl:3: rating: expected the number 1/);
  });

  it('names file:line of a line that is not JSON', () => {
    const e = refusal(() => parseFeedbackJsonl(`${JSON.stringify(a)}\n{"prompt": "p",`, 'f.jsonl'));
    expect(e.file).toBe('f.jsonl:2');
    expect(e.field).toBeUndefined();
    expect(e.message).toMatch(/^f\.jsonl:2: not JSON: /);
  });

  it('names file:line of a line that is JSON but not an object', () => {
    const e = refusal(() => parseFeedbackJsonl(`[1, 2]\n`, 'f.jsonl'));
    expect(e.file).toBe('f.jsonl:1');
    expect(e.message).toMatch(/expected an object, got an array/);
  });

  it('reads back a log exported with its ids and times', () => {
    const text = `{"id":"0000000000000001","time":1700000000000,"prompt":"a","completion":"x","rating":1}\n`;
    expect(parseFeedbackJsonl(text, 'log.jsonl')).toEqual([a]);
  });
});
