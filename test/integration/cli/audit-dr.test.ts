import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { Producer } from 'kafkajs';
import pg from 'pg';
import { stackCredentials } from '../../../dev/stack/endpoints.ts';
import { buildAuditEvent } from '../../../lib/audit.ts';
import { initArchiveBucket } from '../../../lib/archive/bucket.ts';
import { formatArchiveKey, listArchiveDays, listDayFiles, utcDay } from '../../../lib/archive/layout.ts';
import { openArchiveFile } from '../../../lib/archive/reader.ts';
import { createTopicsAndWait } from '../../../lib/contracts/topics.ts';
import { createFleetWorld, type FleetWorld } from '../../support/fleet.ts';
import { waitForExit } from '../../support/processes.ts';
import { eventually, rawKafka } from '../../support/runtime.ts';
import { removeTestBucket, testS3Client } from '../../support/s3.ts';
import { uniqueName } from '../../support/stack.ts';

// The DR drill as an operator runs it: events archived by `run archiver`, then the index (the audit
// tables) and the audit topic dropped; `audit reindex` and `audit replay` into a fresh topic rebuild
// both from S3 alone: the same records (key, headers, value bytes, order per partition) and the same
// index rows. A second replay adds nothing.
jest.setTimeout(300_000);

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** One Kafka record as the drill compares them: what a consumer of the topic sees. */
interface WireRecord {
  readonly key: string | null;
  readonly headers: [string, string | null][];
  readonly value: string;
}

function cli(args: readonly string[], env: Record<string, string | undefined>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), ...args], { env: { ...process.env, ...env }, timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

/** Every record of `topic`, per partition in offset order, read with a throwaway group up to the end offsets. */
async function readTopic(topic: string): Promise<Map<number, WireRecord[]>> {
  const kafka = rawKafka();
  const admin = kafka.admin();
  await admin.connect();
  const ends = new Map((await admin.fetchTopicOffsets(topic)).map((p) => [p.partition, Number(p.high)]));
  const out = new Map<number, WireRecord[]>([...ends.keys()].map((p) => [p, []]));
  const left = new Set([...ends].filter(([, high]) => high > 0).map(([p]) => p));
  const groupId = uniqueName('audit-dr-read');
  if (left.size > 0) {
    const consumer = kafka.consumer({ groupId });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`reading ${topic}: partitions ${[...left].join(',')} not read to their end`)), 60_000);
        void consumer.run({
          eachMessage: async ({ partition, message }) => {
            const headers: [string, string | null][] = [];
            for (const [k, v] of Object.entries(message.headers ?? {})) {
              for (const one of Array.isArray(v) ? v : [v]) headers.push([k, one === undefined || one === null ? null : Buffer.from(one).toString('base64')]);
            }
            out.get(partition)?.push({ key: message.key?.toString('base64') ?? null, headers, value: message.value?.toString('base64') ?? '' });
            if (Number(message.offset) + 1 >= (ends.get(partition) ?? 0)) left.delete(partition);
            if (left.size === 0) {
              clearTimeout(timer);
              resolve();
            }
          },
        });
      });
    } finally {
      await consumer.disconnect();
      await admin.deleteGroups([groupId]).catch(() => undefined);
    }
  }
  await admin.disconnect();
  return out;
}

describe('the DR drill: audit reindex + audit replay rebuild the index and the stream from S3 alone', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('audit-dr');
  const eventIds = new Set<string>();
  let world: FleetWorld;
  let producer: Producer;
  let db: pg.Client;
  let archiver: ChildProcess | undefined;

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    world = await createFleetWorld('audit-dr', {
      ARCHIVE_BUCKET: bucket,
      ARCHIVE_MAX_FILE_RECORDS: '40',
      ARCHIVE_FLUSH_INTERVAL_MS: '1000',
      ARCHIVE_WINDOW_GRACE_MS: '300',
      ARCHIVE_TICK_MS: '300',
    });
    producer = rawKafka().producer({ idempotent: true });
    await producer.connect();
    db = new pg.Client({ connectionString: world.env.DATABASE_URL });
    await db.connect();
  });

  afterAll(async () => {
    if (archiver !== undefined && archiver.exitCode === null && archiver.signalCode === null) {
      archiver.kill('SIGTERM');
      await waitForExit(archiver, 30_000).catch(() => archiver?.kill('SIGKILL'));
    }
    await producer?.disconnect();
    await db?.end();
    await world?.teardown();
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  async function archivedCount(): Promise<number> {
    const root = world.topics['audit-events'];
    let n = 0;
    for (const day of await listArchiveDays(s3, bucket, root)) {
      for (const name of await listDayFiles(s3, bucket, root, day)) {
        const key = formatArchiveKey(name);
        const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        const file = await openArchiveFile(object.Body as Readable, { name: key });
        for await (const _ of file.records) n += 1;
      }
    }
    return n;
  }

  async function indexRows(): Promise<{ index: unknown[]; files: unknown[] }> {
    const index = await db.query(
      `SELECT event_id, event_time, action, actor, agent_id, request_id, trace_id, kafka_partition, kafka_offset, payload_hash FROM ${world.schema}.audit_index ORDER BY event_id`,
    );
    const files = await db.query(`SELECT object_key, day, kafka_partition, first_offset, last_offset, record_count, bytes, sha256, version_id FROM ${world.schema}.audit_files ORDER BY object_key`);
    return { index: index.rows, files: files.rows };
  }

  it('archives, drops the index and the topic, then rebuilds both event by event; a second replay adds nothing', async () => {
    const topic = world.topics['audit-events'];
    const start = Date.now();
    // A few hundred events: keyed by agent or by event id, with repeated and valueless headers.
    for (let batch = 0; batch < 6; batch++) {
      const messages = [];
      for (let i = 0; i < 50; i++) {
        const agentId = i % 3 === 0 ? null : randomUUID();
        const event = buildAuditEvent({ actor: 'service:test', action: `test.dr.${i % 4}`, agentId, requestId: i % 5 === 0 ? randomUUID() : null, traceId: null, payload: { batch, i } });
        eventIds.add(event.eventId);
        messages.push({
          key: agentId ?? event.eventId,
          value: await world.codec.encode(`${topic}-value`, event),
          headers: { 'event-id': event.eventId, trace: ['a', Buffer.from([0, 1, 2, 255])], ...(i % 7 === 0 ? { empty: Buffer.alloc(0) } : {}) },
        });
      }
      await producer.send({ topic, messages });
    }

    archiver = spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'run', 'archiver'], {
      env: { ...process.env, ...world.env, ...stackCredentials(process.cwd(), 'archiver') },
      stdio: 'ignore',
    });
    await eventually(async () => (await archivedCount().catch(() => 0)) >= eventIds.size, 120_000, 'every event archived');
    await eventually(async () => Number((await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${world.schema}.audit_index`)).rows[0]?.n) === eventIds.size, 30_000, 'every event indexed');
    await eventually(async () => Number((await db.query<{ n: string }>(`SELECT coalesce(sum(record_count), 0) AS n FROM ${world.schema}.audit_files`)).rows[0]?.n) === eventIds.size, 30_000, 'every file recorded');
    archiver.kill('SIGTERM');
    await waitForExit(archiver, 30_000);
    expect(await archivedCount()).toBe(eventIds.size);

    const originalStream = await readTopic(topic);
    const partitions = originalStream.size;
    expect([...originalStream.values()].reduce((n, l) => n + l.length, 0)).toBe(eventIds.size);
    const originalIndex = await indexRows();
    expect(originalIndex.index).toHaveLength(eventIds.size);

    // The disaster: the index and the topic are gone.
    await db.query(`TRUNCATE ${world.schema}.audit_index, ${world.schema}.audit_files`);
    const admin = rawKafka().admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic] });
    // The rebuild topic: fresh, as many partitions as the original.
    const rebuilt = `${world.env.TOPIC_PREFIX}rebuild.audit-events`;
    await createTopicsAndWait(admin, [{ topic: rebuilt, numPartitions: partitions, replicationFactor: 1 }]);
    await admin.disconnect();

    const env = { ...world.env, LOG_LEVEL: 'warn' };
    const from = utcDay(start - 86_400_000);
    const to = utcDay(Date.now() + 86_400_000);
    const reindex = await cli(['audit', 'reindex', '--from', from, '--to', to], env);
    expect(reindex.stderr).toBe('');
    expect(reindex.code).toBe(0);
    expect(reindex.stdout).toMatch(new RegExp(`${eventIds.size} records: ${eventIds.size} new index rows`));
    expect(await indexRows()).toEqual(originalIndex);

    const replay = await cli(['audit', 'replay', '--from', from, '--to', to, '--topic', rebuilt], env);
    expect(replay.stderr).toBe('');
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain(`${rebuilt}: ${partitions} partitions, 0 events already there`);
    expect(replay.stdout).toMatch(/^\d{4}-\d{2}-\d{2}: \d+ files, \d+ events: \d+ produced, 0 already there$/m);
    expect(replay.stdout.trim().split('\n').at(-1)).toMatch(new RegExp(`files, ${eventIds.size} events into ${rebuilt.replace(/\./g, '\\.')}: ${eventIds.size} produced, 0 already there$`));
    // Event by event: same partition, same order, same key, headers and value bytes.
    expect(await readTopic(rebuilt)).toEqual(originalStream);

    // Again: every event is already there, nothing is produced.
    const again = await cli(['audit', 'replay', '--from', from, '--to', to, '--topic', rebuilt, '--quiet'], env);
    expect(again.code).toBe(0);
    expect(again.stdout.trim().split('\n').at(-1)).toMatch(new RegExp(`${eventIds.size} events into .*: 0 produced, ${eventIds.size} already there$`));
    expect(await readTopic(rebuilt)).toEqual(originalStream);

    // Usage and a missing target: the exit codes of the other audit commands.
    expect((await cli(['audit', 'replay', '--from', 'yesterday', '--to', to], env)).code).toBe(2);
    const missing = await cli(['audit', 'replay', '--from', from, '--to', to, '--topic', `${world.env.TOPIC_PREFIX}nope`], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`the target topic ${world.env.TOPIC_PREFIX}nope does not exist`);
  });
});
