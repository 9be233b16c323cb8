/**
 * Printing for the benchmarks: the machine header every table carries, robust statistics over
 * repeated measurements, and markdown tables (they paste into the README unchanged).
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project's node_modules. */
export const NODE_MODULES = fileURLToPath(new URL('../../node_modules/', import.meta.url));

/** The installed version of a package (its package.json), or 'not installed'. */
export function packageVersion(name: string, nodeModules = NODE_MODULES): string {
  try {
    const file = path.join(nodeModules, ...name.split('/'), 'package.json');
    return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

export interface Machine {
  cpu: string;
  cores: number;
  memoryGB: number;
  node: string;
  ortWeb: string;
  ortNode: string;
  transformers: string;
}

export function machine(): Machine {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? 'unknown cpu',
    cores: cpus.length,
    memoryGB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    ortWeb: packageVersion('onnxruntime-web'),
    ortNode: packageVersion('onnxruntime-node'),
    transformers: packageVersion('@huggingface/transformers'),
  };
}

/** The line under every table's title: where it was measured. */
export function machineLine(m: Machine = machine(), extra = ''): string {
  return (
    `machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGB} GB · Node ${m.node} · onnxruntime-web ${m.ortWeb}` +
    (extra ? ` · ${extra}` : '')
  );
}

export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const at = (s.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return s[lo] + (s[hi] - s[lo]) * (at - lo);
}

export const median = (xs: readonly number[]): number => quantile(xs, 0.5);

/** `median [p25–p75]`: the median and the interquartile range, the spread we report. */
export function withSpread(xs: readonly number[], digits = 1, scale = 1): string {
  if (xs.length === 0) return 'n/a';
  const f = (v: number) => fmt(v * scale, digits);
  if (xs.length < 3) return f(median(xs));
  return `${f(median(xs))} [${f(quantile(xs, 0.25))}–${f(quantile(xs, 0.75))}]`;
}

export function fmt(v: number, digits = 1): string {
  if (!Number.isFinite(v)) return 'n/a';
  return v.toFixed(digits);
}

/** A ratio printed as `0.93x`. */
export const ratio = (v: number, digits = 2): string =>
  Number.isFinite(v) ? `${v.toFixed(digits)}x` : 'n/a';

/** A markdown table; numbers must already be formatted. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const cells = [header, ...rows];
  const widths = header.map((_, i) => Math.max(3, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) => `| ${r.map((v, i) => (v ?? '').padEnd(widths[i])).join(' | ')} |`;
  return [line(header), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...rows.map(line)].join('\n');
}

/** Prints a titled table with the machine line and notes under it. */
export function printTable(
  title: string,
  header: readonly string[],
  rows: readonly (readonly string[])[],
  notes: readonly string[] = [],
  extra = '',
): void {
  console.log(`\n### ${title}\n`);
  console.log(`${machineLine(machine(), extra)}\n`);
  console.log(markdownTable(header, rows));
  if (notes.length) console.log(`\n${notes.map((n) => `- ${n}`).join('\n')}`);
  console.log();
}

/** Progress for the person watching, on stderr so stdout stays the report. */
export function progress(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
