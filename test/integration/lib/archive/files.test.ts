import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { encodeArchiveFile } from '../../../../lib/archive/container.ts';
import { formatArchiveKey, highestArchivedFile, listArchiveDays, listPartitionDayFiles, type ArchiveFileName } from '../../../../lib/archive/layout.ts';
import { putArchiveObject } from '../../../../lib/archive/objects.ts';
import { openArchiveFile } from '../../../../lib/archive/reader.ts';
import { topicContract, type TopicRecords } from '../../../../lib/contracts/schemas.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { uniqueName } from '../../../support/stack.ts';

const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));

// GOVERNANCE retention so the test can remove what it wrote (see objects.test.ts).
describe('archive files in S3 (MinIO)', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('archive-files');
  const prefix = 'audit-events';

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  });

  afterAll(async () => {
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  async function write(name: ArchiveFileName): Promise<{ key: string; body: Buffer; events: TopicRecords['audit-events'][] }> {
    const key = formatArchiveKey(name);
    const events = Array.from({ length: name.lastOffset - name.firstOffset + 1 }, (_, i) =>
      buildAuditEvent({ actor: 'service:test', action: 'test.archived', agentId: null, requestId: null, traceId: null, payload: { i }, time: new Date(`${name.day}T12:00:00Z`) }),
    );
    const body = encodeArchiveFile({
      objectKey: key,
      topic: 'audit-events',
      partition: name.partition,
      schemaId: 1,
      eventSchema: contract.schemaText,
      records: events.map((event, i) => ({ offset: name.firstOffset + i, timestamp: Date.parse(`${name.day}T12:00:00Z`) + i, key: Buffer.from(event.eventId), headers: [], event: contract.toBuffer(event) })),
    });
    expect((await putArchiveObject(s3, { bucket, key, body, contentType: 'application/avro' })).outcome).toBe('uploaded');
    return { key, body, events };
  }

  it('writes files, finds the highest archived one per partition, and reads one back as a stream', async () => {
    expect(await highestArchivedFile(s3, bucket, prefix, 0)).toBeUndefined();
    const p0 = [
      { prefix, day: '2026-11-30', partition: 0, firstOffset: 0, lastOffset: 9 },
      { prefix, day: '2026-11-30', partition: 0, firstOffset: 10, lastOffset: 14 },
      { prefix, day: '2026-12-01', partition: 0, firstOffset: 15, lastOffset: 1_014 },
    ];
    const p1 = { prefix, day: '2026-11-30', partition: 1, firstOffset: 0, lastOffset: 2 };
    const written = [];
    for (const name of [...p0, p1]) written.push(await write(name));

    expect(await listArchiveDays(s3, bucket, prefix)).toEqual(['2026-11-30', '2026-12-01']);
    expect(await listPartitionDayFiles(s3, bucket, prefix, '2026-11-30', 0)).toEqual(p0.slice(0, 2));
    expect(await highestArchivedFile(s3, bucket, prefix, 0)).toEqual(p0[2]);
    // Partition 1 has nothing on the latest day: its earlier day is searched.
    expect(await highestArchivedFile(s3, bucket, prefix, 1)).toEqual(p1);
    expect(await highestArchivedFile(s3, bucket, prefix, 2)).toBeUndefined();

    const big = written[2];
    const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: big?.key }));
    const file = await openArchiveFile<TopicRecords['audit-events']>(object.Body as Readable, { eventType: contract.type, name: big?.key ?? '' });
    expect(file.header).toMatchObject({ partition: 0, firstOffset: 15, lastOffset: 1_014, count: 1_000 });
    let n = 0;
    for await (const record of file.records) {
      expect(record.offset).toBe(15 + n);
      expect(record.event).toEqual(big?.events[n]);
      n += 1;
    }
    expect(n).toBe(1_000);

    // The same bytes again (a retry after a crash before the offset commit): a no-op.
    const again = await putArchiveObject(s3, { bucket, key: big?.key ?? '', body: Buffer.from(big?.body ?? Buffer.alloc(0)) });
    expect(again.outcome).toBe('existing');
  });
});
