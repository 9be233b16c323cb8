/** What a benchmark page exposes as `globalThis.bench` (ours and transformers.js alike). */
export interface BenchPage {
  /** Loads the model folder at `modelUrl` with `threads` wasm threads; onnxruntime-web's files at `ortUrl`. */
  load(
    modelUrl: string,
    threads: number,
    ortUrl: string,
  ): Promise<{ loadMs: number; crossOriginIsolated: boolean }>;
  /** Greedy generation of `maxNew` tokens after the prompt ids, EOS off. */
  generate(ids: number[], maxNew: number): Promise<{ ms: number; tokens: number[] }>;
}
