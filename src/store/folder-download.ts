/**
 * The files of a folder URL (a model folder, a PEFT adapter folder) as a FileSource, downloaded with
 * progress per file. A 404 is a missing file. Each file is fetched once and kept until `clear()`, since
 * loaders read some files twice.
 */
import type { FileSource } from '../formats/files.js';
import { FetchError } from './errors.js';
import { fetchWithProgress, type FetchProgress } from './fetch.js';

/** One file of a download: bytes received so far and the expected size (Content-Length), when known. */
export interface DownloadProgress extends FetchProgress {
  /** The file's name in its folder (`model.onnx`, `adapter_model.safetensors`). */
  file: string;
  url: string;
}

export function folderDownload(
  folder: string,
  onProgress: ((p: DownloadProgress) => void) | undefined,
): FileSource & { clear(): void } {
  const base = new URL(folder.endsWith('/') ? folder : `${folder}/`);
  const kept = new Map<string, Promise<Uint8Array | undefined>>();
  const read = async (name: string): Promise<Uint8Array | undefined> => {
    const url = new URL(name, base).href;
    try {
      return await fetchWithProgress(url, {
        onProgress: onProgress && ((p) => onProgress({ file: name, url, ...p })),
      });
    } catch (e) {
      if (e instanceof FetchError && e.status === 404) return undefined;
      throw e;
    }
  };
  return {
    label: base.href,
    read(name) {
      let bytes = kept.get(name);
      if (bytes === undefined) kept.set(name, (bytes = read(name)));
      return bytes;
    },
    clear: () => kept.clear(),
  };
}
