// `audit verify` on one core. (1) The hot loop: archive files built in memory (the real contract,
// deflate, as the archiver writes them) verified by FileVerifier — every event's hash recomputed,
// the chain, offsets, the file SHA-256 and each event against its index row — against a baseline
// over the same bytes in the same run: SHA-256 of each file plus inflate and Avro decode of every
// record, nothing else (the floor of any verifier that reads every event). (2) End to end: the same
// files in a bucket of MinIO and their index rows in a Postgres schema of the local stack, verified
// by verifyArchive (ListObjectVersions, GetObject, index queries). Figures are printed; nothing is asserted.
import { hash } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { inflateRawSync } from 'node:zlib';
import { buildAuditEvent } from '../lib/audit.ts';
import { chainOf, GENESIS_CHAIN } from '../lib/archive/chain.ts';
import { encodeArchiveFile, HEADER_TYPE } from '../lib/archive/container.ts';
import type { AuditIndexEntry } from '../lib/archive/index-store.ts';
import { formatArchiveKey, type ArchiveFileName } from '../lib/archive/layout.ts';
import { FileVerifier, indexRowView } from '../lib/archive/verify.ts';
import { avroType, topicContract } from '../lib/contracts/schemas.ts';
import { initArchiveBucket } from '../lib/archive/bucket.ts';
import { removeTestBucket, testS3Client } from '../test/support/s3.ts';
import { uniqueName } from '../test/support/stack.ts';
import { createVerifyWorld } from '../test/integration/lib/archive/verify-world.ts';

const USAGE = `usage: npm run bench -- verify [--events N] [--file-records R] [--rounds K] [--no-stack]
  --events N        events verified (default 200000)
  --file-records R  records per archive file (default 20000)
  --rounds K        measurements of each side, alternated; the best of each is reported (default 3)
  --no-stack        only the in-memory hot loop (no MinIO, no Postgres)`;

export interface BenchFile {
  readonly name: ArchiveFileName;
  readonly key: string;
  readonly bytes: Buffer;
  readonly chainBefore: string;
  readonly index: AuditIndexEntry[];
}

/** `count` audit events in archive files of `perFile` records on one partition of one day, with their chains and index rows. */
export function benchFiles(count: number, perFile: number, day = '2026-11-30', partition = 0, prefix = 'audit-events'): BenchFile[] {
  const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
  const base = Date.parse(`${day}T00:00:00Z`);
  const files: BenchFile[] = [];
  let chain = GENESIS_CHAIN;
  for (let start = 0; start < count; start += perFile) {
    const n = Math.min(perFile, count - start);
    const events = Array.from({ length: n }, (_, i) =>
      buildAuditEvent({
        actor: 'service:provisioner',
        action: 'agent.state_changed',
        agentId: '6f1c2a52-6f6b-4e8e-9d3a-4f0d6c1b2a3c',
        requestId: null,
        traceId: '0123456789abcdef0123456789abcdef',
        payload: { from: 'PROVISIONING', to: 'RUNNING', attempt: start + i },
        time: new Date(base + start + i),
      }),
    );
    const name: ArchiveFileName = { prefix, day, partition, firstOffset: start, lastOffset: start + n - 1 };
    const key = formatArchiveKey(name);
    const span = chainOf(
      chain,
      events.map((e) => e.hash),
    );
    const bytes = encodeArchiveFile({
      objectKey: key,
      topic: 'audit-events',
      partition,
      schemaId: 1,
      eventSchema: contract.schemaText,
      records: events.map((event, i) => ({
        offset: start + i,
        timestamp: base + start + i,
        key: Buffer.from(event.agentId ?? event.eventId),
        headers: [{ key: 'event-id', value: Buffer.from(event.eventId) }],
        event: contract.toBuffer(event),
      })),
    });
    files.push({
      name,
      key,
      bytes,
      chainBefore: chain,
      index: events.map((e, i) => ({
        eventId: e.eventId,
        time: e.time,
        action: e.action,
        actor: e.actor,
        agentId: e.agentId,
        requestId: e.requestId,
        traceId: e.traceId,
        partition,
        offset: start + i,
        payloadHash: e.hash,
      })),
    });
    chain = span.last;
  }
  return files;
}

/** SHA-256 of each file and inflate + decode of every record: events/s. */
function baselineRate(files: readonly BenchFile[]): number {
  const types = new Map<string, ReturnType<typeof avroType>>();
  let events = 0;
  const started = process.cpuUsage();
  for (const file of files) {
    hash('sha256', file.bytes, 'base64');
    const header: { value: { meta: Record<string, Buffer> }; offset: number } = HEADER_TYPE.decode(file.bytes, 0);
    const schema = header.value.meta['avro.schema']?.toString('utf8') ?? '';
    let type = types.get(schema);
    if (type === undefined) types.set(schema, (type = avroType(schema, 'bench')));
    let position = header.offset;
    while (position < file.bytes.length) {
      // Block header: two zig-zag longs (avsc's long type reads them).
      const blockCount: { value: number; offset: number } = LONG.decode(file.bytes, position);
      const size: { value: number; offset: number } = LONG.decode(file.bytes, blockCount.offset);
      const data = inflateRawSync(file.bytes.subarray(size.offset, size.offset + size.value));
      position = size.offset + size.value + 16;
      let at = 0;
      for (let i = 0; i < blockCount.value; i++) at = (type.decode(data, at) as { offset: number }).offset;
      events += blockCount.value;
    }
  }
  return events / cpuSeconds(started);
}

/** CPU seconds of this process since `since`: a rate per CPU second is the rate on one core, whatever else runs on the machine. */
function cpuSeconds(since: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / 1e6;
}

const LONG = avroType('"long"', 'long');

/** FileVerifier over every file, chained, each against its index rows: events/s. */
function verifyRate(files: readonly BenchFile[]): { rate: number; findings: number } {
  const verifier = new FileVerifier();
  const indexes = files.map((f) => new Map(f.index.map((row) => [row.offset, indexRowView(row)])));
  let events = 0;
  let findings = 0;
  const started = process.cpuUsage();
  let chainBefore: Buffer = Buffer.from(files[0]?.chainBefore ?? GENESIS_CHAIN, 'hex');
  files.forEach((file, i) => {
    const result = verifier.verify({ key: file.key, name: file.name, bytes: file.bytes, chainBefore, index: indexes[i] });
    events += result.records;
    findings += result.findings.length + result.unindexed.length;
    chainBefore = Buffer.from(result.lastChain ?? GENESIS_CHAIN, 'hex');
  });
  return { rate: events / cpuSeconds(started), findings };
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { events: { type: 'string' }, 'file-records': { type: 'string' }, rounds: { type: 'string' }, 'no-stack': { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help === true) {
    console.log(USAGE);
    return;
  }
  const count = Number(values.events ?? 200_000);
  const perFile = Number(values['file-records'] ?? 20_000);
  const rounds = Number(values.rounds ?? 3);
  console.log(`building ${count} events in files of ${perFile} records...`);
  const files = benchFiles(count, perFile);
  const bytes = files.reduce((sum, f) => sum + f.bytes.length, 0);
  console.log(`${files.length} files, ${(bytes / 1e6).toFixed(1)} MB (deflate)`);
  let best = { verify: 0, baseline: 0 };
  for (let round = 0; round < rounds; round++) {
    const base = baselineRate(files);
    const verified = verifyRate(files);
    if (verified.findings !== 0) throw new Error(`the bench files gave ${verified.findings} findings: the verifier or the bench is wrong`);
    console.log(`round ${round + 1}: verify ${Math.round(verified.rate).toLocaleString('en')} events/s, baseline (SHA-256 + inflate + decode) ${Math.round(base).toLocaleString('en')} events/s`);
    best = { verify: Math.max(best.verify, verified.rate), baseline: Math.max(best.baseline, base) };
  }
  console.log(
    `verify hot loop: ${Math.round(best.verify).toLocaleString('en')} events/s on one core (goal 200,000); ` +
      `baseline ${Math.round(best.baseline).toLocaleString('en')} events/s; ratio ${(best.verify / best.baseline).toFixed(2)}`,
  );
  if (values['no-stack'] === true) return;
  await endToEnd(count, perFile);
}

/** The same volume through MinIO and Postgres: one closed, signed day of two partitions, verified by verifyArchive. */
async function endToEnd(count: number, perFile: number): Promise<void> {
  const s3 = testS3Client();
  const bucket = uniqueName('bench-verify');
  await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  const world = await createVerifyWorld(s3, bucket, 'bench-verify');
  try {
    const half = Math.ceil(count / 2);
    const sizes = (n: number) => Array.from({ length: Math.ceil(n / perFile) }, (_, i) => Math.min(perFile, n - i * perFile));
    console.log(`end to end: writing ${count} events (2 partitions) to s3://${bucket}/${world.root} and their index rows...`);
    await world.writeDay('2026-11-30', { partitions: { 0: sizes(half), 1: sizes(count - half) } });
    const cpu = process.cpuUsage();
    const report = await world.verify('2026-11-30', '2026-11-30');
    const cpuRate = report.events / cpuSeconds(cpu);
    if (!report.intact) throw new Error(`the bench day is not intact: ${report.findings.map((f) => f.kind).join(', ')}`);
    console.log(
      `verify end to end (ListObjectVersions, GetObject, manifest and signature, index queries): ${report.events.toLocaleString('en')} events in ${report.seconds.toFixed(2)} s wall, ` +
        `${Math.round(report.eventsPerSecond).toLocaleString('en')} events/s wall, ${Math.round(cpuRate).toLocaleString('en')} events per CPU second`,
    );
  } finally {
    await world.teardown();
    await removeTestBucket(s3, bucket);
    s3.destroy();
  }
}
