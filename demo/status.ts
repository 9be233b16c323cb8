/**
 * The status bar and the model's loading state: the backend badge (its reason on hover), the speed
 * of the last reply (measured on the page), the offline indicator (navigator.onLine and the
 * online/offline events), the service worker's state with its update prompt (./pwa.ts), an
 * "Install app" button when the browser offers installation, and the model's download progress.
 */
import type { BackendReport, LoadProgress } from '../src/client.js';
import { $, element } from './dom.js';
import { registerServiceWorker } from './pwa.js';

/** The build's version and whether the page is cross-origin isolated (wasm threads). */
export function showBuildInfo(threads: number): void {
  $('version').textContent = document.querySelector<HTMLMetaElement>('meta[name=build]')?.content ?? '';
  $('isolated').textContent = crossOriginIsolated
    ? `yes (${threads} wasm thread${threads > 1 ? 's' : ''})`
    : 'no (one wasm thread)';
}

/** #network: data-state online | offline, kept current by the browser's online/offline events. */
export function watchNetwork(): void {
  const badge = $('network');
  const show = () => {
    const online = navigator.onLine;
    badge.dataset.state = online ? 'online' : 'offline';
    badge.textContent = online ? 'online' : 'offline';
    badge.title = online
      ? 'The network is up; the app would work without it'
      : 'No network: the page, onnxruntime and the model come from the service worker, adapters and versions from IndexedDB';
  };
  addEventListener('online', show);
  addEventListener('offline', show);
  show();
}

/** The service worker (workbox), its state in #sw, and the update prompt (#update). */
export function watchServiceWorker(): void {
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
}

/** Chromium's install prompt event (not in TypeScript's DOM types). */
interface BeforeInstallPromptEvent extends Event {
  prompt(): Promise<void>;
  userChoice: Promise<{ outcome: 'accepted' | 'dismissed' }>;
}

/** Shows #install when the browser says the app can be installed (web manifest + service worker). */
export function offerInstall(): void {
  const button = $<HTMLButtonElement>('install');
  let offer: BeforeInstallPromptEvent | undefined;
  addEventListener('beforeinstallprompt', (event) => {
    event.preventDefault();
    offer = event as BeforeInstallPromptEvent;
    button.hidden = false;
  });
  addEventListener('appinstalled', () => (button.hidden = true));
  button.addEventListener('click', () => {
    if (!offer) return;
    void offer.prompt().then(() => offer?.userChoice.then(() => (button.hidden = true)));
    offer = undefined;
  });
}

/** One progress bar per model file, then the session build. */
export function showLoadProgress(p: LoadProgress): void {
  if (p.stage === 'session') {
    $('status').textContent = `Building the inference session on ${p.backend}…`;
    return;
  }
  const id = `file-${p.file}`;
  let bar = document.getElementById(id) as HTMLProgressElement | null;
  if (!bar) {
    bar = element('progress', { id });
    $('model-progress').append(element('div', {}, bar, ` ${p.file}`));
  }
  if (p.total !== undefined) bar.max = p.total;
  bar.value = p.loaded;
}

/** The model is loaded: the badge says on which backend, and why on hover (and in #backend-reason). */
export function showBackend(report: BackendReport): void {
  const badge = $('backend');
  const q = report.quantization;
  const reason =
    report.reason +
    (q
      ? ` · ${q.formats.join('/')} base, ${q.kernels === 'native' ? 'quantized ops' : 'dequantized at load'}`
      : '');
  badge.textContent = report.name;
  badge.dataset.name = report.name;
  badge.title = reason;
  $('backend-reason').textContent = reason;
  $('status').textContent = 'Model ready.';
  $('status').dataset.state = 'ready';
  $('model-progress').hidden = true;
}

export interface SpeedSample {
  tokens: number;
  /** From the request to its last token. */
  seconds: number;
  /** From the request to its first token. */
  firstTokenSeconds?: number;
}

/** #speed: tokens per second of the last reply, as the page saw them arrive. */
export function showSpeed({ tokens, seconds, firstTokenSeconds }: SpeedSample): void {
  const badge = $('speed');
  const rate = seconds > 0 ? tokens / seconds : 0;
  badge.dataset.tokensPerSecond = rate.toFixed(1);
  badge.textContent = `${rate >= 100 ? rate.toFixed(0) : rate.toFixed(1)} tok/s`;
  badge.title =
    `the last reply: ${tokens} tokens in ${seconds.toFixed(2)} s, measured on the page` +
    (firstTokenSeconds === undefined
      ? ''
      : ` (first token after ${(firstTokenSeconds * 1000).toFixed(0)} ms)`);
}
