/** Small DOM helpers shared by the demo's panels. */

/** The element with this id (the page's markup, demo/index.html, has every id the panels use). */
export const $ = <T extends Element = HTMLElement>(id: string): T => {
  const el: Element | null = document.getElementById(id);
  if (el === null) throw new Error(`demo/index.html has no element #${id}`);
  return el as T;
};

/** A new element with properties and children: element('button', { type: 'button' }, 'Go'). */
export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

/** A typed error as the page shows it: `FetchError: ...`. */
export const errorText = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));

/** 17.2 KB, 1.40 MB, 9.8 GB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** Offers `bytes` as a file download named `name`. */
export function download(name: string, bytes: Uint8Array, type = 'application/octet-stream'): void {
  const url = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type }));
  const a = element('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
