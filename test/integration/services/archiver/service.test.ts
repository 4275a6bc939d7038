import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { Producer } from 'kafkajs';
import pg from 'pg';
import { stackCredentials } from '../../../../dev/stack/endpoints.ts';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { formatArchiveKey, listArchiveDays, listDayFiles, parseArchiveKey } from '../../../../lib/archive/layout.ts';
import { openArchiveFile } from '../../../../lib/archive/reader.ts';
import type { AuditEvent } from '../../../../lib/contracts/types.ts';
import { startServices } from '../../../../cli/services.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { createFleetWorld, within, type FleetWorld } from '../../../support/fleet.ts';
import { waitForExit } from '../../../support/processes.ts';
import { eventually, rawKafka } from '../../../support/runtime.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { uniqueName } from '../../../support/stack.ts';

// The archiver as its own process (`agent-manager run archiver`, User:archiver) against the real
// stack: events produced across partitions, the process killed with SIGKILL mid-run and restarted;
// every event must then be in S3 exactly once and in the index once, with no commit past the archive.
// Then two archivers with repeated SIGKILLs (rebalances), and S3 refusing uploads (the partition is
// held, never dead-lettered) until the bucket exists (in-process, to read the blocked-partition gauge).
jest.setTimeout(240_000);

interface ArchivedEvent {
  readonly partition: number;
  readonly offset: number;
  readonly eventId: string;
  readonly key: string;
  readonly file: string;
}

describe('archiver service: exactly once across a kill -9, malformed events dead-lettered', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('archiver-svc');
  let world: FleetWorld;
  let producer: Producer;
  let db: pg.Client;
  const children: ChildProcess[] = [];
  const produced = new Set<string>();

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    world = await createFleetWorld('archiver-svc', {
      ARCHIVE_BUCKET: bucket,
      ARCHIVE_MAX_FILE_RECORDS: '25',
      ARCHIVE_FLUSH_INTERVAL_MS: '2000',
      ARCHIVE_WINDOW_GRACE_MS: '500',
      ARCHIVE_TICK_MS: '300',
      ARCHIVER_SESSION_TIMEOUT_MS: '6000',
    });
    producer = rawKafka().producer({ idempotent: true });
    await producer.connect();
    db = new pg.Client({ connectionString: world.env.DATABASE_URL });
    await db.connect();
  });

  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await waitForExit(child, 30_000).catch(() => child.kill('SIGKILL'));
      }
    }
  });

  afterAll(async () => {
    await producer?.disconnect();
    await db?.end();
    await world?.teardown();
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  function startArchiverProcess(): ChildProcess {
    const child = spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'run', 'archiver'], {
      env: { ...process.env, ...world.env, ...stackCredentials(process.cwd(), 'archiver'), LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    const keep = (chunk: Buffer) => {
      log = (log + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.once('exit', (code, signal) => {
      if (signal !== 'SIGKILL' && code !== 0) console.error(`archiver exited ${code ?? signal}:\n${log}`);
    });
    children.push(child);
    return child;
  }

  async function produceEvents(count: number, into: Set<string> = produced): Promise<void> {
    const messages = [];
    for (let i = 0; i < count; i++) {
      const event = buildAuditEvent({ actor: 'service:test', action: 'test.archived', agentId: null, requestId: null, traceId: null, payload: { i } });
      into.add(event.eventId);
      messages.push({ key: event.eventId, value: await world.codec.encode(`${world.topics['audit-events']}-value`, event), headers: { 'event-id': event.eventId, trace: ['a', 'b'] } });
    }
    await producer.send({ topic: world.topics['audit-events'], messages });
  }

  /** Without ARCHIVE_PREFIX, the archive's root is the audit topic's name (with the world's prefix). */
  async function archived(from = bucket, root = world.topics['audit-events']): Promise<ArchivedEvent[]> {
    const out: ArchivedEvent[] = [];
    for (const day of await listArchiveDays(s3, from, root)) {
      for (const name of await listDayFiles(s3, from, root, day)) {
        const key = formatArchiveKey(name);
        const object = await s3.send(new GetObjectCommand({ Bucket: from, Key: key }));
        const file = await openArchiveFile<AuditEvent>(object.Body as Readable, { name: key });
        for await (const record of file.records) {
          out.push({ partition: name.partition, offset: record.offset, eventId: record.event.eventId, key: record.key?.toString() ?? '', file: key });
          expect(record.headers.map((h) => [h.key, h.value?.toString()])).toEqual([
            ['event-id', record.event.eventId],
            ['trace', 'a'],
            ['trace', 'b'],
          ]);
        }
      }
    }
    return out;
  }

  async function committed(): Promise<Map<number, bigint>> {
    const admin = rawKafka().admin();
    await admin.connect();
    try {
      const [topic] = await admin.fetchOffsets({ groupId: `${world.env.TOPIC_PREFIX ?? ''}agent-manager-archiver`, topics: [world.topics['audit-events']] });
      return new Map((topic?.partitions ?? []).filter((p) => p.offset !== '-1').map((p) => [p.partition, BigInt(p.offset)]));
    } finally {
      await admin.disconnect();
    }
  }

  async function dlqCount(): Promise<number> {
    const admin = rawKafka().admin();
    await admin.connect();
    try {
      const ends = await admin.fetchTopicOffsets(`${world.topics['audit-events']}.dlq`);
      return ends.reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0);
    } finally {
      await admin.disconnect();
    }
  }

  function expectExactlyOnce(events: readonly ArchivedEvent[], expected: ReadonlySet<string> = produced): void {
    // Every event once, and every (partition, offset) in one file only.
    expect(events.length).toBe(expected.size);
    expect(new Set(events.map((e) => e.eventId))).toEqual(expected);
    expect(new Set(events.map((e) => `${e.partition}:${e.offset}`)).size).toBe(events.length);
    for (const e of events) expect(e.key).toBe(e.eventId);
    // Each file holds exactly the offsets its name says (first and last), and a partition's files do not overlap.
    const files = new Map<string, number[]>();
    for (const e of events) files.set(e.file, [...(files.get(e.file) ?? []), e.offset]);
    const ranges = new Map<number, [number, number][]>();
    for (const [key, offsets] of files) {
      const name = parseArchiveKey(key);
      expect(name).toBeDefined();
      if (!name) continue;
      expect([Math.min(...offsets), Math.max(...offsets)]).toEqual([name.firstOffset, name.lastOffset]);
      ranges.set(name.partition, [...(ranges.get(name.partition) ?? []), [name.firstOffset, name.lastOffset]]);
    }
    for (const list of ranges.values()) {
      list.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < list.length; i++) expect(list[i]?.[0]).toBeGreaterThan(list[i - 1]?.[1] ?? Infinity);
    }
  }

  it('archives and indexes every event exactly once across a SIGKILL and a restart; commits never pass the archive; malformed events go to the DLQ', async () => {
    // Phase 1: events flow while the archiver runs; it is killed once its first files are durable.
    const first = startArchiverProcess();
    const flowing = (async () => {
      for (let i = 0; i < 6; i++) {
        await produceEvents(50);
        await sleep(250);
      }
    })();
    await eventually(async () => (await archived().catch(() => [])).length > 0, 60_000, 'the first archive files');
    first.kill('SIGKILL');
    await waitForExit(first, 10_000);
    await flowing;
    const beforeRestart = await archived();
    expect(beforeRestart.length).toBeLessThan(produced.size);
    // What was committed before the kill is archived: the restart re-reads the rest.
    const archivedEnd = new Map<number, number>();
    for (const e of beforeRestart) archivedEnd.set(e.partition, Math.max(archivedEnd.get(e.partition) ?? -1, e.offset + 1));
    for (const [partition, offset] of await committed()) expect(Number(offset)).toBeLessThanOrEqual(archivedEnd.get(partition) ?? 0);

    // Phase 2: more events and malformed ones, then a restart.
    await produceEvents(100);
    const bad = buildAuditEvent({ actor: 'service:test', action: 'test.bad', agentId: null, requestId: null, traceId: null, payload: {} });
    await producer.send({
      topic: world.topics['audit-events'],
      messages: [
        { key: 'garbage', value: Buffer.from('not avro at all') },
        { key: 'bad-id', value: await world.codec.encode(`${world.topics['audit-events']}-value`, { ...bad, eventId: 'not-a-uuid' }) },
      ],
    });
    const second = startArchiverProcess();
    await within(
      'every event archived',
      120_000,
      eventually(async () => (await archived().catch(() => [])).length >= produced.size, 120_000, 'every event archived'),
    );
    const events = await archived();
    expectExactlyOnce(events);
    // Files already written before the kill are kept as they were (same names, nothing rewritten).
    for (const e of beforeRestart) expect(events).toContainEqual(e);

    // The index: every event once, at its place on the topic.
    await eventually(async () => Number((await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${world.schema}.audit_index`)).rows[0]?.n) === produced.size, 30_000, 'the index complete');
    const { rows } = await db.query<{ event_id: string; kafka_partition: number; kafka_offset: string }>(`SELECT event_id, kafka_partition, kafka_offset FROM ${world.schema}.audit_index`);
    expect(new Set(rows.map((r) => r.event_id))).toEqual(produced);
    const place = new Map(events.map((e) => [e.eventId, `${e.partition}:${e.offset}`]));
    for (const r of rows) expect(`${r.kafka_partition}:${r.kafka_offset}`).toBe(place.get(r.event_id));

    // Malformed records: dead-lettered once each, and the archiver is still up.
    await eventually(async () => (await dlqCount()) >= 2, 30_000, 'malformed records dead-lettered');
    expect(await dlqCount()).toBe(2);
    expect(second.exitCode).toBeNull();

    // Idle and caught up: commits reach the log ends (past the dead letters), never past the archive.
    const admin = rawKafka().admin();
    await admin.connect();
    const ends = new Map((await admin.fetchTopicOffsets(world.topics['audit-events'])).map((p) => [p.partition, BigInt(p.high)]));
    await admin.disconnect();
    await eventually(async () => {
      const now = await committed();
      return [...ends].every(([p, end]) => now.get(p) === end);
    }, 30_000, 'commits at the log ends');
    const lastArchived = new Map<number, number>();
    for (const e of events) lastArchived.set(e.partition, Math.max(lastArchived.get(e.partition) ?? -1, e.offset));
    for (const [partition, offset] of await committed()) {
      // Only dead-lettered records may lie between the last archived one and the commit.
      expect(Number(offset) - (lastArchived.get(partition) ?? -1) - 1).toBeLessThanOrEqual(2);
    }

    second.kill('SIGTERM');
    expect((await waitForExit(second, 30_000)).code).toBe(0);
  });

  it('two archivers, one killed with SIGKILL at a random point four times while events flow (rebalances, crashes mid-file): still exactly once', async () => {
    let running: ChildProcess[] = [startArchiverProcess(), startArchiverProcess()];
    let flowing = true;
    const producing = (async () => {
      while (flowing) {
        await produceEvents(20);
        await sleep(200);
      }
    })();
    for (let round = 0; round < 4; round++) {
      await sleep(2_000 + Math.floor(Math.random() * 3_000));
      const victim = running[round % 2];
      victim?.kill('SIGKILL');
      if (victim) await waitForExit(victim, 10_000);
      running = running.map((c) => (c === victim ? startArchiverProcess() : c));
    }
    flowing = false;
    await producing;
    await eventually(async () => (await archived().catch(() => [])).length >= produced.size, 120_000, 'every event archived');
    expectExactlyOnce(await archived());
    await eventually(async () => Number((await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${world.schema}.audit_index`)).rows[0]?.n) === produced.size, 30_000, 'the index complete');
    for (const child of running) expect(child.exitCode).toBeNull();
  });

  it('S3 refusing every upload (no such bucket): the partitions are held, nothing committed past the archive or dead-lettered; once the bucket exists, everything is archived without a hand', async () => {
    const missing = uniqueName('archiver-late');
    const root = 'held';
    const dlqBefore = await dlqCount();
    const service: ServiceContext = await within(
      'archiver start',
      60_000,
      startServices(['archiver'], { ...world.env, ...stackCredentials(process.cwd(), 'archiver'), ARCHIVE_BUCKET: missing, ARCHIVE_PREFIX: root, WORKER_UNAVAILABLE_MAX_DELAY_MS: '1000' }, { opsServer: false }),
    );
    try {
      const held = new Set<string>();
      const before = await committed();
      await produceEvents(60, held);
      const blocked = async () => {
        const { values } = await service.metrics.dependencyBlockedPartitions.get();
        return values.filter((v) => v.labels.dependency === 'archive').reduce((sum, v) => sum + v.value, 0);
      };
      await eventually(async () => (await blocked()) > 0, 30_000, 'partitions held for the archive');
      await sleep(3_000);
      expect(await dlqCount()).toBe(dlqBefore);
      // Nothing committed past where the (previous) archive ended.
      const now = await committed();
      for (const [partition, offset] of now) expect(offset).toBeLessThanOrEqual(before.get(partition) ?? 0n);

      await initArchiveBucket(s3, { bucket: missing, retention: { mode: 'GOVERNANCE', days: 1 } });
      await eventually(async () => (await archived(missing, root).catch(() => [])).filter((e) => held.has(e.eventId)).length >= held.size, 60_000, 'everything archived once the bucket exists');
      const events = await archived(missing, root);
      expectExactlyOnce(events.filter((e) => held.has(e.eventId)), held);
      expect(new Set(events.map((e) => `${e.partition}:${e.offset}`)).size).toBe(events.length);
      await eventually(async () => (await blocked()) === 0, 30_000, 'partitions released');
      expect(await dlqCount()).toBe(dlqBefore);
    } finally {
      await service.shutdown();
      await removeTestBucket(s3, missing);
    }
  });
});
