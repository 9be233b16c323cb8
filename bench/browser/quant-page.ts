/**
 * The page of bench/quant.ts's Chromium part: one model per page (a base format, a backend, kernels)
 * through the Runtime with a LoRA adapter active, served by the bench's server. Sets `window.quant`.
 */
import * as ort from 'onnxruntime-web/webgpu';
import { urlSource } from '../../src/formats/files.js';
import type { Kernels } from '../../src/graph/dequantize-weights.js';
import { Runtime } from '../../src/runtime.js';
import { timeDecode } from '../lib/decode-steps.js';

export interface QuantLoad {
  model: string;
  /** The PEFT adapter folder to activate. */
  adapter: string;
  backend: 'wasm' | 'webgpu';
  kernels: Kernels;
  wasmPaths: string;
}

export interface QuantPage {
  /** Loads the model and activates the adapter; the load time and the WebGPU adapter, if any. */
  load(o: QuantLoad): Promise<{ loadMs: number; gpu: string }>;
  /** The last position's logits of `ids`: of the base alone, and with the adapter. */
  logits(ids: number[]): Promise<{ base: number[]; adapter: number[] }>;
  /** Decode step times after `prompt`, teacher-forced on `next`. */
  decode(prompt: number[], next: number[]): Promise<number[]>;
  /** onnxruntime's log lines while it creates a WebGPU session for the model file at `url`. */
  placement(url: string, wasmPaths: string): Promise<string[]>;
  /** performance.measureUserAgentSpecificMemory() bytes (JS and wasm memory; not GPU buffers). */
  memory(): Promise<number>;
}

let rt: Runtime | undefined;
const runtime = () => {
  if (!rt) throw new Error('load first');
  return rt;
};

const page: QuantPage = {
  async load(o) {
    const t = performance.now();
    rt = await Runtime.create({
      model: urlSource(o.model),
      backend: o.backend,
      kernels: o.kernels,
      wasmPaths: o.wasmPaths,
    });
    await rt.adapters.add('lora', urlSource(o.adapter));
    await rt.adapters.activate('lora');
    const loadMs = performance.now() - t;
    const gpu = navigator as Navigator & {
      gpu?: { requestAdapter(): Promise<{ info?: { architecture?: string; vendor?: string } } | null> };
    };
    const info = o.backend === 'webgpu' ? (await gpu.gpu?.requestAdapter())?.info : undefined;
    return { loadMs, gpu: info ? `${info.vendor ?? ''} ${info.architecture ?? ''}`.trim() : '' };
  },
  async logits(ids) {
    const r = runtime();
    const last = (rows: Float32Array[]) => Array.from(rows[rows.length - 1]);
    const adapter = last(await r.logits(ids));
    r.adapters.deactivate();
    const base = last(await r.logits(ids));
    await r.adapters.activate('lora');
    return { base, adapter };
  },
  decode: (prompt, next) => timeDecode(runtime().model.session, prompt, next),
  async placement(url, wasmPaths) {
    ort.env.wasm.wasmPaths = wasmPaths;
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const lines: string[] = [];
    const methods = ['log', 'info', 'warn', 'error', 'debug'] as const;
    const saved = methods.map((m) => console[m]);
    for (const m of methods) console[m] = (...args: unknown[]) => void lines.push(args.map(String).join(' '));
    try {
      const s = await ort.InferenceSession.create(bytes, {
        executionProviders: ['webgpu'],
        logSeverityLevel: 0,
        logVerbosityLevel: 0,
      });
      await s.release();
    } finally {
      methods.forEach((m, i) => (console[m] = saved[i]));
    }
    return lines;
  },
  async memory() {
    const p = performance as Performance & {
      measureUserAgentSpecificMemory?: () => Promise<{ bytes: number }>;
    };
    return p.measureUserAgentSpecificMemory ? (await p.measureUserAgentSpecificMemory()).bytes : NaN;
  },
};

(globalThis as unknown as { quant: QuantPage }).quant = page;
