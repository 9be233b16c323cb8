/**
 * The feedback a user gives the personal adapter, as data, validated. Four shapes, told apart by their
 * keys (each also has `prompt`, which may be empty):
 *
 *   { prompt, completion, rating: 1 | -1 }   thumbs up / down on a reply            (KTO)
 *   { prompt, completion, correction }       the user edited the reply              (SFT on the edit, KTO)
 *   { prompt, chosen, rejected }             a preference pair                      (DPO)
 *   { prompt, completion }                   a demonstration                        (SFT)
 *
 * Parsing is strict: a key that belongs to no shape (a typo such as "ratting") is refused by name,
 * never ignored, and so is a key of another shape (`completion` in a pair, `rating` beside
 * `correction`). The log's own `id` (a string) and `time` (a number) are accepted, checked and
 * dropped, so a log exported as JSONL reads back.
 */
import { InvalidInputError } from '../errors.js';

/** Thumbs up (1) or down (-1) on `completion`. */
export interface RatingFeedback {
  prompt: string;
  completion: string;
  rating: 1 | -1;
}

/** The user edited `completion` into `correction`. */
export interface CorrectionFeedback {
  prompt: string;
  completion: string;
  correction: string;
}

/** `chosen` is preferred over `rejected`. */
export interface PreferencePair {
  prompt: string;
  chosen: string;
  rejected: string;
}

/** A reply to imitate (supervised fine-tuning). */
export interface Demonstration {
  prompt: string;
  completion: string;
}

export type FeedbackEvent = RatingFeedback | CorrectionFeedback | PreferencePair | Demonstration;

export type FeedbackKind = 'rating' | 'correction' | 'pair' | 'demonstration';

export function feedbackKind(e: FeedbackEvent): FeedbackKind {
  if ('rating' in e) return 'rating';
  if ('correction' in e) return 'correction';
  if ('chosen' in e) return 'pair';
  return 'demonstration';
}

/** The keys of each shape besides `prompt`. */
const SHAPES: Record<FeedbackKind, readonly string[]> = {
  rating: ['completion', 'rating'],
  correction: ['completion', 'correction'],
  pair: ['chosen', 'rejected'],
  demonstration: ['completion'],
};
const EVENT_KEYS = ['prompt', 'completion', 'rating', 'correction', 'chosen', 'rejected'];
/** Written by the feedback log; accepted and dropped. */
const LOG_KEYS = ['id', 'time'];
const KNOWN = new Set([...EVENT_KEYS, ...LOG_KEYS]);

const SHAPE_TEXT =
  'a feedback event is one of {prompt, completion, rating}, {prompt, completion, correction}, ' +
  '{prompt, chosen, rejected} or {prompt, completion}';

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v} ${String(v)}`;
  return `a value of type ${typeof v}`;
}

/** Levenshtein distance, for "did you mean" on unknown keys. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

function unknownKeyMessage(key: string): string {
  let near: string | undefined;
  let best = Infinity;
  for (const k of KNOWN) {
    const d = distance(key.toLowerCase(), k);
    if (d < best && d <= (k.length <= 4 ? 1 : 2)) [near, best] = [k, d];
  }
  const hint = near === undefined ? '' : ` (did you mean "${near}"?)`;
  return `unknown key${hint}; ${SHAPE_TEXT}, optionally with the log's id and time`;
}

/**
 * Validate one feedback event. Throws InvalidInputError(where ?? 'feedback', field, message) naming
 * the field at fault. The result is a fresh object with only the event's keys.
 */
export function parseFeedback(value: unknown, where?: string): FeedbackEvent {
  const file = where ?? 'feedback';
  const fail = (field: string | undefined, message: string): never => {
    throw new InvalidInputError(file, field, message);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(undefined, `expected an object, got ${describe(value)}; ${SHAPE_TEXT}`);
  }
  const o = value as Record<string, unknown>;
  const has = (k: string) => Object.hasOwn(o, k);
  const keys = Object.keys(o);
  for (const k of keys) if (!KNOWN.has(k)) fail(k, unknownKeyMessage(k));

  if (!has('prompt')) fail('prompt', `missing; expected a string (it may be empty); ${SHAPE_TEXT}`);
  if (typeof o.prompt !== 'string') fail('prompt', `expected a string, got ${describe(o.prompt)}`);
  if (has('id') && (typeof o.id !== 'string' || o.id === '')) {
    fail('id', `expected a non-empty string, got ${describe(o.id)}`);
  }
  if (has('time') && (typeof o.time !== 'number' || !Number.isFinite(o.time))) {
    fail('time', `expected a number (milliseconds since the epoch), got ${describe(o.time)}`);
  }

  // The shape: the keys that mark one (rating, correction, chosen/rejected); none marks a demonstration.
  const markers: [FeedbackKind, string][] = [];
  if (has('rating')) markers.push(['rating', 'rating']);
  if (has('correction')) markers.push(['correction', 'correction']);
  if (has('chosen')) markers.push(['pair', 'chosen']);
  else if (has('rejected')) markers.push(['pair', 'rejected']);
  if (markers.length > 1) {
    const [[, first], [, second]] = markers;
    fail(second, `cannot be combined with "${first}": ${SHAPE_TEXT}`);
  }
  const kind: FeedbackKind = markers.length === 1 ? markers[0][0] : 'demonstration';
  const allowed = SHAPES[kind];
  for (const k of keys) {
    if (k === 'prompt' || LOG_KEYS.includes(k) || allowed.includes(k)) continue;
    const name = kind === 'pair' ? 'a preference pair' : `a ${kind}`;
    fail(k, `${name} has ${allowed.map((a) => `"${a}"`).join(' and ')}, not "${k}"`);
  }

  const text = (key: string): string => {
    const v = o[key];
    if (!has(key)) fail(key, `missing; ${SHAPE_TEXT}`);
    if (typeof v !== 'string') return fail(key, `expected a string, got ${describe(v)}`);
    if (v === '') fail(key, 'must not be empty');
    return v;
  };
  const prompt = o.prompt as string;
  switch (kind) {
    case 'rating': {
      const completion = text('completion');
      const r = o.rating;
      if (r !== 1 && r !== -1) {
        const kindHint = typeof r === 'number' ? '' : ' (numbers only: not a boolean, not a string like "1")';
        fail(
          'rating',
          `expected the number 1 (thumbs up) or -1 (thumbs down)${kindHint}, got ${describe(r)}`,
        );
      }
      return { prompt, completion, rating: r as 1 | -1 };
    }
    case 'correction': {
      const completion = text('completion');
      const correction = text('correction');
      if (correction === completion)
        fail('correction', 'is the same text as completion: nothing was corrected');
      return { prompt, completion, correction };
    }
    case 'pair': {
      const chosen = text('chosen');
      const rejected = text('rejected');
      if (chosen === rejected) fail('rejected', 'is the same text as chosen: the pair states no preference');
      return { prompt, chosen, rejected };
    }
    case 'demonstration':
      return { prompt, completion: text('completion') };
  }
}

/**
 * One feedback event per line (JSON Lines). Blank lines are skipped; CRLF line ends and a leading
 * byte-order mark are tolerated. Errors name `${file}:${line}` (1-based) and the field.
 */
export function parseFeedbackJsonl(text: string, file: string): FeedbackEvent[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const events: FeedbackEvent[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new InvalidInputError(
        where,
        undefined,
        `not JSON: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    events.push(parseFeedback(value, where));
  });
  return events;
}
