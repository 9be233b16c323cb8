/**
 * The demo page: the default model in a web worker (createRuntime) and the panels around it, each in
 * its own file: the status bar (./status.ts), the chat (./chat.ts) with feedback under every reply
 * (./feedback.ts), the adapter gallery (./gallery.ts) and blend sliders (./blend.ts), the learning
 * panel (./learning.ts) and the storage panel (./storage.ts). The service worker (./pwa.ts) keeps it
 * all working offline. `window.demo.rt` is the runtime, for the console and the browser test.
 */
import { createRuntime, type RemoteRuntime } from '../src/client.js';
import { wireBlend } from './blend.js';
import { wireChat } from './chat.js';
import { $, errorText } from './dom.js';
import { attachFeedback } from './feedback.js';
import { wireGallery } from './gallery.js';
import { PERSONAL_LORA, wireLearning } from './learning.js';
import {
  offerInstall,
  showBackend,
  showBuildInfo,
  showLoadProgress,
  showSpeed,
  watchNetwork,
  watchServiceWorker,
} from './status.js';
import { wireStorage } from './storage.js';

declare global {
  interface Window {
    demo?: { rt: RemoteRuntime };
  }
}

const threads = crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
showBuildInfo(threads);
watchNetwork();
watchServiceWorker();
offerInstall();

async function start(): Promise<void> {
  const backend = new URLSearchParams(location.search).get('backend');
  const rt = await createRuntime({
    model: 'model/',
    manifest: 'adapters.json',
    workerUrl: new URL('worker.js', import.meta.url),
    wasmPaths: 'ort/',
    backend: backend === 'wasm' || backend === 'webgpu' ? backend : 'auto',
    threads,
    personal: { lora: PERSONAL_LORA },
    onProgress: showLoadProgress,
  });
  window.demo = { rt };
  showBackend(rt.backend);
  wireChat(rt, { onReply: (reply) => attachFeedback(rt, reply), onSpeed: showSpeed });
  wireBlend(rt);
  wireLearning(rt);
  wireStorage(rt);
  try {
    await wireGallery(rt);
  } catch (e) {
    $('adapters-status').textContent = `No adapters: ${errorText(e)}`;
  }
}

start().catch((e: unknown) => {
  $('status').textContent = `The model failed to load: ${errorText(e)}`;
  $('status').dataset.state = 'failed';
});
