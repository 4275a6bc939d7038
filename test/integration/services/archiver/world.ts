import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ConfigResourceTypes, type Producer } from 'kafkajs';
import pg from 'pg';
import { stackCredentials } from '../../../../dev/stack/endpoints.ts';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { formatArchiveKey, listArchiveDays, listDayFiles, parseArchiveKey } from '../../../../lib/archive/layout.ts';
import { openArchiveFile } from '../../../../lib/archive/reader.ts';
import type { AuditEvent } from '../../../../lib/contracts/types.ts';
import { createFleetWorld, type FleetWorld } from '../../../support/fleet.ts';
import { waitForExit } from '../../../support/processes.ts';
import { rawKafka } from '../../../support/runtime.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { uniqueName } from '../../../support/stack.ts';

/**
 * A fleet world for archiver tests: its own topic prefix, Postgres schema and GOVERNANCE bucket
 * (so the test can remove it), a producer of audit events, archiver processes
 * (`agent-manager run archiver` as User:archiver), and read-backs of the archive (with the
 * project's reader), the index, the committed offsets and the DLQ.
 */
export interface ArchivedEvent {
  readonly partition: number;
  readonly offset: number;
  readonly eventId: string;
  readonly key: string;
  readonly timestamp: number;
  readonly day: string;
  readonly file: string;
}

export interface ProduceOptions {
  /** The record's CreateTime (the topic must be CreateTime for the broker to keep it). */
  readonly timestamp?: (i: number) => number;
  readonly partition?: number;
  readonly into?: Set<string>;
}

export interface ArchiverWorld {
  readonly world: FleetWorld;
  readonly s3: S3Client;
  readonly bucket: string;
  readonly topic: string;
  readonly db: pg.Client;
  readonly produced: Set<string>;
  startArchiver(extraEnv?: Record<string, string>): ChildProcess;
  /** Produces `count` audit events (key = event id), returns their ids. */
  produceEvents(count: number, options?: ProduceOptions): Promise<string[]>;
  archived(): Promise<ArchivedEvent[]>;
  /** Per partition, the first offset past its highest file in S3 (names only, no read). */
  archivedEnds(): Promise<Map<number, number>>;
  committed(): Promise<Map<number, bigint>>;
  logEnds(): Promise<Map<number, bigint>>;
  dlqCount(): Promise<number>;
  indexCount(): Promise<number>;
  /** Records in the files of audit_files (written once a file is durable in S3). */
  filedCount(): Promise<number>;
  /** Per partition, the first offset past its highest file in audit_files. */
  filedEnds(): Promise<Map<number, number>>;
  /** Stops this world's archiver processes (SIGTERM, then SIGKILL). */
  stopArchivers(): Promise<void>;
  teardown(): Promise<void>;
}

export interface ArchiverWorldOptions {
  /** Makes the audit topic CreateTime, so tests can produce records of other days. */
  readonly createTime?: boolean;
  readonly env?: Record<string, string>;
}

/** Polls `check` every `everyMs` (for checks too heavy for `eventually`'s 100 ms). */
export async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string, everyMs = 1_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

export async function createArchiverWorld(name: string, options: ArchiverWorldOptions = {}): Promise<ArchiverWorld> {
  const s3 = testS3Client();
  const bucket = uniqueName(name);
  await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  const world = await createFleetWorld(name, {
    ARCHIVE_BUCKET: bucket,
    ARCHIVE_TICK_MS: '300',
    ARCHIVE_WINDOW_GRACE_MS: '500',
    ARCHIVER_SESSION_TIMEOUT_MS: '6000',
    ...options.env,
  });
  const topic = world.topics['audit-events'];
  if (options.createTime) {
    const admin = rawKafka().admin();
    await admin.connect();
    try {
      await admin.alterConfigs({
        validateOnly: false,
        resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'message.timestamp.type', value: 'CreateTime' }] }],
      });
    } finally {
      await admin.disconnect();
    }
  }
  const producer: Producer = rawKafka().producer({ idempotent: true });
  await producer.connect();
  const db = new pg.Client({ connectionString: world.env.DATABASE_URL });
  await db.connect();
  // A Postgres restart (the outage test) ends this session: reconnect on the next query.
  db.on('error', () => undefined);
  const produced = new Set<string>();
  const children: ChildProcess[] = [];
  const schema = world.schema;
  let client = db;

  async function query<R extends pg.QueryResultRow>(text: string): Promise<R[]> {
    try {
      return (await client.query<R>(text)).rows;
    } catch {
      // A broken session (Postgres restarted): one fresh one, once.
      const fresh = new pg.Client({ connectionString: world.env.DATABASE_URL });
      fresh.on('error', () => undefined);
      await fresh.connect();
      await client.end().catch(() => undefined);
      client = fresh;
      return (await client.query<R>(text)).rows;
    }
  }

  async function withAdmin<T>(work: (admin: ReturnType<ReturnType<typeof rawKafka>['admin']>) => Promise<T>): Promise<T> {
    const admin = rawKafka().admin();
    await admin.connect();
    try {
      return await work(admin);
    } finally {
      await admin.disconnect();
    }
  }

  const self: ArchiverWorld = {
    world,
    s3,
    bucket,
    topic,
    get db() {
      return client;
    },
    produced,

    startArchiver(extraEnv = {}) {
      const child = spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'run', 'archiver'], {
        env: { ...process.env, ...world.env, ...stackCredentials(process.cwd(), 'archiver'), LOG_LEVEL: 'info', ...extraEnv },
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
    },

    async produceEvents(count, produceOptions = {}) {
      const into = produceOptions.into ?? produced;
      const ids: string[] = [];
      for (let start = 0; start < count; start += 1_000) {
        const messages = [];
        for (let i = start; i < Math.min(count, start + 1_000); i++) {
          const event = buildAuditEvent({ actor: 'service:test', action: 'test.archived', agentId: null, requestId: null, traceId: null, payload: { i } });
          ids.push(event.eventId);
          messages.push({
            key: event.eventId,
            value: await world.codec.encode(`${topic}-value`, event),
            headers: { 'event-id': event.eventId },
            ...(produceOptions.timestamp ? { timestamp: String(produceOptions.timestamp(i)) } : {}),
            ...(produceOptions.partition !== undefined ? { partition: produceOptions.partition } : {}),
          });
        }
        await producer.send({ topic, messages });
      }
      for (const id of ids) into.add(id);
      return ids;
    },

    async archived() {
      const root = topic;
      const out: ArchivedEvent[] = [];
      for (const day of await listArchiveDays(s3, bucket, root)) {
        for (const name of await listDayFiles(s3, bucket, root, day)) {
          const key = formatArchiveKey(name);
          const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
          const file = await openArchiveFile<AuditEvent>(object.Body as Readable, { name: key });
          for await (const record of file.records) {
            out.push({ partition: name.partition, offset: record.offset, eventId: record.event.eventId, key: record.key?.toString() ?? '', timestamp: record.timestamp.getTime(), day, file: key });
          }
        }
      }
      return out;
    },

    async archivedEnds() {
      const ends = new Map<number, number>();
      for (const day of await listArchiveDays(s3, bucket, topic)) {
        for (const name of await listDayFiles(s3, bucket, topic, day)) ends.set(name.partition, Math.max(ends.get(name.partition) ?? 0, name.lastOffset + 1));
      }
      return ends;
    },

    committed() {
      return withAdmin(async (admin) => {
        const [t] = await admin.fetchOffsets({ groupId: `${world.env.TOPIC_PREFIX ?? ''}agent-manager-archiver`, topics: [topic] });
        return new Map((t?.partitions ?? []).filter((p) => p.offset !== '-1').map((p) => [p.partition, BigInt(p.offset)]));
      });
    },

    logEnds() {
      return withAdmin(async (admin) => new Map((await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, BigInt(p.high)])));
    },

    dlqCount() {
      return withAdmin(async (admin) => (await admin.fetchTopicOffsets(`${topic}.dlq`)).reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0));
    },

    async indexCount() {
      return Number((await query<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.audit_index`))[0]?.n);
    },

    async filedCount() {
      return Number((await query<{ n: string | null }>(`SELECT coalesce(sum(record_count), 0) AS n FROM ${schema}.audit_files`))[0]?.n);
    },

    async filedEnds() {
      const rows = await query<{ p: number; end: string }>(`SELECT kafka_partition AS p, max(last_offset) + 1 AS end FROM ${schema}.audit_files GROUP BY kafka_partition`);
      return new Map(rows.map((r) => [r.p, Number(r.end)]));
    },

    async stopArchivers() {
      for (const child of children.splice(0)) {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          await waitForExit(child, 30_000).catch(() => child.kill('SIGKILL'));
        }
      }
    },

    async teardown() {
      await self.stopArchivers();
      await producer.disconnect().catch(() => undefined);
      await client.end().catch(() => undefined);
      await world.teardown();
      await removeTestBucket(s3, bucket);
      s3.destroy();
    },
  };
  return self;
}

/** Every file's first and last offsets as its name says, in offset order per partition. */
export function fileRanges(events: readonly ArchivedEvent[]): Map<number, [number, number][]> {
  const ranges = new Map<number, [number, number][]>();
  for (const key of new Set(events.map((e) => e.file))) {
    const name = parseArchiveKey(key);
    if (!name) throw new Error(`not an archive key: ${key}`);
    ranges.set(name.partition, [...(ranges.get(name.partition) ?? []), [name.firstOffset, name.lastOffset]]);
  }
  for (const list of ranges.values()) list.sort((a, b) => a[0] - b[0]);
  return ranges;
}

/**
 * Every expected event once in the archive, every (partition, offset) once, each file holding exactly
 * the offsets its name says, and a partition's files contiguous from offset 0: no gap, no overlap.
 * `offsetsOf` gives the offsets each partition must hold (default: 0 up to its highest archived one).
 */
export function expectExactlyOnce(events: readonly ArchivedEvent[], expected: ReadonlySet<string>): void {
  expect(events.length).toBe(expected.size);
  expect(new Set(events.map((e) => e.eventId))).toEqual(expected);
  expect(new Set(events.map((e) => `${e.partition}:${e.offset}`)).size).toBe(events.length);
  for (const e of events) expect(e.key).toBe(e.eventId);
  const files = new Map<string, number[]>();
  for (const e of events) files.set(e.file, [...(files.get(e.file) ?? []), e.offset]);
  for (const [key, offsets] of files) {
    const name = parseArchiveKey(key);
    expect(name).toBeDefined();
    if (!name) continue;
    offsets.sort((a, b) => a - b);
    expect([offsets[0], offsets[offsets.length - 1], offsets.length]).toEqual([name.firstOffset, name.lastOffset, name.lastOffset - name.firstOffset + 1]);
  }
  for (const [partition, list] of fileRanges(events)) {
    expect([partition, list[0]?.[0]]).toEqual([partition, 0]);
    for (let i = 1; i < list.length; i++) expect([partition, list[i]?.[0]]).toEqual([partition, (list[i - 1]?.[1] ?? NaN) + 1]);
  }
}
