/**
 * Long-lived benchmark workers in child processes, driven by the parent one request at a time.
 *
 * A worker is this same entry (bench/run.ts) started with `--worker KIND JSON`: it loads its model,
 * answers `ready`, then serves requests until told to exit. Several workers (different engines,
 * backends, thread counts) stay alive together, and the parent steps them in turns, so their
 * measurements interleave in time and share the machine's state: on a noisy 2-core VM this is what
 * makes their ratios meaningful. Only one worker computes at any moment.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

type Handler = (request: unknown) => Promise<unknown>;

interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

const ENTRY = fileURLToPath(new URL('../run.ts', import.meta.url));

export class Worker<Req, Res> {
  private next = 1;
  private readonly pending = new Map<number, { resolve: (v: Res) => void; reject: (e: Error) => void }>();
  private exited: Error | undefined;

  private constructor(
    readonly label: string,
    private readonly child: ChildProcess,
    /** What the worker reported once loaded (load times, memory). */
    readonly info: Record<string, number>,
  ) {
    child.on('message', (m: Reply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.value as Res);
      else p.reject(new Error(`${label}: ${m.error}`));
    });
    child.on('exit', (code, signal) => {
      this.exited = new Error(`${label}: worker exited (${signal ?? code})`);
      for (const p of this.pending.values()) p.reject(this.exited);
      this.pending.clear();
    });
  }

  static start<Req, Res>(label: string, kind: string, spec: unknown): Promise<Worker<Req, Res>> {
    const child = fork(ENTRY, ['--worker', kind, JSON.stringify(spec)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    return new Promise((resolve, reject) => {
      const onExit = (code: number | null) =>
        reject(new Error(`${label}: worker exited (${code}) while loading`));
      child.once('exit', onExit);
      child.once('message', (m: Reply) => {
        child.off('exit', onExit);
        if (m.ok) resolve(new Worker<Req, Res>(label, child, m.value as Record<string, number>));
        else {
          child.kill();
          reject(new Error(`${label}: ${m.error}`));
        }
      });
    });
  }

  call(request: Req): Promise<Res> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ id, request });
    });
  }

  /** Asks the worker to exit and waits for it. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.send({ id: 0, request: 'exit' });
    await done;
  }
}

/**
 * The child side: `load` builds the worker's state and returns its info; the returned handler serves
 * requests. Replies go back over IPC; an error in a request is returned, not fatal.
 */
export async function serveWorker(load: () => Promise<{ info: Record<string, number>; handle: Handler }>) {
  const send = (m: Reply) => new Promise<void>((r) => process.send?.(m, () => r()));
  let handle: Handler;
  try {
    const loaded = await load();
    handle = loaded.handle;
    await send({ id: 0, ok: true, value: loaded.info });
  } catch (error) {
    await send({
      id: 0,
      ok: false,
      error: error instanceof Error ? (error.stack ?? error.message) : String(error),
    });
    process.exit(1);
  }
  process.on('message', async (m: { id: number; request: unknown }) => {
    if (m.request === 'exit') {
      process.exit(0);
    }
    try {
      await send({ id: m.id, ok: true, value: await handle(m.request) });
    } catch (error) {
      await send({
        id: m.id,
        ok: false,
        error: error instanceof Error ? (error.stack ?? error.message) : String(error),
      });
    }
  });
}

/** Peak resident memory of this process, MB. */
export const peakRssMB = (): number => process.resourceUsage().maxRSS / 1024;
