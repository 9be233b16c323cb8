import { ModelFormatError } from '../errors.js';

/**
 * Where a model folder's files come from: a local folder in Node, a URL prefix in browsers, or
 * anything else that can read a file by its relative name.
 */

/** Reads a file of the folder by relative name; `undefined` when it does not exist. */
export type ReadFile = (name: string) => Promise<Uint8Array | undefined>;

export interface FileSource {
  /** A name for messages: the folder path or base URL. */
  label: string;
  read: ReadFile;
}

/** Files under a base URL, fetched with `fetch`. A 404 is a missing file; other failures throw. */
export function urlSource(baseUrl: string | URL, init?: RequestInit): FileSource {
  const base = new URL(String(baseUrl).endsWith('/') ? String(baseUrl) : `${String(baseUrl)}/`);
  return {
    label: base.href,
    async read(name) {
      const response = await fetch(new URL(name, base), init);
      if (response.status === 404) return undefined;
      if (!response.ok)
        throw new Error(`${new URL(name, base).href}: HTTP ${response.status} ${response.statusText}`);
      return new Uint8Array(await response.arrayBuffer());
    },
  };
}

/** Files kept in memory, by name (tests, and folders assembled in the page). */
export function memorySource(files: ReadonlyMap<string, Uint8Array>, label = 'memory'): FileSource {
  return { label, read: async (name) => files.get(name) };
}

export async function readJson(source: FileSource, name: string): Promise<unknown | undefined> {
  const bytes = await source.read(name);
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (cause) {
    throw new ModelFormatError(
      `${source.label}/${name}`,
      undefined,
      `not valid JSON: ${(cause as Error).message}`,
    );
  }
}
