import { setTimeout as sleep } from 'node:timers/promises';
import { waitForExit } from '../../../support/processes.ts';
import { createArchiverWorld, expectExactlyOnce, waitFor, type ArchiverWorld } from './world.ts';

// `kill -9` of the one archiver process ten times, at random points (starting up, mid-batch,
// mid-upload, between an upload and its commit) while events flow, each time restarted: still
// every event exactly once in S3, no gap and no overlap between a partition's files, once in the
// index, and after every kill nothing committed past what S3 holds.
jest.setTimeout(240_000);

const KILLS = 10;

describe('archiver: ten SIGKILLs while events flow', () => {
  let w: ArchiverWorld;

  beforeAll(async () => {
    w = await createArchiverWorld('archiver-kills', { env: { ARCHIVE_MAX_FILE_RECORDS: '50', ARCHIVE_FLUSH_INTERVAL_MS: '2000' } });
  });

  afterAll(async () => {
    await w?.teardown();
  });

  it('still archives every event exactly once, with no gap and no overlap, and never commits past the archive', async () => {
    let flowing = true;
    const producing = (async () => {
      while (flowing) {
        await w.produceEvents(20);
        await sleep(100);
      }
    })();
    try {
      for (let kill = 0; kill < KILLS; kill++) {
        const archiver = w.startArchiver();
        // Random points: some before the process has joined the group, most while it writes files.
        await sleep(1_500 + Math.floor(Math.random() * 5_500));
        archiver.kill('SIGKILL');
        expect((await waitForExit(archiver, 10_000)).signal).toBe('SIGKILL');
        // The process is gone and S3 only grows: every commit it made is covered by a durable file.
        const ends = await w.archivedEnds();
        for (const [partition, offset] of await w.committed()) expect([partition, Number(offset)]).toEqual([partition, Math.min(Number(offset), ends.get(partition) ?? 0)]);
      }
    } finally {
      flowing = false;
      await producing;
    }
    const last = w.startArchiver();
    const logEnds = await w.logEnds();
    await waitFor(async () => {
      const archivedEnds = await w.archivedEnds();
      return [...logEnds].every(([p, end]) => archivedEnds.get(p) === Number(end));
    }, 120_000, 'every event in S3');
    await waitFor(async () => (await w.indexCount()) >= w.produced.size, 30_000, 'every event indexed');
    const events = await w.archived();
    expectExactlyOnce(events, w.produced);
    // Every file in S3 is recorded in audit_files, once, with its count.
    const { rows } = await w.db.query<{ object_key: string; record_count: number }>(`SELECT object_key, record_count FROM ${w.world.schema}.audit_files`);
    const files = new Map<string, number>();
    for (const e of events) files.set(e.file, (files.get(e.file) ?? 0) + 1);
    expect(new Map(rows.map((r) => [r.object_key, Number(r.record_count)]))).toEqual(files);
    expect(await w.indexCount()).toBe(w.produced.size);
    expect(await w.dlqCount()).toBe(0);
    // Caught up: the commits reach the log ends.
    const ends = await w.logEnds();
    await waitFor(async () => {
      const now = await w.committed();
      return [...ends].every(([p, end]) => now.get(p) === end);
    }, 30_000, 'commits at the log ends');
    expect(last.exitCode).toBeNull();
  });
});
