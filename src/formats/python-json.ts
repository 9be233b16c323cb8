/**
 * JSON as Python's json.dumps(indent=2, sort_keys=True) writes it (ASCII-escaped, Python float
 * spelling), so configs written here are byte-identical to the ones PEFT saves.
 */
import { AdapterFormatError } from '../errors.js';
import { compareCodePoints } from './code-point-order.js';

const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

/** Top-level keys PEFT declares as float: Python writes them with a decimal point (0.0, not 0). */
const FLOAT_FIELDS = new Set(['lora_dropout', 'beta1', 'beta2', 'orth_reg_weight', 'encoder_dropout']);

/** Python's repr of a float: shortest round-trip digits, exponent form below 1e-4 and from 1e16. */
export function pythonFloat(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, e] = Math.abs(x).toExponential().split('e'); // shortest round-trip digits
  const digits = mantissa.replace('.', '');
  const exp = Number(e);
  const sign = x < 0 ? '-' : '';
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const whole = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
  return `${sign}${whole}.${digits.slice(exp + 1) || '0'}`;
}

/** json.dumps of a str with ensure_ascii: every character outside ' '..'~' escaped. */
function pythonString(s: string): string {
  const named: Record<number, string> = {
    8: '\\b',
    9: '\\t',
    10: '\\n',
    12: '\\f',
    13: '\\r',
    34: '\\"',
    92: '\\\\',
  };
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (named[c] !== undefined) out += named[c];
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += s[i];
  }
  return `${out}"`;
}

function dumpJson(v: unknown, indent: string, asFloat: boolean): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return !asFloat && Number.isSafeInteger(v) ? String(v) : pythonFloat(v);
  if (typeof v === 'string') return pythonString(v);
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return `[\n${v.map((x) => inner + dumpJson(x, inner, false)).join(',\n')}\n${indent}]`;
  }
  if (isRecord(v)) {
    const keys = Object.keys(v)
      .filter((k) => v[k] !== undefined)
      .sort(compareCodePoints);
    if (keys.length === 0) return '{}';
    const items = keys.map(
      (k) => `${inner}${pythonString(k)}: ${dumpJson(v[k], inner, indent === '' && FLOAT_FIELDS.has(k))}`,
    );
    return `{\n${items.join(',\n')}\n${indent}}`;
  }
  throw new AdapterFormatError('adapter_config.json', undefined, `cannot write a ${typeof v} as JSON`);
}

/**
 * An adapter_config.json object as PEFT's save_pretrained writes it: json.dumps(indent=2,
 * sort_keys=True) (ASCII-escaped, Python float spelling for PEFT's float fields), no final newline.
 */
export function formatPeftJson(json: Record<string, unknown>): string {
  return dumpJson(json, '', false);
}
