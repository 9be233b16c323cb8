/**
 * The training test page: the personal adapter of a runtime in a worker (rt.feedback, rt.train,
 * rt.personal) driven through `window.training`, on top of the runtimes of ./page.ts.
 */
import { failure, get } from './page.js';
import type { FeedbackEvent, TrainEvent, TrainReport, TrainRequest } from '../../src/client.js';
import type { Failure, LongTask } from './page.js';

interface Training {
  report?: TrainReport;
  failure?: Failure;
  events: TrainEvent[];
  /** Generations asked for while the run trained: the step they followed, when their first chunk came. */
  during: { afterStep: number; text: string; firstChunk: number }[];
  /** When the run's report reached the page. */
  trainedAt?: number;
  longTasks: LongTask[];
}

const runs = new Map<string, Promise<Training>>();
const controllers = new Map<string, AbortController>();
const longTasks: LongTask[] = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) longTasks.push({ start: e.startTime, duration: e.duration });
}).observe({ type: 'longtask', buffered: true });

const api = {
  async feedback(key: string, events: FeedbackEvent[]): Promise<string[]> {
    const ids: string[] = [];
    for (const e of events) ids.push((await get(key).feedback(e)).id);
    return ids;
  },
  async feedbackFailure(key: string, event: unknown): Promise<Failure | undefined> {
    try {
      await get(key).feedback(event as FeedbackEvent);
      return undefined;
    } catch (e) {
      return failure(e);
    }
  },
  /**
   * Starts a training run under `tag`. With `generate`, the page asks for a greedy completion after
   * each of those steps, while the run goes on; `abortAt` aborts the run after that step. `judge`:
   * 'length' scores completions by length (RLAIF).
   */
  startTraining(
    key: string,
    tag: string,
    request: Omit<TrainRequest, 'judge' | 'signal'> & { judge?: 'length' },
    o: { generate?: number[]; prompt?: string; maxTokens?: number; abortAt?: number } = {},
  ): void {
    const rt = get(key);
    const controller = new AbortController();
    controllers.set(tag, controller);
    const since = performance.now();
    const run = (async (): Promise<Training> => {
      const t: Training = { events: [], during: [], longTasks: [] };
      const pending: Promise<void>[] = [];
      const { judge, ...rest } = request;
      try {
        t.report = await rt.train(
          {
            ...rest,
            signal: controller.signal,
            ...(judge === 'length'
              ? { judge: (_p: string, cs: readonly string[]) => cs.map((c) => c.length) }
              : {}),
          },
          (e) => {
            t.events.push(e);
            if (e.stage !== 'train') return;
            if (o.generate?.includes(e.step)) {
              const afterStep = e.step;
              pending.push(
                (async () => {
                  let text = '';
                  let firstChunk: number | undefined;
                  for await (const chunk of rt.generate(o.prompt ?? 'Once upon a time', {
                    maxTokens: o.maxTokens ?? 20,
                  })) {
                    firstChunk ??= performance.now();
                    text += chunk.text;
                  }
                  t.during.push({ afterStep, text, firstChunk: firstChunk as number });
                })(),
              );
            }
            if (o.abortAt === e.step) controller.abort();
          },
        );
      } catch (e) {
        t.failure = failure(e);
      }
      t.trainedAt = performance.now();
      await Promise.all(pending);
      t.longTasks = longTasks.filter((l) => l.start + l.duration >= since);
      return t;
    })();
    runs.set(tag, run);
  },
  training: (tag: string): Promise<Training> => runs.get(tag) as Promise<Training>,
  history: (key: string) => get(key).personal.history(),
  current: (key: string) => get(key).personal.current(),
  feedbackLog: async (key: string) => (await get(key).personal.feedbackLog()).map((s) => s.event),
  rollback: (key: string, version: number) => get(key).personal.rollback(version),
  async exportPersonal(key: string, version?: number): Promise<Record<string, number[]>> {
    const files = await get(key).personal.export(version);
    return Object.fromEntries([...files].map(([name, bytes]) => [name, Array.from(bytes)]));
  },
  async restart(key: string): Promise<void> {
    const { runtimes } = await import('./page.js');
    runtimes.set(key, await get(key).restart());
  },
};

export type TrainingTestApi = typeof api;

declare global {
  interface Window {
    training: TrainingTestApi;
  }
}

window.training = api;
