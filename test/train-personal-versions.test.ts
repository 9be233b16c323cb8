import { IDBFactory, IDBObjectStore } from 'fake-indexeddb';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { InvalidInputError } from '../src/errors.js';
import { QuotaError } from '../src/store/errors.js';
import {
  DEFAULT_PERSONAL_DB_NAME,
  type PersonalCommit,
  type PersonalFiles,
  type PersonalVersionStore,
  indexedDbPersonalVersions,
  memoryPersonalVersions,
} from '../src/train/personal-versions.js';

/** Distinct, recognisable files for version-to-be `n` (sizes differ per n). */
function filesFor(n: number): PersonalFiles {
  const config = new TextEncoder().encode(JSON.stringify({ peft_type: 'LORA', r: 4, n }));
  const weights = new Uint8Array(64 + 8 * n);
  for (let i = 0; i < weights.length; i++) weights[i] = (i * 31 + n * 7) & 0xff;
  return { config, weights };
}
const sizeOf = (f: PersonalFiles) => f.config.length + f.weights.length;
const sft = (extra: Partial<PersonalCommit> = {}): PersonalCommit => ({
  method: 'sft',
  steps: 10,
  examples: 5,
  ...extra,
});

interface InternalTransaction {
  _execRequestAsync(o: { operation: () => unknown; source: unknown }): IDBRequest;
}
const domError = (name: string) => new DOMException(`${name} (test).`, name);

/**
 * Make fake-indexeddb's put fail for the values `fails` picks: 'request' fails the request
 * asynchronously and so aborts its transaction, as a browser does on a quota error; 'throw' throws
 * from put() itself.
 */
function failPuts(fails: (value: unknown) => boolean, how: 'request' | 'throw', name = 'QuotaExceededError') {
  const proto = IDBObjectStore.prototype;
  const original = proto.put;
  proto.put = function (this: IDBObjectStore, value: unknown, key?: IDBValidKey): IDBRequest<IDBValidKey> {
    if (!fails(value)) return original.call(this, value, key);
    if (how === 'throw') throw domError(name);
    const tx = this.transaction as unknown as InternalTransaction;
    const operation = () => {
      throw domError(name);
    };
    return tx._execRequestAsync({ operation, source: this }) as IDBRequest<IDBValidKey>;
  };
  restore.push(() => (proto.put = original));
}
/** The record holding a version's bytes (the big write a quota refuses). */
const isFiles = (v: unknown) => typeof v === 'object' && v !== null && 'weights' in v;

const restore: (() => void)[] = [];
let clock = 0;
beforeEach(() => {
  clock = 1_700_000_000_000;
  vi.spyOn(Date, 'now').mockImplementation(() => clock); // fake-indexeddb reads it too: set, not ticked
});
afterEach(() => {
  while (restore.length > 0) restore.pop()!();
  vi.restoreAllMocks();
});

async function refusal(p: Promise<unknown>): Promise<InvalidInputError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(InvalidInputError);
  return e as InvalidInputError;
}

interface Impl {
  name: string;
  make(options?: { keep?: number }): PersonalVersionStore;
}
const impls: Impl[] = [
  { name: 'memory', make: (o) => memoryPersonalVersions(o) },
  // A fresh, empty IndexedDB per store.
  { name: 'IndexedDB', make: (o) => indexedDbPersonalVersions({ ...o, indexedDB: new IDBFactory() }) },
];

describe.each(impls)('$name personal versions', ({ make }) => {
  it('starts empty', async () => {
    const store = make();
    expect(await store.history()).toEqual([]);
    expect(await store.current()).toBeUndefined();
    const e = await refusal(store.files(1));
    expect(e.file).toBe('personal');
    expect(e.field).toBe('version 1');
    expect(e.message).toBe('personal: version 1: no such version (stored: none)');
  });

  it('numbers versions 1, 2, 3, makes each current, and records its metadata', async () => {
    const store = make();
    clock = 1_700_000_001_000;
    const v1 = await store.commit({ method: 'init', steps: 0, examples: 0 }, filesFor(1));
    clock = 1_700_000_002_000;
    const v2 = await store.commit(sft({ parent: 1, loss: { first: 2.5, last: 1.25 } }), filesFor(2));
    const v3 = await store.commit({ method: 'dpo', parent: 2, steps: 40, examples: 12 }, filesFor(3));
    expect(v1).toEqual({
      version: 1,
      createdAt: 1_700_000_001_000,
      method: 'init',
      steps: 0,
      examples: 0,
      bytes: sizeOf(filesFor(1)),
    });
    expect(v2).toEqual({
      version: 2,
      createdAt: 1_700_000_002_000,
      parent: 1,
      method: 'sft',
      steps: 10,
      examples: 5,
      loss: { first: 2.5, last: 1.25 },
      bytes: sizeOf(filesFor(2)),
    });
    expect(v3).toMatchObject({
      version: 3,
      createdAt: 1_700_000_002_000,
      parent: 2,
      method: 'dpo',
      bytes: sizeOf(filesFor(3)),
    });
    expect(await store.history()).toEqual([v1, v2, v3]);
    expect(await store.current()).toEqual(v3);
  });

  it('files round-trip byte for byte (a view into a bigger buffer stores just its bytes)', async () => {
    const store = make();
    const buffer = new Uint8Array(1000).map((_, i) => (i * 13) & 0xff);
    const weights = buffer.subarray(100, 356); // 256 bytes at an offset
    const config = new TextEncoder().encode('{"peft_type":"LORA","r":8,"lora_alpha":16}');
    const v = await store.commit(sft(), { config, weights });
    expect(v.bytes).toBe(config.length + 256);
    buffer.fill(0); // the caller reuses its buffers: the stored version must not change
    config.fill(0);
    const got = await store.files(v.version);
    expect(got.weights).toBeInstanceOf(Uint8Array);
    expect(got.weights.byteLength).toBe(256);
    expect([...got.weights]).toEqual(Array.from({ length: 256 }, (_, i) => ((i + 100) * 13) & 0xff));
    expect(new TextDecoder().decode(got.config)).toBe('{"peft_type":"LORA","r":8,"lora_alpha":16}');
    got.weights.fill(0); // nor must a reader's changes reach the store
    expect((await store.files(v.version)).weights[1]).toBe((101 * 13) & 0xff);
  });

  it("keeps every version's own files", async () => {
    const store = make();
    for (let n = 1; n <= 3; n++) await store.commit(sft(), filesFor(n));
    for (let n = 1; n <= 3; n++) expect(await store.files(n)).toEqual(filesFor(n));
  });

  it('rollback makes an earlier version current, keeps history; the next commit is 4 with that parent', async () => {
    const store = make();
    for (let n = 1; n <= 3; n++) await store.commit(sft(n > 1 ? { parent: n - 1 } : {}), filesFor(n));
    const before = await store.history();
    const back = await store.rollback(1);
    expect(back).toEqual(before[0]);
    expect(await store.current()).toEqual(before[0]);
    expect(await store.history()).toEqual(before); // later versions stay
    expect(await store.files(3)).toEqual(filesFor(3));

    const v4 = await store.commit(sft({ parent: (await store.current())!.version }), filesFor(4));
    expect(v4.version).toBe(4);
    expect(v4.parent).toBe(1);
    expect(await store.current()).toEqual(v4);
    expect((await store.history()).map((v) => [v.version, v.parent])).toEqual([
      [1, undefined],
      [2, 1],
      [3, 2],
      [4, 1],
    ]);

    // Forward again to any existing version, and to the current one (a no-op).
    expect((await store.rollback(3)).version).toBe(3);
    expect((await store.current())!.version).toBe(3);
    expect((await store.rollback(3)).version).toBe(3);
    expect((await store.commit(sft({ parent: 3 }), filesFor(5))).version).toBe(5);
  });

  it('rollback to an unknown version is refused and changes nothing', async () => {
    const store = make();
    await store.commit(sft(), filesFor(1));
    await store.commit(sft(), filesFor(2));
    const e = await refusal(store.rollback(9));
    expect(e.field).toBe('version 9');
    expect(e.message).toBe('personal: version 9: no such version (stored: 1, 2)');
    expect((await refusal(store.rollback(0))).field).toBe('version 0');
    expect((await refusal(store.rollback(1.5))).field).toBe('version 1.5');
    expect((await store.current())!.version).toBe(2);
    expect((await store.history()).length).toBe(2);
  });

  it('keep prunes the oldest versions (metadata and files) when committing beyond it', async () => {
    const store = make({ keep: 3 });
    for (let n = 1; n <= 5; n++) await store.commit(sft(), filesFor(n));
    expect((await store.history()).map((v) => v.version)).toEqual([3, 4, 5]);
    expect((await store.current())!.version).toBe(5);
    expect((await refusal(store.files(1))).message).toBe(
      'personal: version 1: no such version (stored: 3, 4, 5)',
    );
    expect((await refusal(store.files(2))).field).toBe('version 2');
    expect((await refusal(store.rollback(2))).field).toBe('version 2');
    expect(await store.files(3)).toEqual(filesFor(3));

    // After a rollback the new commit is current; the oldest others go, numbers go on.
    await store.rollback(3);
    const v6 = await store.commit(sft({ parent: 3 }), filesFor(6));
    expect(v6.version).toBe(6);
    expect((await store.history()).map((v) => v.version)).toEqual([4, 5, 6]);
    // A parent may have been pruned: it was made once.
    expect((await store.commit(sft({ parent: 3 }), filesFor(7))).parent).toBe(3);
  });

  it('keep: 1 holds only the current version', async () => {
    const store = make({ keep: 1 });
    await store.commit(sft(), filesFor(1));
    await store.commit(sft(), filesFor(2));
    expect((await store.history()).map((v) => v.version)).toEqual([2]);
    expect(await store.files(2)).toEqual(filesFor(2));
  });

  it('keeps 20 versions by default', async () => {
    const store = make();
    for (let n = 1; n <= 22; n++) await store.commit(sft(), filesFor(n));
    const versions = (await store.history()).map((v) => v.version);
    expect(versions).toEqual(Array.from({ length: 20 }, (_, i) => i + 3));
  });

  it('refuses a bad keep naming the option', () => {
    for (const keep of [0, -1, 2.5, Number.NaN]) {
      expect(() => make({ keep })).toThrow(InvalidInputError);
      expect(() => make({ keep })).toThrow(/^personal: keep: expected a positive integer/);
    }
  });

  it('an invalid commit is refused naming the field and changes nothing', async () => {
    const store = make({ keep: 2 });
    await store.commit(sft(), filesFor(1));
    await store.commit(sft(), filesFor(2));
    const bad: [PersonalCommit, PersonalFiles, string][] = [
      [sft({ method: '' }), filesFor(3), 'method'],
      [sft({ steps: -1 }), filesFor(3), 'steps'],
      [sft({ examples: 1.5 }), filesFor(3), 'examples'],
      [sft({ parent: 0 }), filesFor(3), 'parent'],
      [sft({ parent: 3 }), filesFor(3), 'parent'], // not made yet
      [sft({ loss: { first: Number.NaN, last: 1 } }), filesFor(3), 'loss.first'],
      [
        sft(),
        { config: filesFor(3).config, weights: [1, 2, 3] as unknown as Uint8Array },
        'adapter_model.safetensors',
      ],
      [sft(), { config: '{}' as unknown as Uint8Array, weights: filesFor(3).weights }, 'adapter_config.json'],
    ];
    for (const [meta, files, field] of bad) {
      const e = await refusal(store.commit(meta, files));
      expect(e.file).toBe('personal');
      expect(e.field).toBe(field);
    }
    expect((await store.history()).map((v) => v.version)).toEqual([1, 2]); // nothing pruned
    expect((await store.current())!.version).toBe(2);
    expect(await store.files(1)).toEqual(filesFor(1));
    expect((await store.commit(sft(), filesFor(3))).version).toBe(3); // no number was used up
  });

  it('clear() removes every version; numbers are not reused afterwards', async () => {
    const store = make();
    await store.commit(sft(), filesFor(1));
    await store.commit(sft(), filesFor(2));
    await store.clear();
    expect(await store.history()).toEqual([]);
    expect(await store.current()).toBeUndefined();
    expect((await refusal(store.files(1))).field).toBe('version 1');
    expect((await store.commit(sft(), filesFor(3))).version).toBe(3);
    expect((await store.history()).map((v) => v.version)).toEqual([3]);
  });

  it('hands out copies: changing a returned version changes nothing stored', async () => {
    const store = make();
    const v = await store.commit(sft({ loss: { first: 1, last: 0.5 } }), filesFor(1));
    v.loss!.last = 99;
    (await store.history())[0].steps = 99;
    (await store.current())!.method = 'changed';
    expect(await store.current()).toMatchObject({ method: 'sft', steps: 10, loss: { first: 1, last: 0.5 } });
  });
});

describe('IndexedDB personal versions', () => {
  it('keeps versions, current and the number counter across reopening the database', async () => {
    const indexedDB = new IDBFactory();
    const first = indexedDbPersonalVersions({ indexedDB });
    for (let n = 1; n <= 3; n++) await first.commit(sft(), filesFor(n));
    await first.rollback(2);

    const second = indexedDbPersonalVersions({ indexedDB });
    expect((await second.history()).map((v) => v.version)).toEqual([1, 2, 3]);
    expect((await second.current())!.version).toBe(2);
    expect(await second.files(3)).toEqual(filesFor(3));
    expect((await second.commit(sft({ parent: 2 }), filesFor(4))).version).toBe(4);

    await second.clear();
    expect((await indexedDbPersonalVersions({ indexedDB }).commit(sft(), filesFor(5))).version).toBe(5);
  });

  it('two stores over the same database (two tabs) committing at once get different numbers', async () => {
    const indexedDB = new IDBFactory();
    const tabA = indexedDbPersonalVersions({ indexedDB });
    const tabB = indexedDbPersonalVersions({ indexedDB });
    const made = await Promise.all([1, 2, 3, 4].map((n) => (n % 2 ? tabA : tabB).commit(sft(), filesFor(n))));
    expect(made.map((v) => v.version).sort()).toEqual([1, 2, 3, 4]);
    expect((await tabA.history()).map((v) => v.version)).toEqual([1, 2, 3, 4]);
    // Each number holds the files of the commit that got it.
    for (const [i, v] of made.entries()) expect(await tabB.files(v.version)).toEqual(filesFor(i + 1));
  });

  it('uses its own database, named edge-adapters-personal by default, or dbName', async () => {
    const indexedDB = new IDBFactory();
    await indexedDbPersonalVersions({ indexedDB }).commit(sft(), filesFor(1));
    await indexedDbPersonalVersions({ indexedDB, dbName: 'other-personal' }).commit(sft(), filesFor(2));
    expect((await indexedDB.databases()).map((d) => d.name).sort()).toEqual(
      [DEFAULT_PERSONAL_DB_NAME, 'other-personal'].sort(),
    );
    expect(await indexedDbPersonalVersions({ indexedDB }).files(1)).toEqual(filesFor(1));
    expect((await refusal(indexedDbPersonalVersions({ indexedDB }).files(2))).field).toBe('version 2');
  });

  it.each(['request', 'throw'] as const)(
    'a commit whose write fails with QuotaExceededError (%s) is a QuotaError and changes nothing, pruning included',
    async (how) => {
      const indexedDB = new IDBFactory();
      const store = indexedDbPersonalVersions({ indexedDB, keep: 2 });
      await store.commit(sft(), filesFor(1));
      await store.commit(sft(), filesFor(2));
      await store.rollback(1);
      const history = await store.history();

      failPuts(isFiles, how); // the commit of version 3 would also prune version 1 (or 2)
      const e = await store.commit(sft({ parent: 1 }), filesFor(3)).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(QuotaError);
      const q = e as QuotaError;
      expect(q.file).toBe('personal');
      expect(q.message).toBe(
        `personal: the browser's storage quota refused a new version of ${sizeOf(filesFor(3))} bytes (QuotaExceededError); nothing was stored and version 1 stays current`,
      );
      expect(q.sizes).toEqual({
        bytes: sizeOf(filesFor(3)),
        budgetBytes: Infinity,
        storedBytes: sizeOf(filesFor(1)) + sizeOf(filesFor(2)),
        evictedBytes: 0,
      });

      // Seen from this store and from a fresh connection: all as before.
      for (const s of [store, indexedDbPersonalVersions({ indexedDB, keep: 2 })]) {
        expect(await s.history()).toEqual(history);
        expect((await s.current())!.version).toBe(1);
        expect(await s.files(1)).toEqual(filesFor(1));
        expect(await s.files(2)).toEqual(filesFor(2));
        expect((await refusal(s.files(3))).field).toBe('version 3');
      }

      restore.pop()!();
      // The failed version never existed: the next commit takes its number.
      expect((await store.commit(sft({ parent: 1 }), filesFor(3))).version).toBe(3);
      expect((await store.history()).map((v) => v.version)).toEqual([2, 3]);
    },
  );

  it('a quota error on the very first commit leaves the store empty', async () => {
    const store = indexedDbPersonalVersions({ indexedDB: new IDBFactory() });
    failPuts(isFiles, 'request');
    const e = await store.commit(sft(), filesFor(1)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(QuotaError);
    expect((e as QuotaError).message).toMatch(/nothing was stored and no version was current$/);
    expect((e as QuotaError).sizes.storedBytes).toBe(0);
    expect(await store.history()).toEqual([]);
    expect(await store.current()).toBeUndefined();
  });

  it('another write error is passed on as it is, and also changes nothing', async () => {
    const store = indexedDbPersonalVersions({ indexedDB: new IDBFactory() });
    await store.commit(sft(), filesFor(1));
    failPuts(isFiles, 'request', 'UnknownError');
    const e = await store.commit(sft(), filesFor(2)).catch((x: unknown) => x);
    expect(e).not.toBeInstanceOf(QuotaError);
    expect((e as DOMException).name).toBe('UnknownError');
    expect((await store.history()).map((v) => v.version)).toEqual([1]);
    expect((await store.current())!.version).toBe(1);
  });
});
