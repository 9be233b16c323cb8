#!/usr/bin/env node
// The published CLI runs the compiled code; a checkout without a build runs the sources through tsx.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

let cli;
if (existsSync(fileURLToPath(new URL('../dist/cli.js', import.meta.url)))) {
  cli = await import('../dist/cli.js');
} else {
  const { register } = await import('tsx/esm/api');
  register();
  cli = await import('../src/cli.ts');
}
await cli.run(process.argv.slice(2));
