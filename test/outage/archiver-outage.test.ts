import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { restoreStack, startServer, stopServer } from '../support/outage.ts';
import { createArchiverWorld, expectExactlyOnce, waitFor, type ArchiverWorld } from '../integration/services/archiver/world.ts';

// Stops real servers of the shared stack: run this folder alone, after the rest of the suite.
// The archiver (`agent-manager run archiver`, its own process) while audit events flow: MinIO
// stopped for 30 s, then Postgres restarted. Meanwhile it backs off (dependency waits, nothing
// dead-lettered), commits nothing past what is durable in S3, and afterwards it has archived and
// indexed every event exactly once without a restart or a hand.
jest.setTimeout(300_000);

const S3_DOWN_MS = 30_000;
const POSTGRES_DOWN_MS = 8_000;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return typeof address === 'object' && address ? address.port : 0;
}

describe('archiver: S3 down for 30 s and a Postgres restart while events flow', () => {
  let w: ArchiverWorld;
  let port: number;

  beforeAll(async () => {
    port = await freePort();
    w = await createArchiverWorld('outage-archiver', {
      env: { ARCHIVE_MAX_FILE_RECORDS: '50', ARCHIVE_FLUSH_INTERVAL_MS: '2000', WORKER_UNAVAILABLE_MAX_DELAY_MS: '2000', HTTP_PORT: String(port), HTTP_HOST: '127.0.0.1' },
    });
  });

  afterAll(async () => {
    await restoreStack();
    await w?.teardown();
  });

  /** Every committed offset is at most `ends` (the first offset past the partition's durable files). */
  async function expectCommitsWithin(ends: ReadonlyMap<number, number>, when: string): Promise<void> {
    for (const [partition, offset] of await w.committed()) expect([when, partition, Number(offset)]).toEqual([when, partition, Math.min(Number(offset), ends.get(partition) ?? 0)]);
  }

  it('backs off, never commits past the archive, loses and dead-letters nothing, and recovers by itself', async () => {
    const archiver: ChildProcess = w.startArchiver();
    let flowing = true;
    const producing = (async () => {
      while (flowing) {
        await w.produceEvents(20);
        await sleep(200);
      }
    })();
    try {
      await waitFor(async () => (await w.filedCount()) > 100, 60_000, 'the first archive files');

      // S3 down: nothing can become durable, so audit_files (written after each upload) stands
      // still and every commit stays within it.
      await stopServer('s3');
      try {
        await sleep(2_000);
        const durable = await w.filedEnds();
        const started = Date.now();
        while (Date.now() - started < S3_DOWN_MS) {
          await expectCommitsWithin(durable, 's3 down');
          expect(await w.filedEnds()).toEqual(durable);
          expect(archiver.exitCode).toBeNull();
          await sleep(3_000);
        }
      } finally {
        await startServer('s3');
      }
      const ends = await w.logEnds();
      await waitFor(async () => {
        const archived = await w.archivedEnds();
        return [...ends].every(([p, end]) => (archived.get(p) ?? 0) >= Number(end));
      }, 90_000, 'the backlog of the S3 outage archived');

      // Postgres restarted: the index and audit_files cannot be written; commits stay within S3.
      await stopServer('postgres');
      try {
        const started = Date.now();
        while (Date.now() - started < POSTGRES_DOWN_MS) {
          await sleep(2_000);
          await expectCommitsWithin(await w.archivedEnds(), 'postgres down');
          expect(archiver.exitCode).toBeNull();
        }
      } finally {
        await startServer('postgres');
      }
      await sleep(5_000);
    } finally {
      flowing = false;
      await producing;
    }

    const ends = await w.logEnds();
    await waitFor(async () => {
      const archived = await w.archivedEnds();
      return [...ends].every(([p, end]) => archived.get(p) === Number(end));
    }, 120_000, 'every event in S3');
    await waitFor(async () => (await w.indexCount()) >= w.produced.size, 60_000, 'every event indexed');
    const events = await w.archived();
    expectExactlyOnce(events, w.produced);
    expect(await w.indexCount()).toBe(w.produced.size);
    await waitFor(async () => (await w.filedCount()) >= w.produced.size, 30_000, 'every file recorded');
    expect(await w.filedCount()).toBe(w.produced.size);
    expect(await w.dlqCount()).toBe(0);
    await waitFor(async () => {
      const now = await w.committed();
      return [...ends].every(([p, end]) => now.get(p) === end);
    }, 30_000, 'commits at the log ends');

    // It waited on both (backoff, not dead letters) and is still the same process.
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/agent_manager_dependency_waits_total\{[^}]*dependency="s3"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/agent_manager_dependency_waits_total\{[^}]*dependency="postgres"[^}]*\} [1-9]/);
    expect(metrics).not.toMatch(/agent_manager_records_dead_lettered_total\{[^}]*\} [1-9]/);
    expect(archiver.exitCode).toBeNull();
  });
});
