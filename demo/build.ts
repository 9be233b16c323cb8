/**
 * Builds the demo PWA into a self-contained folder (default demo/out/):
 *
 *   index.html, main.js, worker.js, chunk-*.js   the page and the runtime worker (esbuild)
 *   manifest.webmanifest, icon*.png, icon.svg    the web app manifest and its icons (PNG drawn here)
 *   ort/                                         onnxruntime-web's wasm files (wasm and WebGPU builds)
 *   model/                                       the demo's model (DEMO_MODEL below)
 *   adapters.json, adapters/                     a manifest and the demo adapters (demo/make-adapters.ts)
 *   sw.js, workbox-*.js                          the service worker (workbox generateSW)
 *   _headers                                     COOP/COEP for static hosts that read it
 *
 * The service worker precaches the app shell (icons included), the wasm build of onnxruntime-web and
 * the model. It caches the WebGPU build of onnxruntime-web on first use (only WebGPU devices load it).
 * Adapters and adapters.json are not in its caches: the runtime keeps them in IndexedDB
 * (src/adapter-catalog.ts).
 *
 *   npx tsx demo/build.ts [out-dir] [--version V]
 */
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { generateSW } from 'workbox-build';
import { writeAdapterBundle } from '../src/store/bundle.js';
import { modelFingerprint, MANIFEST_VERSION } from '../src/store/manifest.js';
import { DEFAULT_MODEL_DIR } from '../models/default-model.js';
import { appIcons } from './icons.js';
import { demoAdapters } from './make-adapters.js';
import { ISOLATION_HEADERS } from './server.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
export const DEFAULT_OUT = path.join(ROOT, 'demo', 'out');

/**
 * The model the demo runs: its name (the manifest's base name, the adapters' base_model_name_or_path)
 * and where its folder comes from. The demo's adapters are made against it (./make-adapters.ts).
 */
export const DEMO_MODEL = { name: 'edge-adapters/default', folder: async () => DEFAULT_MODEL_DIR };

/** onnxruntime-web's glue and binaries: the wasm build (every device) and the WebGPU build. */
const ORT_FILES = {
  wasm: ['ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'],
  webgpu: ['ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm'],
};

export interface BuildOptions {
  /** The output folder: empty, absent, or an earlier build (it is emptied first). */
  out?: string;
  /** Shown on the page; a new value changes index.html and so the service worker. */
  version?: string;
  /** A model folder (default: DEMO_MODEL's). */
  model?: string;
}

export interface BuildResult {
  out: string;
  version: string;
  /** Files the service worker precaches, and their bytes. */
  precached: { count: number; bytes: number };
  /** workbox-build's warnings (a file over the size limit is not precached). */
  warnings: string[];
}

/** Empties `out` for a new build; refuses a folder that holds anything but an earlier build. */
function prepareOut(out: string): void {
  const entries = existsSync(out) ? readdirSync(out) : [];
  if (entries.length > 0 && !entries.includes('sw.js'))
    throw new Error(`${out} is not empty and holds no earlier demo build: refusing to empty it`);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(path.join(out, 'ort'), { recursive: true });
  mkdirSync(path.join(out, 'adapters'));
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** The demo adapters as files under out/adapters/, and the manifest that lists them. */
async function writeAdapters(out: string, modelDir: string): Promise<void> {
  const config = JSON.parse(readFileSync(path.join(modelDir, 'config.json'), 'utf8')) as object;
  const base = await modelFingerprint(config);
  const entries = demoAdapters().map(({ id, method, description, format, files }) => {
    const entry = { id, version: '1', method, base, description, format };
    const config = files.get('adapter_config.json') as Uint8Array;
    const weights = files.get('adapter_model.safetensors') as Uint8Array;
    if (format === 'zip') {
      const zip = writeAdapterBundle(files);
      writeFileSync(path.join(out, 'adapters', `${id}.zip`), zip);
      return { ...entry, url: `adapters/${id}.zip`, sha256: sha256(zip), bytes: zip.length };
    }
    mkdirSync(path.join(out, 'adapters', id));
    for (const [name, bytes] of files) writeFileSync(path.join(out, 'adapters', id, name), bytes);
    return {
      ...entry,
      url: `adapters/${id}/`,
      sha256: sha256(weights),
      bytes: weights.length,
      config_sha256: sha256(config),
    };
  });
  const manifest = {
    version: MANIFEST_VERSION,
    base: { fingerprint: base, name: DEMO_MODEL.name },
    adapters: entries,
  };
  writeFileSync(path.join(out, 'adapters.json'), `${JSON.stringify(manifest, null, 2)}\n`);
}

export async function buildDemo(options: BuildOptions = {}): Promise<BuildResult> {
  const out = path.resolve(options.out ?? DEFAULT_OUT);
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const version = options.version ?? pkg.version;
  const modelDir = options.model ?? (await DEMO_MODEL.folder());
  prepareOut(out);
  cpSync(modelDir, path.join(out, 'model'), { recursive: true });
  const require = createRequire(import.meta.url);
  for (const file of [...ORT_FILES.wasm, ...ORT_FILES.webgpu])
    copyFileSync(require.resolve(`onnxruntime-web/${file}`), path.join(out, 'ort', file));
  await writeAdapters(out, modelDir);

  await build({
    entryPoints: [
      { in: path.join(ROOT, 'demo/main.ts'), out: 'main' },
      { in: path.join(ROOT, 'workers/runtime.worker.ts'), out: 'worker' },
    ],
    outdir: out,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    // onnxruntime-web loads its .mjs glue and .wasm from ort/ at run time (wasmPaths)
    conditions: ['onnxruntime-web-use-extern-wasm'],
    external: ['node:*'],
    minify: true,
    sourcemap: 'linked',
    logLevel: 'error',
  });
  const html = readFileSync(path.join(ROOT, 'demo/index.html'), 'utf8');
  writeFileSync(path.join(out, 'index.html'), html.replaceAll('%VERSION%', version));
  for (const file of ['manifest.webmanifest', 'icon.svg'])
    copyFileSync(path.join(ROOT, 'demo', file), path.join(out, file));
  for (const [file, png] of appIcons()) writeFileSync(path.join(out, file), png);
  const headers = Object.entries(ISOLATION_HEADERS).map(([name, value]) => `  ${name}: ${value}\n`);
  writeFileSync(path.join(out, '_headers'), `/*\n${headers.join('')}`);

  const { count, size, warnings } = await generateSW({
    globDirectory: out,
    globPatterns: ['**/*'],
    globIgnores: [
      'adapters/**',
      'adapters.json',
      '_headers',
      '**/*.map',
      ...ORT_FILES.webgpu.map((f) => `ort/${f}`),
    ],
    swDest: path.join(out, 'sw.js'),
    maximumFileSizeToCacheInBytes: 64 * 2 ** 20,
    runtimeCaching: [
      {
        urlPattern: /\/ort\/ort-wasm-simd-threaded\.asyncify\.(mjs|wasm)$/,
        handler: 'CacheFirst',
        options: { cacheName: 'onnxruntime-webgpu' },
      },
    ],
    cleanupOutdatedCaches: true,
    sourcemap: false,
    mode: 'production',
  });
  return { out, version, precached: { count, bytes: size }, warnings };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const at = args.indexOf('--version');
  const version = at >= 0 ? args.splice(at, 2)[1] : undefined;
  const result = await buildDemo({ out: args[0], version });
  for (const warning of result.warnings) console.warn(`warning: ${warning}`);
  const mb = (result.precached.bytes / 2 ** 20).toFixed(1);
  console.log(
    `demo built in ${result.out} (version ${result.version}); the service worker precaches ${result.precached.count} files, ${mb} MB`,
  );
}
