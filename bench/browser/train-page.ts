/**
 * The page of bench/train.ts's Chromium part: one variant per page (bench/lib/train-steps.ts), its
 * model folder fetched from the bench's server. Sets `window.train`.
 */
import { urlSource } from '../../src/formats/files.js';
import { StepBench, wasmBytes, type Loaded, type RoundResult, type StepSpec } from '../lib/train-steps.js';

export interface TrainPage {
  /** Loads the variant, builds its sessions, runs one warm-up repetition. */
  load(spec: StepSpec, modelUrl: string, wasmPaths: string): Promise<Loaded>;
  /** `reps` forwards or optimizer steps, timed on the page. */
  repeat(reps: number): Promise<RoundResult>;
  /** MB: measureUserAgentSpecificMemory() (JS heap and wasm memory), and onnxruntime's wasm memory. */
  memory(): Promise<{ pageMB: number; wasmMB: number }>;
}

const MB = 2 ** 20;
let bench: StepBench | undefined;

const page: TrainPage = {
  async load(spec, modelUrl, wasmPaths) {
    const loaded = await StepBench.load(spec, urlSource(modelUrl), { wasmPaths });
    bench = loaded.bench;
    return loaded.loaded;
  },
  repeat(reps) {
    if (!bench) throw new Error('load first');
    return bench.repeat(reps);
  },
  async memory() {
    const p = performance as Performance & {
      measureUserAgentSpecificMemory?: () => Promise<{ bytes: number }>;
    };
    const bytes = p.measureUserAgentSpecificMemory ? (await p.measureUserAgentSpecificMemory()).bytes : NaN;
    return { pageMB: bytes / MB, wasmMB: wasmBytes() / MB };
  },
};

(globalThis as unknown as { train: TrainPage }).train = page;
