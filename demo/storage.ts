/**
 * The storage panel: what this device keeps, and room to make. The adapter cache in IndexedDB
 * (rt.adapters.usage(): bytes, entries, the byte budget, and the origin's usage and quota), each
 * cached adapter with its size and an "Evict" button (rt.adapters.uninstall: out of the runtime and
 * out of IndexedDB), the personal adapter's versions and feedback log, and the service worker's
 * caches (the app shell, onnxruntime and the model). #usage carries data-bytes and data-entries.
 */
import type { RemoteRuntime } from '../src/client.js';
import { changed, onChange, refresher } from './changes.js';
import { $, element, errorText, formatBytes } from './dom.js';

/** The service worker's caches and how many responses each holds. */
async function serviceWorkerCaches(): Promise<{ name: string; files: number }[]> {
  if (!('caches' in globalThis)) return [];
  const names = await caches.keys();
  return Promise.all(
    names.map(async (name) => ({ name, files: (await (await caches.open(name)).keys()).length })),
  );
}

export function wireStorage(rt: RemoteRuntime): void {
  const error = $('storage-error');

  const refresh = refresher(async () => {
    const [usage, entries, active, history, feedback, swCaches] = await Promise.all([
      rt.adapters.usage(),
      rt.adapters.catalog(),
      rt.adapters.active(),
      rt.personal.history(),
      rt.personal.feedbackLog(),
      serviceWorkerCaches().catch(() => []),
    ]);
    const summary = $('usage');
    summary.dataset.bytes = String(usage.bytes);
    summary.dataset.entries = String(usage.entries);
    summary.textContent = `${usage.entries} adapter${usage.entries === 1 ? '' : 's'} cached, ${formatBytes(usage.bytes)} of a ${formatBytes(usage.budgetBytes)} budget (least recently used evicted above it).`;
    const meter = $<HTMLMeterElement>('usage-meter');
    meter.max = usage.budgetBytes;
    meter.value = usage.bytes;
    $('origin').textContent =
      usage.usage !== undefined && usage.quota !== undefined
        ? `This origin uses ${formatBytes(usage.usage)} of ${formatBytes(usage.quota)} the browser allows` +
          (rt.persisted === undefined
            ? '.'
            : `; persistent storage: ${rt.persisted ? 'granted' : 'not granted'}.`)
        : 'The browser does not report its storage quota.';

    const cached = entries.filter((e) => e.cached);
    $('cached').replaceChildren(
      ...cached.map((entry) => {
        const evict = element('button', { type: 'button', className: 'evict' }, 'Evict');
        evict.addEventListener('click', () => {
          evict.disabled = true;
          error.textContent = '';
          void rt.adapters
            .uninstall(entry.id)
            .catch((e: unknown) => (error.textContent = errorText(e)))
            .finally(() => changed('adapters', 'storage'));
        });
        const state = active.some((a) => a.id === entry.id) ? ' · active' : entry.added ? ' · added' : '';
        const li = element(
          'li',
          {},
          element('strong', {}, entry.id),
          ' ',
          element('small', {}, `${entry.method} · ${formatBytes(entry.bytes)}${state}`),
          ' ',
          evict,
        );
        li.dataset.id = entry.id;
        li.dataset.bytes = String(entry.bytes);
        return li;
      }),
    );
    if (cached.length === 0)
      $('cached').append(element('li', {}, element('small', {}, 'No adapter cached.')));

    const personalBytes = history.reduce((n, v) => n + v.bytes, 0);
    $('personal-storage').textContent =
      `Personal adapter: ${history.length} version${history.length === 1 ? '' : 's'}, ${formatBytes(personalBytes)}; ` +
      `feedback log: ${feedback.length} event${feedback.length === 1 ? '' : 's'} (IndexedDB).`;
    $('sw-caches').textContent = swCaches.length
      ? `Service worker: ${swCaches.map((c) => `${c.name} (${c.files} files)`).join(', ')}.`
      : 'Service worker: nothing cached yet.';
  });

  onChange(['adapters', 'storage', 'personal', 'feedback'], () => void refresh());
  void refresh();
}
