/**
 * The service worker, registered with workbox-window. `onState` follows it ('installing' on the first
 * visit, 'ready' once the app shell, onnxruntime and the model are cached); `onUpdate` is called when
 * a new version is installed and waiting: calling its `accept` activates it and reloads the page.
 */
import { Workbox } from 'workbox-window';

export type ServiceWorkerState = 'unsupported' | 'installing' | 'ready' | 'update-waiting' | 'failed';

export function registerServiceWorker(
  url: string,
  onState: (state: ServiceWorkerState, detail?: string) => void,
  onUpdate: (accept: () => void) => void,
): Workbox | undefined {
  if (!('serviceWorker' in navigator)) {
    onState('unsupported');
    return undefined;
  }
  const wb = new Workbox(url);
  let waiting = false;
  wb.addEventListener('waiting', () => {
    waiting = true;
    onState('update-waiting');
    onUpdate(() => {
      wb.addEventListener('controlling', () => location.reload());
      wb.messageSkipWaiting();
    });
  });
  onState(navigator.serviceWorker.controller ? 'ready' : 'installing');
  wb.register().then(
    () => navigator.serviceWorker.ready.then(() => waiting || onState('ready')),
    (e: unknown) => onState('failed', String(e)),
  );
  return wb;
}
