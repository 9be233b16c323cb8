/**
 * The adapter gallery: the manifest's adapters (rt.adapters.catalog()), each with its method, size
 * and cache state, a download progress bar (rt.adapters.install with onProgress: from IndexedDB when
 * cached there, else downloaded, verified and cached), and buttons to download it, use it (alone) or
 * turn it off (out of the active set). Every row is re-read from the worker after any change.
 *
 * Rows carry their state for tests and styles: data-state = remote | cached | active | failed
 * (cached: in IndexedDB or added), data-cache = cached | not-cached, data-added = true | false, and
 * data-from = cache | network once installed.
 */
import type { CatalogEntry, RemoteRuntime } from '../src/client.js';
import type { ActiveSpec } from '../src/runtime.js';
import { changed, onChange, refresher } from './changes.js';
import { $, element, errorText, formatBytes } from './dom.js';

interface Row {
  entry: CatalogEntry;
  li: HTMLLIElement;
  bar: HTMLProgressElement;
  /** The last install or activation of this row failed (until the next attempt). */
  failure?: string;
  downloading: boolean;
}

const part = <T extends Element>(li: Element, selector: string) => li.querySelector(selector) as T;

function rowFor(entry: CatalogEntry): Row {
  const bar = element('progress', { max: entry.bytes, value: 0 });
  const li = element(
    'li',
    {},
    element(
      'div',
      { className: 'title' },
      element('strong', {}, entry.id),
      element('span', { className: 'tag method' }, entry.method),
      element('small', {}, formatBytes(entry.bytes)),
      element('span', { className: 'tag state' }),
    ),
    element('small', { className: 'desc' }, entry.description ?? ''),
    element(
      'div',
      { className: 'actions' },
      bar,
      element('small', { className: 'where' }),
      element('button', { type: 'button', className: 'install' }, 'Download'),
      element('button', { type: 'button', className: 'use' }, 'Use'),
      element('button', { type: 'button', className: 'off' }, 'Turn off'),
    ),
    element('span', { className: 'error' }),
  );
  li.dataset.id = entry.id;
  return { entry, li, bar, downloading: false };
}

/** Shows a row as the worker last reported it. */
function render(row: Row, entry: CatalogEntry, weight: number | undefined, blended: boolean): void {
  row.entry = entry;
  const { li, bar } = row;
  const stored = entry.cached || entry.added;
  li.dataset.state = row.failure ? 'failed' : entry.active ? 'active' : stored ? 'cached' : 'remote';
  li.dataset.cache = entry.cached ? 'cached' : 'not-cached';
  li.dataset.added = String(entry.added);
  part(li, '.state').textContent = entry.active
    ? blended
      ? `active · weight ${weight ?? 1} in a blend`
      : 'active'
    : entry.added
      ? 'added'
      : entry.cached
        ? 'cached'
        : 'not cached';
  if (!row.downloading) bar.value = stored ? entry.bytes : 0;
  part(li, '.error').textContent = row.failure ?? '';
  const install = part<HTMLButtonElement>(li, '.install');
  install.hidden = entry.added;
  install.textContent = entry.cached ? 'Load' : 'Download';
  install.title = entry.cached ? 'Read it from IndexedDB (sha256 checked)' : 'Download, verify and cache it';
  part<HTMLButtonElement>(li, '.off').hidden = !entry.active;
  for (const button of li.querySelectorAll('button')) button.disabled = !entry.compatible || row.downloading;
  if (!entry.compatible) part(li, '.where').textContent = 'made for another base model';
  else if (!li.dataset.from) part(li, '.where').textContent = entry.cached ? 'in IndexedDB' : 'on the server';
}

export async function wireGallery(rt: RemoteRuntime): Promise<void> {
  const list = $('adapters');
  const rows = new Map<string, Row>();
  const restored = rt.restored.active.map((a) => a.id).join(', ');
  const summary =
    (restored ? `; restored from the last session: ${restored}` : '') +
    (rt.restored.error
      ? `; the last session's adapters could not be restored: ${rt.restored.error.message}`
      : '');

  /** Adds the row's adapter (from IndexedDB or the network), with progress. */
  const install = async (row: Row) => {
    row.downloading = true;
    row.failure = undefined;
    render(row, row.entry, undefined, false);
    try {
      const installed = await rt.adapters.install(row.entry.id, {
        onProgress: (p) => (row.bar.value = p.loaded),
      });
      if (installed.from !== 'memory') {
        row.li.dataset.from = installed.from;
        const evicted = installed.evicted?.length
          ? ` (evicted ${installed.evicted.map((e) => e.id).join(', ')} to make room)`
          : '';
        part(row.li, '.where').textContent =
          (installed.cacheError
            ? `downloaded (not cached: ${installed.cacheError.message})`
            : installed.from === 'cache'
              ? 'loaded from IndexedDB'
              : 'downloaded and cached in IndexedDB') + evicted;
      }
    } finally {
      row.downloading = false;
    }
  };

  /** Runs a row's action; a failure marks the row failed with the error, by name. */
  const act = (row: Row, action: () => Promise<unknown>) =>
    void action()
      .catch((e: unknown) => (row.failure = errorText(e)))
      .finally(() => changed('adapters', 'storage'));

  const add = (entry: CatalogEntry): Row => {
    const row = rowFor(entry);
    part(row.li, '.install').addEventListener('click', () => act(row, () => install(row)));
    part(row.li, '.use').addEventListener('click', () =>
      act(row, async () => {
        await install(row);
        await rt.adapters.activate(row.entry.id);
      }),
    );
    part(row.li, '.off').addEventListener('click', () =>
      act(row, async () => {
        const rest = (await rt.adapters.active()).filter((a) => a.id !== row.entry.id);
        await (rest.length ? rt.adapters.activate(rest) : rt.adapters.deactivate());
      }),
    );
    rows.set(entry.id, row);
    list.append(row.li);
    return row;
  };

  const show = (entries: CatalogEntry[], active: ActiveSpec[]) => {
    for (const entry of entries) {
      const spec = active.find((a) => a.id === entry.id);
      render(rows.get(entry.id) ?? add(entry), entry, spec?.weight, active.length > 1);
    }
    const cached = entries.filter((e) => e.cached).length;
    $('adapters-status').textContent =
      `${entries.length} adapters, ${cached} cached on this device${summary}`;
  };
  const read = () => Promise.all([rt.adapters.catalog(), rt.adapters.active()]);
  const refresh = refresher(async () => show(...(await read())));

  $('base').addEventListener('click', () => {
    void rt.adapters.deactivate().finally(() => changed('adapters'));
  });
  onChange(['adapters'], () => void refresh());
  show(...(await read()));
}
