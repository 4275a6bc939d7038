import { join } from 'node:path';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { encodeArchiveFile } from '../../../../lib/archive/container.ts';
import { formatArchiveKey, type ArchiveFileName } from '../../../../lib/archive/layout.ts';
import { putArchiveObject } from '../../../../lib/archive/objects.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import { createTopicsAndWait } from '../../../../lib/contracts/topics.ts';
import { kafkajsTopicAdmin } from '../../../../lib/dlq/kafkajs-admin.ts';
import { createKafkajsAdmin, createKafkajsClient } from '../../../../lib/kafka/kafkajs.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { frameValue, replayArchive, type ReplayProgress } from '../../../../services/archiver/replay.ts';
import { rawKafka } from '../../../support/runtime.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { brokers, testTls, uniqueName } from '../../../support/stack.ts';

// `replayArchive` on hand-written archive files (a made-up schema id: the replay never asks the
// registry): days filtered, a target with fewer partitions than the archive (by key), and events
// already in the target, with or without their event-id header, skipped.
jest.setTimeout(120_000);

const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const SCHEMA_ID = 4242;

interface Written {
  readonly partition: number;
  readonly eventId: string;
  readonly key: Buffer;
  readonly value: Buffer;
}

describe('replayArchive', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('archive-replay');
  const prefix = 'audit-events';
  const topic = uniqueName('archive-replay-target');
  const logger = createLogger('test', 'silent');
  const kafka = createKafkajsClient({ clientId: 'replay-test', brokers: brokers(), tls: testTls(), logger });
  const admin = kafkajsTopicAdmin(() => createKafkajsAdmin({ clientId: 'replay-test', brokers: brokers(), tls: testTls() }));
  const written = new Map<string, Written[]>();

  async function write(name: ArchiveFileName, count: number): Promise<void> {
    const key = formatArchiveKey(name);
    const events = Array.from({ length: count }, (_, i) => buildAuditEvent({ actor: 'service:test', action: 'test.replay', agentId: null, requestId: null, traceId: null, payload: { i } }));
    const records = events.map((event, i) => ({
      offset: name.firstOffset + i * 2,
      timestamp: Date.parse(`${name.day}T12:00:00Z`) + i,
      key: Buffer.from(`k-${event.eventId}`),
      headers: [
        { key: 'event-id', value: Buffer.from(event.eventId) },
        { key: 'trace', value: Buffer.from('a') },
        { key: 'trace', value: null },
      ],
      event: contract.toBuffer(event),
    }));
    const body = encodeArchiveFile({ objectKey: key, topic: 'audit-events', partition: name.partition, schemaId: SCHEMA_ID, eventSchema: contract.schemaText, records });
    await putArchiveObject(s3, { bucket, key, body });
    written.set(name.day, [
      ...(written.get(name.day) ?? []),
      ...events.map((e, i) => ({ partition: name.partition, eventId: e.eventId, key: records[i]?.key ?? Buffer.alloc(0), value: frameValue(SCHEMA_ID, records[i]?.event ?? Buffer.alloc(0)) })),
    ]);
  }

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    const kafkaAdmin = rawKafka().admin();
    await kafkaAdmin.connect();
    await createTopicsAndWait(kafkaAdmin, [{ topic, numPartitions: 2, replicationFactor: 1 }]);
    await kafkaAdmin.disconnect();
    await write({ prefix, day: '2026-11-29', partition: 0, firstOffset: 0, lastOffset: 8 }, 5);
    await write({ prefix, day: '2026-11-29', partition: 0, firstOffset: 10, lastOffset: 14 }, 3);
    await write({ prefix, day: '2026-11-29', partition: 2, firstOffset: 0, lastOffset: 6 }, 4);
    await write({ prefix, day: '2026-11-30', partition: 1, firstOffset: 0, lastOffset: 4 }, 3);
    await write({ prefix, day: '2026-12-02', partition: 0, firstOffset: 16, lastOffset: 16 }, 1);
  });

  afterAll(async () => {
    const kafkaAdmin = rawKafka().admin();
    await kafkaAdmin.connect();
    await kafkaAdmin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await kafkaAdmin.disconnect();
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  async function targetRecords(): Promise<{ partition: number; key: Buffer | null; value: Buffer | null; headers: [string, string | null][] }[]> {
    const consumer = rawKafka().consumer({ groupId: uniqueName('replay-read') });
    const out: { partition: number; key: Buffer | null; value: Buffer | null; headers: [string, string | null][] }[] = [];
    const kafkaAdmin = rawKafka().admin();
    await kafkaAdmin.connect();
    const total = (await kafkaAdmin.fetchTopicOffsets(topic)).reduce((n, p) => n + Number(p.high), 0);
    await kafkaAdmin.disconnect();
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve) => {
      if (total === 0) resolve();
      void consumer.run({
        eachMessage: async ({ partition, message }) => {
          const headers: [string, string | null][] = [];
          for (const [k, v] of Object.entries(message.headers ?? {})) for (const one of Array.isArray(v) ? v : [v]) headers.push([k, one === undefined || one === null ? null : one.toString()]);
          out.push({ partition, key: message.key, value: message.value, headers });
          if (out.length >= total) resolve();
        },
      });
    });
    await consumer.disconnect();
    return out;
  }

  it('replays the days asked, by key where the target lacks the partition, skipping events already there', async () => {
    const day1 = written.get('2026-11-29') ?? [];
    // Already in the target: one event with its header, one without (its id is read from the value).
    const producer = rawKafka().producer();
    await producer.connect();
    await producer.send({
      topic,
      messages: [
        { partition: 0, key: day1[0]?.key ?? null, value: day1[0]?.value ?? null, headers: { 'event-id': day1[0]?.eventId ?? '' } },
        { partition: 1, key: day1[1]?.key ?? null, value: day1[1]?.value ?? null },
      ],
    });
    await producer.disconnect();

    const progress: ReplayProgress[] = [];
    const summary = await replayArchive({ s3, bucket, prefix, from: '2026-11-29', to: '2026-11-30', kafka, admin, topic, groupId: uniqueName('replay-ids'), progress: (p) => progress.push(p) });
    expect(summary).toEqual({ topic, days: 2, files: 4, records: 15, produced: 13, skipped: 2, repartitioned: 4 });
    expect(progress[0]).toEqual({ kind: 'target', topic, partitions: 2, existing: 2 });
    expect(progress.filter((p) => p.kind === 'day')).toEqual([
      { kind: 'day', day: '2026-11-29', files: 3, records: 12, produced: 10, skipped: 2 },
      { kind: 'day', day: '2026-11-30', files: 1, records: 3, produced: 3, skipped: 0 },
    ]);

    const records = await targetRecords();
    expect(records).toHaveLength(15);
    // Partition 0 keeps the archive's order after the pre-existing record; partition 2's events went by key.
    // (day1[1] was already there, in partition 1: skipped.)
    const archivedP0 = day1.filter((w, i) => w.partition === 0 && i !== 1).map((w) => w.value.toString('base64'));
    const p0 = records.filter((r) => r.partition === 0 && archivedP0.includes(r.value?.toString('base64') ?? '')).map((r) => r.value?.toString('base64'));
    expect(p0).toEqual(archivedP0);
    for (const r of records.slice(0)) if (r.headers.length === 3) expect(r.headers.map(([k]) => k)).toEqual(['event-id', 'trace', 'trace']);
    const byValue = new Map(records.map((r) => [r.value?.toString('base64'), r]));
    for (const w of [...day1, ...(written.get('2026-11-30') ?? [])]) {
      const r = byValue.get(w.value.toString('base64'));
      expect(r?.key).toEqual(w.key);
    }
    expect(byValue.get(day1[2]?.value.toString('base64'))?.headers).toEqual([
      ['event-id', day1[2]?.eventId],
      ['trace', 'a'],
      // kafkajs cannot produce a header without a value: it comes back empty.
      ['trace', ''],
    ]);

    // Again, the later day included: only that day's event is new.
    const again = await replayArchive({ s3, bucket, prefix, from: '2026-11-01', to: '2026-12-31', kafka, admin, topic, groupId: uniqueName('replay-ids') });
    expect(again).toEqual({ topic, days: 3, files: 5, records: 16, produced: 1, skipped: 15, repartitioned: 0 });
    expect(await targetRecords()).toHaveLength(16);
  });

  it('refuses a target topic that does not exist, with a typed error', async () => {
    await expect(replayArchive({ s3, bucket, prefix, from: '2026-11-29', to: '2026-11-29', kafka, admin, topic: `${topic}-missing`, groupId: uniqueName('replay-ids') })).rejects.toMatchObject({
      code: 'AUDIT_REPLAY_UNKNOWN_TOPIC',
      retryable: false,
    });
  });
});
