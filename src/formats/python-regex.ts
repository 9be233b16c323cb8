/**
 * Python `re` patterns from adapter_config.json (target_modules, rank_pattern keys, layers_pattern)
 * as JavaScript RegExps with the same matches on module names.
 */
import { AdapterFormatError } from '../errors.js';

/** A pattern in an error message: JSON, shortened. */
function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** 'full': re.fullmatch. 'start': re.match (anchored at the start only). */
export type RegexAnchor = 'full' | 'start';

const regexCache = new Map<string, RegExp>();

/**
 * A Python `re` pattern as a JavaScript RegExp with the same matches on module names (ASCII, no
 * newlines). Translated: `(?P<n>...)`, `(?P=n)`, `\A`, `\Z`, `\a`, `(?#...)`, `{,n}`, a leading `]` in
 * a class, leading global flags i/m/s (a/u are no-ops on ASCII). Refused with AdapterFormatError
 * naming `field`: possessive quantifiers, atomic groups, conditionals, scoped or non-leading inline
 * flags, verbose mode, `\U`/`\N`, octal escapes, unknown letter escapes (errors in Python too), and an
 * repeated group that holds an unbounded repeat (`(a+)*`, `(\w+\.){2}`; `(.*\.)?` is fine) or more
 * than six unbounded repeats: such patterns can backtrack exponentially or as n^k, and a regex from a
 * file must not hang the runtime.
 */
export function pythonRegExp(source: string, anchor: RegexAnchor, file: string, field: string): RegExp {
  const key = `${anchor}\u0000${source}`;
  const hit = regexCache.get(key);
  if (hit !== undefined) return hit;
  const t = translatePythonRegex(source);
  if (typeof t === 'string') throw new AdapterFormatError(file, field, `Python regex ${show(source)}: ${t}`);
  const end = anchor === 'full' ? '(?![\\s\\S])' : '';
  let re: RegExp;
  try {
    re = new RegExp(`(?<![\\s\\S])(?:${t.source})${end}`, t.flags);
  } catch (e) {
    throw new AdapterFormatError(
      file,
      field,
      `Python regex ${show(source)} is not valid: ${(e as Error).message}`,
    );
  }
  if (regexCache.size >= 4096) regexCache.clear();
  regexCache.set(key, re);
  return re;
}

/** PEFT's get_pattern_key regex for a rank_pattern / alpha_pattern key: re.match(rf"(.*\.)?({key})$"). */
export function patternRegExp(key: string, file: string, field: string): RegExp {
  return pythonRegExp(`(.*\\.)?(${key})$`, 'start', file, field);
}

/**
 * check_target_module_exists' layer-index regex: re.match(rf".*\.{pattern}\.(\d+)\.") with the pattern
 * inserted raw, or `.*\.[^.]*\.(\d+)\.` without one. Group 1 is the layer index.
 */
export function layersRegExp(pattern: string | null, file: string, field: string): RegExp {
  const source = pattern === null ? '.*\\.[^.]*\\.(\\d+)\\.' : `.*\\.${pattern}\\.(\\d+)\\.`;
  return pythonRegExp(source, 'start', file, field);
}

/** One escape sequence at src[i] === '\\': [JavaScript text, characters consumed] or an error. */
function translateEscape(src: string, i: number, inClass: boolean): [string, number] | string {
  const d = src[i + 1];
  if (d === undefined) return 'ends with a lone backslash';
  if ('dDsSwWfnrtvb'.includes(d)) return [`\\${d}`, 2]; // \b: boundary outside a class, backspace inside, in both
  if ('ABZ'.includes(d)) {
    if (inClass) return `bad escape \\${d} in a character class`;
    return [d === 'A' ? '(?<![\\s\\S])' : d === 'Z' ? '(?![\\s\\S])' : '\\B', 2];
  }
  if (d === 'a') return ['\\x07', 2];
  if (d === 'x' || d === 'u') {
    const n = d === 'x' ? 2 : 4;
    const hex = src.slice(i + 2, i + 2 + n);
    return new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex) ? [`\\${d}${hex}`, 2 + n] : `incomplete escape \\${d}`;
  }
  if (d >= '1' && d <= '9' && !inClass && !/[0-9]/.test(src[i + 2] ?? '')) return [`\\${d}`, 2];
  if (/[0-9]/.test(d)) return 'octal escapes and two-digit group references are not supported';
  if (/[A-Za-z]/.test(d)) return `bad or unsupported escape \\${d}`;
  return [`\\${d}`, 2];
}

/** At most this many `*`, `+`, `{n,}` in one pattern: with k of them a failing match costs up to n^k steps. */
const MAX_UNBOUNDED_REPEATS = 6;

/** Translate a Python regex to a JavaScript source (no 'u' flag) and flags, or explain why not. */
function translatePythonRegex(src: string): { source: string; flags: string } | string {
  let i = 0;
  let flags = '';
  // Global inline flags: Python 3.11+ accepts them only at the start of the expression.
  for (let m = /^\(\?([A-Za-z]+)\)/.exec(src); m !== null; m = /^\(\?([A-Za-z]+)\)/.exec(src.slice(i))) {
    for (const c of m[1]) {
      if ('ims'.includes(c)) flags += flags.includes(c) ? '' : c;
      else if (c !== 'a' && c !== 'u') return `inline flag "${c}" is not supported`;
    }
    i += m[0].length;
  }
  let out = '';
  let inClass = false;
  let quantified = false; // the previous token was a quantifier: a '+' now would be possessive
  // Per open group: whether it holds an unbounded repeat. Repeating such a group without bound, as
  // in `(a+)*`, backtracks exponentially on a non-match: refused rather than hanging.
  const unbounded: boolean[] = [false];
  let repeats = 0; // unbounded repeats in all: k of them cost up to n^k steps on a non-match
  const markUnbounded = () => {
    unbounded[unbounded.length - 1] = true;
    repeats++;
  };
  while (i < src.length) {
    const c = src[i];
    if (c === '\\') {
      const e = translateEscape(src, i, inClass);
      if (typeof e === 'string') return e;
      out += e[0];
      i += e[1];
      quantified = false;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c === '[' ? '\\[' : c;
      i++;
      continue;
    }
    if (c === '[') {
      out += '[';
      i++;
      if (src[i] === '^') out += src[i++];
      if (src[i] === ']') {
        out += '\\]'; // a ']' right after '[' or '[^' is a member in Python, an empty class in JavaScript
        i++;
      }
      inClass = true;
      quantified = false;
      continue;
    }
    if (c === '(') {
      quantified = false;
      if (src[i + 1] !== '?') {
        out += '(';
        unbounded.push(false);
        i++;
        continue;
      }
      const rest = src.slice(i + 2);
      let m: RegExpExecArray | null;
      if (/^[:=!]/.test(rest) || /^<[=!]/.test(rest)) {
        const n = rest[0] === '<' ? 2 : 1;
        out += `(?${rest.slice(0, n)}`;
        unbounded.push(false);
        i += 2 + n;
      } else if ((m = /^P<([A-Za-z_][A-Za-z0-9_]*)>/.exec(rest)) !== null) {
        out += `(?<${m[1]}>`;
        unbounded.push(false);
        i += 2 + m[0].length;
      } else if ((m = /^P=([A-Za-z_][A-Za-z0-9_]*)\)/.exec(rest)) !== null) {
        out += `\\k<${m[1]}>`;
        i += 2 + m[0].length;
      } else if (rest.startsWith('#')) {
        const close = src.indexOf(')', i);
        if (close < 0) return 'unterminated comment';
        i = close + 1;
      } else if (/^[-a-zA-Z]+[:)]/.test(rest)) {
        return 'inline flags are only supported as global flags at the start of the pattern';
      } else {
        return `the group syntax "(?${rest.slice(0, 2)}" is not supported`;
      }
      continue;
    }
    if (c === ')' && unbounded.length > 1) {
      const inner = unbounded.pop() as boolean;
      if (inner && /^[*+{]/.test(src.slice(i + 1))) {
        return 'a group with an unbounded repeat is itself repeated (like (a+)*), which can take exponential time';
      }
      if (inner) unbounded[unbounded.length - 1] = true;
      out += ')';
      i++;
      quantified = false;
      continue;
    }
    if (c === '*' || c === '+' || c === '?') {
      if (c === '+' && quantified) return 'possessive quantifiers are not supported';
      if (c !== '?') markUnbounded();
      out += c;
      i++;
      quantified = c !== '?' || !quantified; // a '?' after a quantifier makes it lazy
      continue;
    }
    if (c === '{') {
      const m = /^\{(\d*)(?:(,)(\d*))?\}/.exec(src.slice(i));
      if (m !== null && (m[1] !== '' || m[2] !== undefined)) {
        out += `{${m[1] || '0'}${m[2] ?? ''}${m[3] ?? ''}}`; // Python's {,n} is {0,n}
        if (m[2] !== undefined && m[3] === '') markUnbounded();
        i += m[0].length;
        quantified = true;
        continue;
      }
      out += '\\{'; // not a repeat: a literal brace in Python
      i++;
      quantified = false;
      continue;
    }
    out += c;
    i++;
    quantified = false;
  }
  if (inClass) return 'unterminated character set';
  if (repeats > MAX_UNBOUNDED_REPEATS)
    return `more than ${MAX_UNBOUNDED_REPEATS} unbounded repeats (* + {n,})`;
  return { source: out, flags };
}
