import { join } from 'node:path';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import type { RotationLimits } from '../../../../lib/archive/rotation.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { retryableError } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { PartitionArchiver, type ArchiverRecord } from '../../../../services/archiver/partition.ts';
import { archiveStore, resumePoint } from '../../../../services/archiver/store.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

// A crash between a file's upload and its audit_files row (what `kill -9` hit in kills.test.ts):
// the file is in S3 only, and the restarted archiver resumes after it, so it never writes it again.
// Resuming records it from the object itself: its range, count, bytes, checksum and version.
const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const limits: RotationLimits = { flushIntervalMs: 60_000, maxRecords: 10, maxBytes: 1 << 20, windowGraceMs: 1_000 };
const T0 = Date.parse('2026-11-20T10:00:00.000Z');

function records(count: number): ArchiverRecord[] {
  return Array.from({ length: count }, (_, offset) => {
    const event = buildAuditEvent({ actor: 'service:test', action: 'test.archived', agentId: null, requestId: null, traceId: null, payload: { offset } });
    const body = contract.toBuffer(event);
    const value = Buffer.alloc(5 + body.length);
    value.writeUInt32BE(7, 1);
    body.copy(value, 5);
    return { offset, timestamp: T0 + offset, key: Buffer.from(event.eventId), headers: [], value };
  });
}

describe('archiver resume after a crash between upload and audit_files', () => {
  const env = testEnv();
  const s3 = testS3Client();
  const bucket = uniqueName('archiver-resume');
  const schema = uniqueName('archiver_resume').replace(/-/g, '_');
  let db: Pool;

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    db = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 });
  });

  afterAll(async () => {
    await removeTestBucket(s3, bucket);
    s3.destroy();
    await db?.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await db?.end();
  });

  it('records the file that was uploaded but not recorded, once, and goes on after it', async () => {
    const prefix = 'resume';
    const store = archiveStore({ s3, bucket, db, registryUrl: 'http://unused', partitionCount: 1 }, () => Promise.resolve(contract.schemaText));
    const all = records(25);
    // The first archiver: file 0-9 recorded, file 10-19 uploaded, then it "dies" before recording it.
    let recorded = 0;
    const crashing = new PartitionArchiver({ topic: 'audit-events', partition: 0, prefix, limits, dayGraceMs: 60_000 }, {
      ...store,
      async recordFile(file) {
        if (recorded++ === 1) throw retryableError('TEST_CRASH', 'killed between upload and record');
        await store.recordFile(file);
      },
    }, await resumePoint(s3, bucket, prefix, db, 0));
    await expect(crashing.add(all.slice(0, 20))).rejects.toThrow('killed between upload and record');
    const before = await db.query<{ object_key: string }>('SELECT object_key FROM audit_files ORDER BY first_offset');
    expect(before.rows.map((r) => r.object_key)).toEqual([`${prefix}/dt=2026-11-20/p=0/${'0'.padStart(20, '0')}-${'9'.padStart(20, '0')}.avro`]);

    // The restart: resumes after the highest file in S3 and records it from the object.
    const resume = await resumePoint(s3, bucket, prefix, db, 0);
    expect(resume.nextOffset).toBe(20);
    const key = `${prefix}/dt=2026-11-20/p=0/${'10'.padStart(20, '0')}-${'19'.padStart(20, '0')}.avro`;
    const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
    const row = await db.query('SELECT day::text, kafka_partition, first_offset, last_offset, record_count, bytes, sha256, version_id FROM audit_files WHERE object_key = $1', [key]);
    expect(row.rows).toEqual([
      { day: '2026-11-20', kafka_partition: 0, first_offset: '10', last_offset: '19', record_count: 10, bytes: String(head.ContentLength), sha256: head.ChecksumSHA256, version_id: head.VersionId },
    ]);
    // Again: nothing more to record.
    await resumePoint(s3, bucket, prefix, db, 0);
    expect((await db.query('SELECT 1 FROM audit_files')).rowCount).toBe(2);

    const restarted = new PartitionArchiver({ topic: 'audit-events', partition: 0, prefix, limits, dayGraceMs: 60_000 }, store, resume);
    await restarted.add(all.slice(10));
    await restarted.tick(T0 + 3_600_000, true);
    const after = await db.query<{ first_offset: string; last_offset: string; record_count: number }>('SELECT first_offset, last_offset, record_count FROM audit_files ORDER BY first_offset');
    expect(after.rows.map((r) => [Number(r.first_offset), Number(r.last_offset), r.record_count])).toEqual([
      [0, 9, 10],
      [10, 19, 10],
      [20, 24, 5],
    ]);
  });
});
