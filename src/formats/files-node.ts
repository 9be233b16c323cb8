/** A local folder as a FileSource (Node only). */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { FileSource } from './files.js';

export function folderSource(dir: string): FileSource {
  return {
    label: dir,
    async read(name) {
      try {
        const buffer = await readFile(path.join(dir, name));
        return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw error;
      }
    },
  };
}
