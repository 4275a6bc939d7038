import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { chainOf, GENESIS_CHAIN } from '../../../../lib/archive/chain.ts';
import { ARCHIVE_METADATA, encodeArchiveFile, encodeChainedArchiveFile, syncMarkerOf, type ArchiveFileInput, type ArchiveRecordInput } from '../../../../lib/archive/container.ts';
import { openArchiveFile, readArchiveRecords } from '../../../../lib/archive/reader.ts';
import { topicContract, type TopicRecords } from '../../../../lib/contracts/schemas.ts';
import { errorCode } from '../../../../lib/errors.ts';

type AuditEvent = TopicRecords['audit-events'];

const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const KEY = 'audit-events/dt=2026-12-01/p=3/00000000000000000100-00000000000000000104.avro';
const DAY = Date.parse('2026-12-01T00:00:00.000Z');

function events(count: number, firstOffset = 100): { input: ArchiveRecordInput; event: AuditEvent }[] {
  return Array.from({ length: count }, (_, i) => {
    const event = buildAuditEvent({
      eventId: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
      time: new Date(DAY + i * 1000),
      actor: 'service:provisioner',
      action: i % 2 === 0 ? 'agent.state_changed' : 'request.rejected',
      agentId: i % 3 === 0 ? null : `10000000-0000-4000-8000-${String(i % 5).padStart(12, '0')}`,
      requestId: null,
      traceId: i % 2 === 0 ? '0123456789abcdef0123456789abcdef' : null,
      payload: { i, note: 'x'.repeat(i % 40) },
    });
    return {
      event,
      input: {
        // Holes, as transaction markers and dead-lettered records leave.
        offset: firstOffset + i * 2,
        timestamp: DAY + i * 1000 + 7,
        key: i % 7 === 0 ? null : Buffer.from(event.agentId ?? event.eventId),
        headers: [
          { key: 'event-id', value: Buffer.from(event.eventId) },
          { key: 'traceparent', value: i % 2 === 0 ? Buffer.from(`00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`) : null },
        ],
        event: contract.toBuffer(event),
      },
    };
  });
}

function file(count: number, overrides: Partial<ArchiveFileInput> = {}): ArchiveFileInput {
  return { objectKey: KEY, topic: 'audit-events', partition: 3, schemaId: 7, eventSchema: contract.schemaText, records: events(count).map((e) => e.input), ...overrides };
}

describe('archive container files', () => {
  it('gives the same bytes for the same records under the same name', () => {
    const a = encodeArchiveFile(file(50));
    const b = encodeArchiveFile(file(50));
    expect(a.equals(b)).toBe(true);
    expect(a.subarray(0, 4).toString('latin1')).toBe('Obj\u0001');
  });

  it('derives the sync marker from the name: another name, another marker and other bytes', () => {
    const other = 'audit-events/dt=2026-12-01/p=4/00000000000000000100-00000000000000000104.avro';
    expect(syncMarkerOf(KEY)).toHaveLength(16);
    expect(syncMarkerOf(KEY).equals(syncMarkerOf(other))).toBe(false);
    const a = encodeArchiveFile(file(5));
    const b = encodeArchiveFile(file(5, { objectKey: other }));
    expect(a.equals(b)).toBe(false);
    expect(a.includes(syncMarkerOf(KEY))).toBe(true);
    expect(b.includes(syncMarkerOf(other))).toBe(true);
  });

  it.each(['deflate', 'null'] as const)('reads back every record with its offset, timestamp, key, headers and exact event bytes (%s)', async (codec) => {
    const source = events(300);
    // Small blocks: several blocks per file.
    const bytes = encodeArchiveFile(file(300, { codec, blockBytes: 4096 }));
    const { header, records } = await readArchiveRecords<AuditEvent>(bytes, { eventType: contract.type });
    expect(header).toMatchObject({ codec, topic: 'audit-events', partition: 3, schemaId: 7, firstOffset: 100, lastOffset: 100 + 299 * 2, count: 300 });
    expect(header.sync.equals(syncMarkerOf(KEY))).toBe(true);
    expect(records).toHaveLength(300);
    records.forEach((record, i) => {
      const expected = source[i];
      expect(record.offset).toBe(expected?.input.offset);
      expect(record.timestamp.getTime()).toBe(expected?.input.timestamp);
      expect(record.key).toEqual(expected?.input.key);
      expect(record.headers).toEqual(expected?.input.headers);
      expect(record.event).toEqual(expected?.event);
      expect(record.eventBytes.equals(expected?.input.event ?? Buffer.alloc(0))).toBe(true);
    });
  });

  it('compresses: deflate files are smaller than uncompressed ones', () => {
    expect(encodeArchiveFile(file(300)).length).toBeLessThan(encodeArchiveFile(file(300, { codec: 'null' })).length / 2);
  });

  it('streams a file that arrives in small chunks', async () => {
    const bytes = encodeArchiveFile(file(120, { blockBytes: 2048 }));
    async function* chunks() {
      for (let i = 0; i < bytes.length; i += 37) yield bytes.subarray(i, i + 37);
    }
    const opened = await openArchiveFile(chunks());
    let count = 0;
    for await (const record of opened.records) {
      expect(record.offset).toBe(100 + count * 2);
      count += 1;
    }
    expect(count).toBe(120);
  });

  it('refuses records out of offset order and an event that is not one record of its schema', () => {
    const records = events(3).map((e) => e.input);
    const [a, b, c] = records as [ArchiveRecordInput, ArchiveRecordInput, ArchiveRecordInput];
    expect(() => encodeArchiveFile(file(0, { records: [a, c, b] }))).toThrow(/increasing offset order/);
    expect(() => encodeArchiveFile(file(0, { records: [{ ...a, event: Buffer.concat([a.event, Buffer.from([0])]) }] }))).toThrow(/not one record/);
    expect(() => encodeArchiveFile(file(0, { records: [] }))).toThrow(/at least one record/);
  });

  it('finds a truncated or altered file corrupt', async () => {
    const bytes = encodeArchiveFile(file(20));
    const truncated = bytes.subarray(0, bytes.length - 5);
    const error = await readArchiveRecords(truncated).catch((e: unknown) => e);
    expect(errorCode(error)).toBe('ARCHIVE_FILE_CORRUPT');
    const altered = Buffer.from(bytes);
    altered.writeUInt8((altered.at(-1) ?? 0) ^ 0xff, altered.length - 1); // the last sync marker
    expect(errorCode(await readArchiveRecords(altered).catch((e: unknown) => e))).toBe('ARCHIVE_FILE_CORRUPT');
    expect(errorCode(await readArchiveRecords(Buffer.from('not avro at all')).catch((e: unknown) => e))).toBe('ARCHIVE_FILE_CORRUPT');
  });

  it('chains the events\' hashes after the chain before the file, in its header, deterministically', async () => {
    const list = events(30);
    const before = chainOf(GENESIS_CHAIN, ['1'.repeat(64)]).last;
    const chained = encodeChainedArchiveFile({ ...file(30), chainBefore: before });
    expect(chained.chain).toEqual(chainOf(before, list.map((e) => e.event.hash)));
    expect(encodeChainedArchiveFile({ ...file(30), chainBefore: before }).body.equals(chained.body)).toBe(true);
    const { header, records } = await readArchiveRecords(chained.body);
    expect(header.firstChain).toBe(chained.chain.first);
    expect(header.lastChain).toBe(chained.chain.last);
    expect(header.metadata[ARCHIVE_METADATA.chainLast]?.toString('utf8')).toBe(chained.chain.last);
    expect(records).toHaveLength(30);
    // Another chain before: other header, same records. Without a chain: the file as before the change.
    expect(encodeChainedArchiveFile({ ...file(30), chainBefore: GENESIS_CHAIN }).body.equals(chained.body)).toBe(false);
    const plain = await readArchiveRecords(encodeArchiveFile(file(30)));
    expect(plain.header.firstChain).toBeUndefined();
    expect(plain.header.lastChain).toBeUndefined();
    expect(errorCode((() => { try { return encodeChainedArchiveFile({ ...file(3), chainBefore: 'nope' }); } catch (e) { return e; } })())).toBe('ARCHIVE_RECORD_INVALID');
  });

  // Apache Avro's own reader, when its tool is in the local Maven repository
  // (mvn dependency:get -Dartifact=org.apache.avro:avro-tools:1.12.1 -Dtransitive=false).
  const toolsDir = join(homedir(), '.m2/repository/org/apache/avro/avro-tools');
  const jar = existsSync(toolsDir)
    ? readdirSync(toolsDir)
        .map((version) => join(toolsDir, version, `avro-tools-${version}.jar`))
        .find((path) => existsSync(path))
    : undefined;
  (jar !== undefined ? it : it.skip)('is read by Apache Avro tools (tojson, getmeta)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'archive-'));
    try {
      const path = join(dir, 'file.avro');
      writeFileSync(path, encodeArchiveFile(file(25, { blockBytes: 1024 })));
      const json = execFileSync('java', ['-jar', jar ?? '', 'tojson', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const lines = json.trim().split('\n').map((line) => JSON.parse(line) as { offset: number; timestamp: number; event: { eventId: string; time: number } });
      expect(lines).toHaveLength(25);
      expect(lines[24]).toMatchObject({ offset: 148, timestamp: DAY + 24_000 + 7, event: { eventId: '00000000-0000-4000-8000-000000000024', time: DAY + 24_000 } });
      const meta = execFileSync('java', ['-jar', jar ?? '', 'getmeta', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      expect(meta).toMatch(/avro\.codec\s+deflate/);
      expect(meta).toMatch(/agentmanager\.first_offset\s+100/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
