import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { listArchiveDays, listPartitionDayFiles, formatArchiveKey } from '../../../../lib/archive/layout.ts';
import { encodeArchiveFile } from '../../../../lib/archive/container.ts';
import { openArchiveFile } from '../../../../lib/archive/reader.ts';
import { errorCode, unavailableDependency } from '../../../../lib/errors.ts';
import type { RotationLimits } from '../../../../lib/archive/rotation.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { PartitionArchiver, type ArchiverRecord, type WrittenFile } from '../../../../services/archiver/partition.ts';
import { archiveStore, resumePoint } from '../../../../services/archiver/store.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const SCHEMA_ID = 42;
const limits: RotationLimits = { flushIntervalMs: 60_000, maxRecords: 25, maxBytes: 1 << 20, windowGraceMs: 1_000 };
const DAY_GRACE = 60_000;
const MIDNIGHT = Date.parse('2026-11-21T00:00:00.000Z');

/** 300 records every 2 s from 23:55 to 00:05, with holes in the offsets (transaction markers, dead letters). */
function records(): ArchiverRecord[] {
  const out: ArchiverRecord[] = [];
  let offset = 10;
  for (let i = 0; i < 300; i++) {
    const timestamp = MIDNIGHT - 300_000 + i * 2_000 + (i === 150 ? -1 : 0); // i=150 at 23:59:59.999
    const event = buildAuditEvent({ actor: 'service:test', action: 'test.archived', agentId: null, requestId: null, traceId: null, payload: { i }, time: new Date(timestamp - 5) });
    const body = contract.toBuffer(event);
    const value = Buffer.alloc(5 + body.length);
    value.writeUInt32BE(SCHEMA_ID, 1);
    body.copy(value, 5);
    out.push({ offset, timestamp, key: Buffer.from(event.eventId), headers: [{ key: 'event-id', value: Buffer.from(event.eventId) }], value });
    offset += i % 17 === 0 ? 3 : 1;
  }
  return out;
}

describe('a partition archiver against MinIO and Postgres', () => {
  const env = testEnv();
  const s3 = testS3Client();
  const bucket = uniqueName('archiver-partition');
  // One database schema per archive prefix, as in a deployment (closed days are per partition).
  const schemas = [uniqueName('archiver_straight').replace(/-/g, '_'), uniqueName('archiver_crashy').replace(/-/g, '_')];
  const pools = new Map<string, Pool>();

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    for (const [prefix, schema] of [['straight', schemas[0]], ['crashy', schemas[1]]] as const) {
      await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema: schema ?? '', logger: createLogger('test', 'silent') });
      pools.set(prefix, createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 }));
    }
  });

  afterAll(async () => {
    await removeTestBucket(s3, bucket);
    s3.destroy();
    for (const [prefix, pool] of pools) {
      await pool.query(`DROP SCHEMA IF EXISTS ${schemas[prefix === 'straight' ? 0 : 1] ?? ''} CASCADE`);
      await pool.end();
    }
  });

  const db = (prefix: string): Pool => {
    const pool = pools.get(prefix);
    if (pool === undefined) throw new Error(`no pool for ${prefix}`);
    return pool;
  };

  function archiver(prefix: string, resume: Awaited<ReturnType<typeof resumePoint>>, written: WrittenFile[]): PartitionArchiver {
    const deps = archiveStore({ s3, bucket, db: db(prefix), registryUrl: 'http://unused', partitionCount: 1 }, () => Promise.resolve(contract.schemaText));
    return new PartitionArchiver({ topic: 'audit-events', partition: 0, prefix, limits, dayGraceMs: DAY_GRACE }, { ...deps, fileWritten: (f) => written.push(f) }, resume);
  }

  async function readBack(prefix: string): Promise<{ keys: string[]; offsets: number[] }> {
    const keys: string[] = [];
    const offsets: number[] = [];
    for (const day of await listArchiveDays(s3, bucket, prefix)) {
      for (const name of await listPartitionDayFiles(s3, bucket, prefix, day, 0)) {
        const key = formatArchiveKey(name);
        keys.push(key);
        const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        const file = await openArchiveFile(object.Body as Readable, { name: key });
        for await (const record of file.records) offsets.push(record.offset);
      }
    }
    return { keys, offsets };
  }

  it('archives every offset exactly once across a crash, in the same files as an uninterrupted run, and closes the days', async () => {
    const all = records();
    const batches = (from: number, list: ArchiverRecord[]) => Array.from({ length: Math.ceil((list.length - from) / 37) }, (_, i) => list.slice(from + i * 37, from + (i + 1) * 37));

    // The reference: one run from start to end.
    const reference: WrittenFile[] = [];
    const straight = archiver('straight', await resumePoint(s3, bucket, 'straight', db('straight'), 0), reference);
    for (const batch of batches(0, all)) await straight.add(batch);

    // A run that crashes after 200 records: what it buffered is lost, nothing past it was committed.
    const crashed = archiver('crashy', await resumePoint(s3, bucket, 'crashy', db('crashy'), 0), []);
    let committed = all[0]?.offset ?? 0;
    for (const batch of batches(0, all.slice(0, 200))) {
      await crashed.add(batch);
      const last = batch.at(-1)?.offset ?? 0;
      committed = crashed.committable() ?? last + 1;
      // Never past a record that is not in a durable file.
      expect(committed).toBeLessThanOrEqual(last + 1);
    }
    const resume = await resumePoint(s3, bucket, 'crashy', db('crashy'), 0);
    expect(resume.nextOffset).toBeLessThanOrEqual(all[200]?.offset ?? 0);
    expect(resume.nextOffset).toBeGreaterThanOrEqual(committed);

    // The next owner re-reads from the committed offset; what is archived already is skipped.
    const written: WrittenFile[] = [];
    const next = archiver('crashy', resume, written);
    await next.add(all.filter((r) => r.offset >= committed));
    expect(written.every((f) => f.outcome === 'uploaded')).toBe(true);

    // Idle and caught up past the last window: the last file; past the day and its grace: the day closes.
    const end = MIDNIGHT + 86_400_000 + DAY_GRACE;
    await straight.tick(end, true);
    await next.tick(end, true);
    expect(straight.committable()).toBeUndefined();
    expect(next.committable()).toBeUndefined();

    const expected = all.map((r) => r.offset);
    const a = await readBack('straight');
    const b = await readBack('crashy');
    expect(a.offsets).toEqual(expected);
    expect(b.offsets).toEqual(expected);
    expect(b.keys.map((k) => k.replace(/^crashy\//, ''))).toEqual(a.keys.map((k) => k.replace(/^straight\//, '')));
    // 23:59:59.999 and 00:00:00.000 are in different day folders.
    expect(a.keys.some((k) => k.includes('/dt=2026-11-20/'))).toBe(true);
    expect(a.keys.some((k) => k.includes('/dt=2026-11-21/'))).toBe(true);
    expect(reference.map((f) => f.reason)).toEqual(expect.arrayContaining(['count', 'window', 'day']));

    for (const prefix of ['straight', 'crashy']) {
      const { rows } = await db(prefix).query<{ day: string; record_count: string; file_count: number }>(`SELECT to_char(day, 'YYYY-MM-DD') AS day, record_count, file_count FROM audit_days ORDER BY day`);
      expect(rows.map((r) => [r.day, Number(r.record_count), r.file_count])).toEqual([
        ['2026-11-20', 151, a.keys.filter((k) => k.includes('dt=2026-11-20')).length],
        ['2026-11-21', 149, a.keys.filter((k) => k.includes('dt=2026-11-21')).length],
      ]);
    }
  });

  it('takes an object with the same records in other bytes as the file, and holds the partition on other records', async () => {
    const store = archiveStore({ s3, bucket, db: db('straight'), registryUrl: 'http://unused', partitionCount: 1 });
    const key = 'conflicts/dt=2026-11-20/p=0/00000000000000000010-00000000000000000012.avro';
    const three = records().slice(0, 3);
    const file = (codec: 'null' | 'deflate', list: ArchiverRecord[]) =>
      encodeArchiveFile({ objectKey: key, topic: 'audit-events', partition: 0, schemaId: SCHEMA_ID, eventSchema: contract.schemaText, codec, records: list.map((r) => ({ ...r, event: r.value.subarray(5) })) });
    expect((await store.putObject(key, file('null', three))).outcome).toBe('uploaded');
    // Another compression of the same records (another zlib): the same file.
    expect((await store.putObject(key, file('deflate', three))).outcome).toBe('existing');
    // Other records under the same name: an alarm that holds the partition.
    const other = three.map((r, i) => (i === 2 ? { ...r, key: Buffer.from('another key') } : r));
    const error = await store.putObject(key, file('deflate', other)).catch((e: unknown) => e);
    expect(errorCode(error)).toBe('ARCHIVE_OBJECT_CONFLICT');
    expect(unavailableDependency(error)).toBe('archive');
  });
});
