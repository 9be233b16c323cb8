/**
 * The demo page: the default model in a web worker (createRuntime), the adapters of adapters.json,
 * streamed generation, and the service worker that keeps it all working offline.
 */
import { createRuntime, type LoadProgress, type RemoteRuntime } from '../src/client.js';
import { showAdapters } from './adapter-list.js';
import { registerServiceWorker } from './pwa.js';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const errorText = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));

$('version').textContent = document.querySelector<HTMLMetaElement>('meta[name=build]')?.content ?? '';
const threads = crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
$('isolated').textContent = crossOriginIsolated
  ? `yes (${threads} wasm thread${threads > 1 ? 's' : ''})`
  : 'no (one wasm thread)';

registerServiceWorker(
  'sw.js',
  (state, detail) => {
    const sw = $('sw');
    sw.dataset.state = state;
    sw.textContent = {
      unsupported: 'not supported by this browser',
      installing: 'installing (caching the app, onnxruntime and the model)',
      ready: 'ready: the app works offline',
      'update-waiting': 'a new version is waiting',
      failed: `failed to register (${detail})`,
    }[state];
  },
  (accept) => {
    $('update').hidden = false;
    $('update-accept').addEventListener('click', accept, { once: true });
  },
);

/** One progress bar per model file. */
function showLoadProgress(p: LoadProgress): void {
  if (p.stage === 'session') {
    $('status').textContent = `Building the inference session on ${p.backend}…`;
    return;
  }
  const id = `file-${p.file}`;
  let bar = document.getElementById(id) as HTMLProgressElement | null;
  if (!bar) {
    bar = Object.assign(document.createElement('progress'), { id });
    const label = document.createElement('div');
    label.append(bar, ` ${p.file}`);
    $('model-progress').append(label);
  }
  if (p.total !== undefined) bar.max = p.total;
  bar.value = p.loaded;
}

function wireGeneration(rt: RemoteRuntime): void {
  const output = $('output');
  const run = $<HTMLButtonElement>('run');
  const stop = $<HTMLButtonElement>('stop');
  let controller: AbortController | undefined;
  stop.addEventListener('click', () => controller?.abort());
  $('generate').addEventListener('submit', (event) => {
    event.preventDefault();
    controller = new AbortController();
    const prompt = $<HTMLTextAreaElement>('prompt').value;
    const maxTokens = Number($<HTMLInputElement>('max-tokens').value) || 100;
    output.textContent = '';
    output.dataset.state = 'running';
    delete output.dataset.finish;
    $('error').textContent = '';
    run.disabled = true;
    stop.disabled = false;
    void (async () => {
      try {
        const chunks = rt.generate(prompt, { maxTokens, signal: controller.signal });
        for (;;) {
          const next = await chunks.next();
          if (next.done) {
            output.dataset.finish = next.value;
            break;
          }
          output.textContent += next.value.text;
        }
      } catch (e) {
        output.dataset.finish = e instanceof DOMException && e.name === 'AbortError' ? 'aborted' : 'error';
        if (output.dataset.finish === 'error') $('error').textContent = errorText(e);
      } finally {
        output.dataset.state = 'done';
        run.disabled = false;
        stop.disabled = true;
      }
    })();
  });
  run.disabled = false;
}

async function start(): Promise<void> {
  const backend = new URLSearchParams(location.search).get('backend');
  const rt = await createRuntime({
    model: 'model/',
    manifest: 'adapters.json',
    workerUrl: new URL('worker.js', import.meta.url),
    wasmPaths: 'ort/',
    backend: backend === 'wasm' || backend === 'webgpu' ? backend : 'auto',
    threads,
    onProgress: showLoadProgress,
  });
  $('backend').textContent = rt.backend.name;
  $('backend').dataset.name = rt.backend.name;
  const q = rt.backend.quantization;
  $('backend-reason').textContent =
    rt.backend.reason +
    (q
      ? ` · ${q.formats.join('/')} base, ${q.kernels === 'native' ? 'quantized ops' : 'dequantized at load'}`
      : '');
  $('status').textContent = 'Model ready.';
  $('status').dataset.state = 'ready';
  wireGeneration(rt);
  try {
    await showAdapters(rt, $('adapters'), $('adapters-status'), $<HTMLButtonElement>('base'));
  } catch (e) {
    $('adapters-status').textContent = `No adapters: ${errorText(e)}`;
  }
}

start().catch((e: unknown) => {
  $('status').textContent = `The model failed to load: ${errorText(e)}`;
  $('status').dataset.state = 'failed';
});
