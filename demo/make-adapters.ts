/**
 * The demo's adapters: the task adapters the project trained on its default model
 * (models/default-adapters/, made by models/train-task-adapters.ts), one per method family — real
 * Hugging Face PEFT folders. The Shakespeare LoRA is served as a zip bundle, the others as folders.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BundleFormat } from '../src/store/manifest.js';

export const ADAPTERS_DIR = fileURLToPath(new URL('../models/default-adapters/', import.meta.url));

export interface DemoAdapter {
  id: string;
  method: string;
  description: string;
  format: BundleFormat;
  /** adapter_config.json and adapter_model.safetensors. */
  files: Map<string, Uint8Array>;
}

interface IndexEntry {
  id: string;
  method: string;
  description: string;
  effect: { measure: string; base: number; adapter: number };
}

const ZIPPED = new Set(['shakespeare']);

/** The trained task adapters, in models/default-adapters/index.json's order. */
export function demoAdapters(dir = ADAPTERS_DIR): DemoAdapter[] {
  const index = JSON.parse(readFileSync(path.join(dir, 'index.json'), 'utf8')) as IndexEntry[];
  return index.map(({ id, method, description, effect }) => ({
    id,
    method,
    description: `${description} (${effect.measure}: ${fmt(effect.base)} → ${fmt(effect.adapter)})`,
    format: ZIPPED.has(id) ? 'zip' : 'peft-folder',
    files: new Map(
      ['adapter_config.json', 'adapter_model.safetensors'].map((f) => [
        f,
        new Uint8Array(readFileSync(path.join(dir, id, f))),
      ]),
    ),
  }));
}

const fmt = (x: number) => (x < 1 ? `${(100 * x).toFixed(0)}%` : x.toFixed(1));
