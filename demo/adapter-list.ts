/**
 * The adapter list: the runtime's catalog (the entries of adapters.json, with whether each is cached
 * in IndexedDB, installed and active), each with its download progress and a button that installs it
 * (from IndexedDB when cached there, else downloaded, verified and cached) and activates it. Rows
 * carry their state for tests and styles: data-state = remote | cached | active | failed, and
 * data-from = cache | network once installed.
 */
import type { CatalogEntry, RemoteRuntime } from '../src/client.js';

const megabytes = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MB`;

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

export async function showAdapters(
  rt: RemoteRuntime,
  list: HTMLElement,
  status: HTMLElement,
  baseButton: HTMLButtonElement,
): Promise<void> {
  const entries = await rt.adapters.catalog();
  const rows = new Map<string, HTMLLIElement>();
  const where = (row: HTMLLIElement) => row.querySelector('.where') as HTMLElement;

  const markActive = (id: string | undefined) => {
    for (const [rowId, row] of rows) {
      if (rowId === id) row.dataset.state = 'active';
      else if (row.dataset.state === 'active') row.dataset.state = 'cached';
    }
  };

  const use = async (entry: CatalogEntry, row: HTMLLIElement, bar: HTMLProgressElement) => {
    const error = row.querySelector('.error') as HTMLElement;
    error.textContent = '';
    try {
      const installed = await rt.adapters.install(entry.id, { onProgress: (p) => (bar.value = p.loaded) });
      if (installed.from !== 'memory') {
        row.dataset.from = installed.from;
        where(row).textContent = installed.cacheError
          ? `downloaded (not cached: ${installed.cacheError.message})`
          : installed.from === 'cache'
            ? 'loaded from IndexedDB'
            : 'downloaded and cached in IndexedDB';
      }
      await rt.adapters.activate(entry.id);
      markActive(entry.id);
    } catch (e) {
      row.dataset.state = 'failed';
      error.textContent = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    }
  };

  for (const entry of entries) {
    const bar = element('progress', { max: entry.bytes, value: entry.cached ? entry.bytes : 0 });
    const button = element('button', { type: 'button', className: 'use' }, 'Use');
    const row = element(
      'li',
      {},
      element('strong', {}, entry.id),
      ' ',
      element('small', {}, `${entry.method} · ${megabytes(entry.bytes)}`),
      element('br'),
      element('small', {}, entry.description ?? ''),
      element('br'),
      bar,
      ' ',
      element('small', { className: 'where' }, entry.cached ? 'cached in IndexedDB' : 'not downloaded'),
      ' ',
      button,
      element('span', { className: 'error' }),
    );
    row.dataset.id = entry.id;
    row.dataset.state = entry.active ? 'active' : entry.cached ? 'cached' : 'remote';
    if (!entry.compatible) {
      button.disabled = true;
      where(row).textContent = 'made for another base model';
    }
    button.addEventListener('click', () => {
      button.disabled = true;
      void use(entry, row, bar).finally(() => (button.disabled = false));
    });
    rows.set(entry.id, row);
    list.append(row);
  }
  baseButton.addEventListener('click', () => {
    void rt.adapters.deactivate().then(() => markActive(undefined));
  });
  const cached = entries.filter((e) => e.cached).length;
  const restored = rt.restored.active.map((a) => a.id).join(', ');
  status.textContent =
    `${entries.length} adapters, ${cached} cached on this device` +
    (restored ? `; restored from the last session: ${restored}` : '') +
    (rt.restored.error
      ? `; the last session's adapters could not be restored: ${rt.restored.error.message}`
      : '');
}
