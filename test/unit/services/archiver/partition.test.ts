import { join } from 'node:path';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { chainOf, GENESIS_CHAIN } from '../../../../lib/archive/chain.ts';
import { sha256Base64, type ArchivedObject } from '../../../../lib/archive/objects.ts';
import type { ArchiveFileRow } from '../../../../lib/archive/index-store.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import { errorCode, unavailableError } from '../../../../lib/errors.ts';
import { PartitionArchiver, schemaIdOf, type ArchiverRecord, type PartitionArchiverDeps } from '../../../../services/archiver/partition.ts';

const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const T = Date.parse('2026-12-01T10:00:00.000Z');
const limits = { flushIntervalMs: 60_000, maxRecords: 4, maxBytes: 1 << 20, windowGraceMs: 1_000 };

function record(offset: number, timestamp: number, schemaId = 3): ArchiverRecord {
  const event = buildAuditEvent({ actor: 'a', action: 'x.y', agentId: null, requestId: null, traceId: null, payload: { offset }, time: new Date(timestamp) });
  const body = contract.toBuffer(event);
  const value = Buffer.alloc(5 + body.length);
  value.writeUInt32BE(schemaId, 1);
  body.copy(value, 5);
  return { offset, timestamp, key: null, headers: [], value };
}

/** In-memory stand-ins for S3 and Postgres: objects by key, files and closed days as recorded. */
function memoryDeps(failPuts = 0, earliestOpenDay?: string): PartitionArchiverDeps & { objects: Map<string, Buffer>; files: ArchiveFileRow[]; days: string[] } {
  let failures = failPuts;
  const objects = new Map<string, Buffer>();
  const files: ArchiveFileRow[] = [];
  const days: string[] = [];
  return {
    objects,
    files,
    days,
    putObject(key, body): Promise<ArchivedObject> {
      if (failures-- > 0) return Promise.reject(unavailableError('s3', 'S3_UNAVAILABLE', 'S3 did not answer'));
      const existing = objects.get(key);
      if (existing !== undefined && !existing.equals(body)) return Promise.reject(new Error('conflict'));
      objects.set(key, body);
      return Promise.resolve({ bucket: 'b', key, checksumSha256: sha256Base64(body), versionId: '1', outcome: existing ? 'existing' : 'uploaded' });
    },
    writerSchema: () => Promise.resolve(contract.schemaText),
    recordFile(file) {
      files.push(file);
      return Promise.resolve();
    },
    closeDay(day) {
      days.push(day);
      return Promise.resolve();
    },
    earliestOpenDay: () => Promise.resolve(earliestOpenDay),
  };
}

const options = { topic: 'audit-events', partition: 5, prefix: 'audit-events', limits, dayGraceMs: 60_000 };
const fresh = { nextOffset: 0, lastFileDay: undefined, openDay: undefined };

describe('PartitionArchiver', () => {
  it('opens the archive\'s earliest open day on a partition that never had a record, once caught up and once anything is archived, and closes days by the clock from there', async () => {
    const deps = memoryDeps(0, '2026-11-29');
    const archiver = new PartitionArchiver(options, deps, fresh);
    const afterGrace = Date.parse('2026-11-30T00:00:00Z') + options.dayGraceMs;
    await archiver.tick(afterGrace, false);
    expect(archiver.openDay).toBeUndefined();
    await archiver.tick(afterGrace, true);
    expect(deps.days).toEqual(['2026-11-29']);
    expect(archiver.openDay).toBe('2026-11-30');
    // Nothing archived anywhere yet: no day to open, nothing closes.
    const empty = memoryDeps();
    const idle = new PartitionArchiver(options, empty, fresh);
    await idle.tick(afterGrace, true);
    expect(idle.openDay).toBeUndefined();
    expect(empty.days).toEqual([]);
  });

  it('holds the commit point at the first record not in a durable file', async () => {
    const deps = memoryDeps();
    const archiver = new PartitionArchiver(options, deps, fresh);
    await archiver.add([0, 1, 2].map((o) => record(o, T + o)));
    expect(archiver.committable()).toBe(0);
    await archiver.add([3, 4].map((o) => record(o, T + o)));
    expect(deps.files.map((f) => `${f.firstOffset}-${f.lastOffset}`)).toEqual(['0-3']);
    expect(archiver.committable()).toBe(4);
    await archiver.tick(T + 61_000, true);
    expect(archiver.committable()).toBeUndefined();
    expect([...deps.objects.keys()]).toEqual([
      'audit-events/dt=2026-12-01/p=5/00000000000000000000-00000000000000000003.avro',
      'audit-events/dt=2026-12-01/p=5/00000000000000000004-00000000000000000004.avro',
    ]);
  });

  it('retries a failed upload on the next call, and a redelivered batch adds nothing twice', async () => {
    const deps = memoryDeps(1);
    const archiver = new PartitionArchiver(options, deps, fresh);
    const batch = [0, 1, 2, 3, 4].map((o) => record(o, T + o));
    const error = await archiver.add(batch).catch((e: unknown) => e);
    expect(errorCode(error)).toBe('S3_UNAVAILABLE');
    expect(archiver.committable()).toBe(0);
    await archiver.add(batch); // the runtime retries the batch
    expect(deps.files.map((f) => `${f.firstOffset}-${f.lastOffset}`)).toEqual(['0-3']);
    expect(archiver.committable()).toBe(4);
  });

  it('skips what the archive already holds when resuming', async () => {
    const deps = memoryDeps();
    const archiver = new PartitionArchiver(options, deps, { nextOffset: 4, lastFileDay: '2026-12-01', openDay: undefined });
    await archiver.add([0, 1, 2, 3, 4, 5, 6, 7].map((o) => record(o, T + o)));
    expect(deps.files.map((f) => `${f.firstOffset}-${f.lastOffset}`)).toEqual(['4-7']);
  });

  it('closes a day after its last file, and days in between, when a later day\'s record arrives', async () => {
    const deps = memoryDeps();
    const archiver = new PartitionArchiver(options, deps, fresh);
    await archiver.add([record(0, Date.parse('2026-12-01T23:59:59.999Z')), record(1, Date.parse('2026-12-03T00:00:00.000Z'))]);
    expect(deps.files.map((f) => `${f.day}:${f.firstOffset}-${f.lastOffset}`)).toEqual(['2026-12-01:0-0']);
    expect(deps.days).toEqual(['2026-12-01', '2026-12-02']);
  });

  it('chains every record across files, continues a resumed chain, and gives a retried file the same chain and bytes', async () => {
    const records = [0, 1, 2, 3, 4, 5, 6, 7].map((o) => record(o, T + o));
    const hashes = records.map((r) => contract.fromBuffer(r.value.subarray(5)).hash);
    const deps = memoryDeps(1);
    const archiver = new PartitionArchiver(options, deps, fresh);
    expect(archiver.chain).toBe(GENESIS_CHAIN);
    await archiver.add(records).catch(() => undefined); // the first upload fails: the chain does not move
    expect(archiver.chain).toBe(GENESIS_CHAIN);
    await archiver.add(records);
    const [a, b] = deps.files;
    expect([a?.firstChain, a?.lastChain]).toEqual(Object.values(chainOf(GENESIS_CHAIN, hashes.slice(0, 4))));
    expect([b?.firstChain, b?.lastChain]).toEqual(Object.values(chainOf(a?.lastChain ?? '', hashes.slice(4))));
    expect(archiver.chain).toBe(chainOf(GENESIS_CHAIN, hashes).last);

    // Another archiver resuming after the first file, from its last chain: the same second file, byte for byte.
    const resumed = memoryDeps();
    const next = new PartitionArchiver(options, resumed, { nextOffset: 4, lastFileDay: '2026-12-01', openDay: undefined, chain: a?.lastChain ?? '' });
    await next.add(records);
    const key = [...deps.objects.keys()][1] ?? '';
    expect(resumed.objects.get(key)?.equals(deps.objects.get(key) ?? Buffer.alloc(0))).toBe(true);
  });

  it('reads the writer schema id from the registry framing', () => {
    expect(schemaIdOf(record(0, T, 77).value)).toBe(77);
    expect(errorCode(catching(() => schemaIdOf(Buffer.from([1, 2, 3]))))).toBe('DECODE_BAD_FRAMING');
  });
});

function catching(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}
