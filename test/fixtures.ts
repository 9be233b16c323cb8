import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** The shared fixtures folder, `../shared/fixtures` from the project root. */
export const FIXTURES = fileURLToPath(new URL('../../shared/fixtures/', import.meta.url));

/** The absolute path of a fixture; throws naming the path when it is missing (tests never skip silently). */
export function fixture(relative: string): string {
  const p = path.join(FIXTURES, relative);
  if (!existsSync(p)) throw new Error(`missing test fixture: ${p} (see ../shared/fixtures/README.md)`);
  return p;
}
