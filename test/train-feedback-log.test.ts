import { IDBFactory, IDBObjectStore } from 'fake-indexeddb';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import { QuotaError } from '../src/store/errors.js';
import type { FeedbackEvent } from '../src/train/feedback.js';
import {
  DEFAULT_FEEDBACK_DB_NAME,
  type FeedbackLog,
  indexedDbFeedbackLog,
  memoryFeedbackLog,
} from '../src/train/feedback-log.js';

const up: FeedbackEvent = { prompt: 'Hi', completion: 'Hello!', rating: 1 };
const edit: FeedbackEvent = { prompt: 'Hi', completion: 'Hello!', correction: 'Good morning.' };
const pair: FeedbackEvent = { prompt: 'Hi', chosen: 'Hello!', rejected: 'Go away.' };
const demo: FeedbackEvent = { prompt: '', completion: 'A demonstration' };

interface InternalTransaction {
  _execRequestAsync(o: { operation: () => unknown; source: unknown }): IDBRequest;
}
const quotaError = () => new DOMException('The quota has been exceeded (test).', 'QuotaExceededError');

/**
 * Make fake-indexeddb's put fail with a QuotaExceededError for the values `fails` picks: 'request'
 * fails the request asynchronously and so aborts its transaction, as a browser does; 'throw' throws
 * from put() itself.
 */
function failPuts(fails: (value: unknown) => boolean, how: 'request' | 'throw' = 'request') {
  const proto = IDBObjectStore.prototype;
  const original = proto.put;
  proto.put = function (this: IDBObjectStore, value: unknown, key?: IDBValidKey): IDBRequest<IDBValidKey> {
    if (!fails(value)) return original.call(this, value, key);
    if (how === 'throw') throw quotaError();
    const tx = this.transaction as unknown as InternalTransaction;
    const operation = () => {
      throw quotaError();
    };
    return tx._execRequestAsync({ operation, source: this }) as IDBRequest<IDBValidKey>;
  };
  restore.push(() => (proto.put = original));
}
const isEntry = (v: unknown) => typeof v === 'object' && v !== null && 'event' in v;

const restore: (() => void)[] = [];
afterEach(() => {
  while (restore.length > 0) restore.pop()!();
  vi.restoreAllMocks();
});

interface Impl {
  name: string;
  /** A fresh, empty log. */
  make(): { log: FeedbackLog; reopen?: () => FeedbackLog };
}

const impls: Impl[] = [
  { name: 'memory', make: () => ({ log: memoryFeedbackLog() }) },
  {
    name: 'IndexedDB',
    make: () => {
      const indexedDB = new IDBFactory(); // a fresh, empty IndexedDB per test
      return {
        log: indexedDbFeedbackLog({ indexedDB }),
        reopen: () => indexedDbFeedbackLog({ indexedDB }),
      };
    },
  },
];

describe.each(impls)('$name feedback log', ({ make }) => {
  it('adds events with increasing ids and Date.now() times, and lists them in insertion order', async () => {
    const { log } = make();
    expect(await log.list()).toEqual([]);
    expect(await log.count()).toBe(0);
    const now = vi.spyOn(Date, 'now');
    now.mockReturnValue(1_000);
    const a = await log.add(up);
    const b = await log.add(edit); // the same millisecond: still ordered
    now.mockReturnValue(500); // the clock went back: still ordered
    const c = await log.add(pair);
    now.mockReturnValue(2_000);
    const d = await log.add(demo);
    expect([a, b, c, d].map((e) => e.id)).toEqual([
      '0000000000000001',
      '0000000000000002',
      '0000000000000003',
      '0000000000000004',
    ]);
    expect([a, b, c, d].map((e) => e.time)).toEqual([1_000, 1_000, 500, 2_000]);
    expect(await log.list()).toEqual([
      { id: a.id, time: 1_000, event: up },
      { id: b.id, time: 1_000, event: edit },
      { id: c.id, time: 500, event: pair },
      { id: d.id, time: 2_000, event: demo },
    ]);
    expect(await log.count()).toBe(4);
  });

  it('orders ids as strings past 9 and keeps them unique under concurrent adds', async () => {
    const { log } = make();
    const added = await Promise.all(
      Array.from({ length: 12 }, (_, i) => log.add({ prompt: `p${i}`, completion: 'c' })),
    );
    const ids = added.map((e) => e.id);
    expect(new Set(ids).size).toBe(12);
    const listed = (await log.list()).map((e) => e.id);
    expect(listed).toEqual([...ids].sort());
    expect(listed).toEqual([...listed].sort((x, y) => Number(x) - Number(y)));
    // Insertion order is the order the adds were made in.
    expect((await log.list()).map((e) => 'completion' in e.event && e.event.prompt)).toEqual(
      Array.from({ length: 12 }, (_, i) => `p${i}`),
    );
  });

  it('validates before storing: an invalid event is refused naming the field and stores nothing', async () => {
    const { log } = make();
    await log.add(up);
    const bad = { prompt: 'p', completion: 'c', ratting: 1 } as unknown as FeedbackEvent;
    const e = await log.add(bad).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidInputError);
    expect((e as InvalidInputError).field).toBe('ratting');
    await expect(
      log.add({ prompt: 'p', completion: 'c', rating: 0 } as unknown as FeedbackEvent),
    ).rejects.toThrow(/^feedback: rating: /);
    expect(await log.count()).toBe(1);
    // The refused events drew no id.
    expect((await log.add(demo)).id).toBe('0000000000000002');
  });

  it('stores what parseFeedback returns (log fields dropped), and hands out copies', async () => {
    const { log } = make();
    const withLogFields = { id: 'x', time: 1, ...up } as unknown as FeedbackEvent;
    const added = await log.add(withLogFields);
    expect(added.event).toEqual(up);
    (added.event as { prompt: string }).prompt = 'changed';
    const [listed] = await log.list();
    expect(listed.event).toEqual(up);
    (listed.event as { prompt: string }).prompt = 'changed again';
    expect((await log.list())[0].event).toEqual(up);
  });

  it('remove() deletes one entry and says whether it was there; ids are not reused', async () => {
    const { log } = make();
    const a = await log.add(up);
    const b = await log.add(edit);
    const c = await log.add(pair);
    expect(await log.remove(b.id)).toBe(true);
    expect(await log.remove(b.id)).toBe(false);
    expect(await log.remove('no such id')).toBe(false);
    expect((await log.list()).map((e) => e.id)).toEqual([a.id, c.id]);
    expect(await log.count()).toBe(2);
    expect(await log.remove(c.id)).toBe(true);
    const d = await log.add(demo);
    expect(d.id).toBe('0000000000000004'); // not c's id again
    expect((await log.list()).map((e) => e.event)).toEqual([up, demo]);
  });

  it('clear() removes every entry; ids keep increasing afterwards', async () => {
    const { log } = make();
    await log.add(up);
    await log.add(edit);
    await log.clear();
    expect(await log.list()).toEqual([]);
    expect(await log.count()).toBe(0);
    expect((await log.add(pair)).id).toBe('0000000000000003');
    expect(await log.count()).toBe(1);
    await log.clear();
    await log.clear(); // clearing an empty log is fine
    expect(await log.count()).toBe(0);
  });
});

describe('IndexedDB feedback log', () => {
  it('keeps entries, order and the id counter across reopening the database', async () => {
    const indexedDB = new IDBFactory();
    const first = indexedDbFeedbackLog({ indexedDB });
    const a = await first.add(up);
    const b = await first.add(edit);
    expect(await first.remove(b.id)).toBe(true); // the highest id is gone: the counter must not follow

    const second = indexedDbFeedbackLog({ indexedDB });
    expect(await second.list()).toEqual([{ id: a.id, time: a.time, event: up }]);
    const c = await second.add(pair);
    expect(c.id).toBe('0000000000000003');
    expect(c.id > a.id).toBe(true);

    await second.clear();
    const third = indexedDbFeedbackLog({ indexedDB });
    expect(await third.count()).toBe(0);
    expect((await third.add(demo)).id).toBe('0000000000000004');
  });

  it('two logs over the same database (two tabs) adding at once never share an id', async () => {
    const indexedDB = new IDBFactory();
    const tabA = indexedDbFeedbackLog({ indexedDB });
    const tabB = indexedDbFeedbackLog({ indexedDB });
    const added = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        (i % 2 === 0 ? tabA : tabB).add({ prompt: `${i}`, completion: 'c' }),
      ),
    );
    const ids = added.map((e) => e.id);
    expect(new Set(ids).size).toBe(10);
    expect((await tabA.list()).map((e) => e.id)).toEqual([...ids].sort());
    expect(await tabB.count()).toBe(10);
  });

  it('uses its own database, named edge-adapters-feedback by default, or dbName', async () => {
    const indexedDB = new IDBFactory();
    await indexedDbFeedbackLog({ indexedDB }).add(up);
    await indexedDbFeedbackLog({ indexedDB, dbName: 'other-feedback' }).add(pair);
    const names = (await indexedDB.databases()).map((d) => d.name).sort();
    expect(names).toEqual([DEFAULT_FEEDBACK_DB_NAME, 'other-feedback'].sort());
    expect((await indexedDbFeedbackLog({ indexedDB }).list()).map((e) => e.event)).toEqual([up]);
    expect(
      (await indexedDbFeedbackLog({ indexedDB, dbName: 'other-feedback' }).list()).map((e) => e.event),
    ).toEqual([pair]);
  });

  it.each(['request', 'throw'] as const)(
    'an add whose write fails (QuotaExceededError, %s) is a QuotaError and leaves nothing behind, not even a used id',
    async (how) => {
      const indexedDB = new IDBFactory();
      const log = indexedDbFeedbackLog({ indexedDB });
      const a = await log.add(up);
      failPuts(isEntry, how);
      const e = await log.add(edit).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(QuotaError);
      const q = e as QuotaError;
      expect(q.file).toBe('feedback');
      expect(q.message).toMatch(/^feedback: the browser's storage quota refused .*nothing was stored$/);
      const entrySize = (v: unknown) => new TextEncoder().encode(JSON.stringify(v)).length;
      expect(q.sizes).toEqual({
        bytes: entrySize(edit),
        budgetBytes: Infinity,
        storedBytes: entrySize({ id: a.id, time: a.time, event: up }),
        evictedBytes: 0,
      });
      restore.pop()!();
      expect(await log.list()).toEqual([{ id: a.id, time: a.time, event: up }]);
      expect(await log.count()).toBe(1);
      // The counter was rolled back with the entry: the next id follows a's directly.
      expect((await indexedDbFeedbackLog({ indexedDB }).add(pair)).id).toBe('0000000000000002');
    },
  );
});
