/**
 * How the panels keep in step. A panel that changes the worker's state (an install, an activation,
 * a training run, an eviction) calls `changed(...)`; every panel that shows that state re-reads it
 * from the worker (the only source of truth) with a `refresher`, which runs one refresh at a time
 * and, when asked again meanwhile, once more afterwards, so the last state always wins.
 */

/** adapters: added, active, cached; personal: versions; feedback: the log; storage: IndexedDB use. */
export type Change = 'adapters' | 'personal' | 'feedback' | 'storage';

const bus = new EventTarget();

export function changed(...what: Change[]): void {
  for (const w of what) bus.dispatchEvent(new Event(w));
}

/** Calls `run` after any of these changes. */
export function onChange(what: Change[], run: () => void): void {
  for (const w of what) bus.addEventListener(w, run);
}

/**
 * `render` serialized: a call while one runs schedules exactly one more run after it. A render that
 * fails is logged (a panel shows its own errors); the next call runs again.
 */
export function refresher(render: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  let again = false;
  const loop = async () => {
    try {
      do {
        again = false;
        await render().catch((e: unknown) => console.error(e));
      } while (again);
    } finally {
      running = undefined;
    }
  };
  return () => {
    if (running) again = true;
    else running = loop();
    return running;
  };
}
