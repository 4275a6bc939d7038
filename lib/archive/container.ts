/**
 * The archive's files: Avro object-container files (the Avro spec's "Object Container Files"),
 * readable by Apache Avro's tools, Spark and Athena, written so that the same records under the same
 * name always give the same bytes:
 *
 * - one record per Kafka record, `AuditArchiveRecord {offset, timestamp, key, headers, event}`: the
 *   event in the writer schema it was produced with (its Avro body copied as it came, without the
 *   registry's 5-byte header), wrapped with what a replay needs to reproduce the Kafka record and what
 *   proves where it came from. Offsets are stored, not implied by the file name: a partition's
 *   offsets have holes (transaction markers, records sent to the DLQ);
 * - the sync marker is the first 16 bytes of SHA-256 of the object key (avsc would pick a random one);
 * - the header metadata is a fixed list in a fixed order, with nothing of the moment of writing;
 * - blocks are cut at a fixed size and compressed with `deflate` (raw RFC 1951, as the spec says), the
 *   codec every Avro implementation has without an extra library.
 */
import { createHash } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import avsc from 'avsc';
import { errorMessage, permanentError } from '../errors.ts';
import { avroType, type AvroRecordSchema } from '../contracts/schemas.ts';
import { nextChainBytes, type ChainSpan } from './chain.ts';

export const ARCHIVE_RECORD_NAME = 'io.agentmanager.archive.v1.AuditArchiveRecord';

/** The codecs written: `deflate` by default; `null` (uncompressed) for tests and inspection. */
export type ArchiveCodec = 'deflate' | 'null';

/** Uncompressed bytes after which a block is closed (Apache Avro's default sync interval is 64 KiB). */
export const ARCHIVE_BLOCK_BYTES = 64 * 1024;

/** Metadata keys of our own (the spec reserves `avro.*`). */
export const ARCHIVE_METADATA = {
  topic: 'agentmanager.topic',
  partition: 'agentmanager.partition',
  firstOffset: 'agentmanager.first_offset',
  lastOffset: 'agentmanager.last_offset',
  count: 'agentmanager.count',
  schemaId: 'agentmanager.schema_id',
  /** The hash chain (./chain.ts) at the file's first and last records, hex (files written since the integrity change). */
  chainFirst: 'agent-manager.chain.first',
  chainLast: 'agent-manager.chain.last',
} as const;

export interface KafkaHeader {
  readonly key: string;
  /** Kafka allows a header without a value. */
  readonly value: Buffer | null;
}

/** One Kafka record as the archive keeps it. */
export interface ArchiveRecordInput {
  readonly offset: number;
  /** The record's Kafka timestamp (the broker's append time on `audit-events`), epoch milliseconds. */
  readonly timestamp: number;
  readonly key: Buffer | null;
  /** In the order the record carried them (a header key may repeat). */
  readonly headers: readonly KafkaHeader[];
  /** The event's Avro body in the writer schema (the Kafka value after the registry's 5-byte header). */
  readonly event: Buffer;
}

export interface ArchiveFileInput {
  /** The object key the file is written under: it seeds the sync marker. */
  readonly objectKey: string;
  readonly topic: string;
  readonly partition: number;
  /** The registry id of the events' writer schema (one per file: the archiver rotates when it changes). */
  readonly schemaId: number;
  /** That writer schema (JSON text or parsed). */
  readonly eventSchema: string | AvroRecordSchema;
  /** In offset order, at least one. */
  readonly records: readonly ArchiveRecordInput[];
  readonly codec?: ArchiveCodec;
  readonly blockBytes?: number;
}

export interface ChainedArchiveFileInput extends ArchiveFileInput {
  /** The partition's chain value before the file's first record (hex; GENESIS_CHAIN before the first record ever). */
  readonly chainBefore: string;
}

export interface ChainedArchiveFile {
  readonly body: Buffer;
  /** Chain values of the file's first and last records, also in its header metadata. */
  readonly chain: ChainSpan;
}

/** The file's schema: the wrapper around the events' writer schema. */
export function archiveFileSchema(eventSchema: string | AvroRecordSchema): Record<string, unknown> {
  const event = typeof eventSchema === 'string' ? (JSON.parse(eventSchema) as unknown) : eventSchema;
  return {
    type: 'record',
    name: 'AuditArchiveRecord',
    namespace: 'io.agentmanager.archive.v1',
    doc: 'One record of the audit-events topic as archived: its Kafka offset, timestamp, key and headers, and the event in the schema it was written with.',
    fields: [
      { name: 'offset', type: 'long', doc: 'The Kafka offset of the record in its partition (the file metadata names the topic and partition).' },
      { name: 'timestamp', type: { type: 'long', logicalType: 'timestamp-millis' }, doc: "The record's Kafka timestamp: the broker's append time (LogAppendTime)." },
      { name: 'key', type: ['null', 'bytes'], doc: "The record's key as produced (the agentId, or the eventId)." },
      {
        name: 'headers',
        doc: "The record's headers, in order.",
        type: { type: 'array', items: { type: 'record', name: 'KafkaHeader', fields: [{ name: 'key', type: 'string' }, { name: 'value', type: ['null', 'bytes'] }] } },
      },
      { name: 'event', type: event, doc: 'The audit event, in the writer schema it was produced with.' },
    ],
  };
}

// The fields before `event`, with plain longs: a wrapper record's encoding is these followed by the
// event's own bytes, so the event body is copied, never decoded and re-encoded.
const PREFIX_TYPE = avsc.Type.forSchema({
  type: 'record',
  name: 'ArchiveRecordPrefix',
  fields: [
    { name: 'offset', type: 'long' },
    { name: 'timestamp', type: 'long' },
    { name: 'key', type: ['null', 'bytes'] },
    { name: 'headers', type: { type: 'array', items: { type: 'record', name: 'KafkaHeader', fields: [{ name: 'key', type: 'string' }, { name: 'value', type: ['null', 'bytes'] }] } } },
  ],
});

export const AVRO_MAGIC = Buffer.from('Obj\x01', 'latin1');

export const HEADER_TYPE = avsc.Type.forSchema({
  type: 'record',
  name: 'org.apache.avro.file.Header',
  fields: [
    { name: 'magic', type: { type: 'fixed', name: 'Magic', size: 4 } },
    { name: 'meta', type: { type: 'map', values: 'bytes' } },
    { name: 'sync', type: { type: 'fixed', name: 'Sync', size: 16 } },
  ],
});

const LONG_TYPE = avsc.Type.forSchema('long');

/** The sync marker of the file stored under `objectKey`: the first 16 bytes of its SHA-256. */
export function syncMarkerOf(objectKey: string): Buffer {
  return createHash('sha256').update(objectKey, 'utf8').digest().subarray(0, 16);
}

function invalid(message: string, context: Record<string, unknown>, cause?: unknown): never {
  throw permanentError('ARCHIVE_RECORD_INVALID', message, cause, context);
}

/**
 * The bytes of an archive file. Deterministic: the same input gives the same bytes (on the same zlib);
 * throws ARCHIVE_RECORD_INVALID (permanent) for records out of order or an event body that is not
 * exactly one record of the writer schema. Without a chain: the files written before the integrity change.
 */
export function encodeArchiveFile(input: ArchiveFileInput): Buffer {
  return encode(input, undefined).body;
}

/**
 * An archive file that carries its hash chain: each record's event `hash` (hex SHA-256, read from the
 * event as archived) chained after `chainBefore`; the first and last values go into the header
 * metadata. Still deterministic: the same records after the same chain give the same bytes.
 */
export function encodeChainedArchiveFile(input: ChainedArchiveFileInput): ChainedArchiveFile {
  const { body, chain } = encode(input, input.chainBefore);
  return { body, chain: chain as ChainSpan };
}

const HEX_32 = /^[0-9a-f]{64}$/;

function encode(input: ArchiveFileInput, chainBefore: string | undefined): { body: Buffer; chain: ChainSpan | undefined } {
  const { objectKey, records } = input;
  const codec = input.codec ?? 'deflate';
  const blockBytes = input.blockBytes ?? ARCHIVE_BLOCK_BYTES;
  const first = records[0];
  const last = records.at(-1);
  if (first === undefined || last === undefined) invalid(`${objectKey}: an archive file holds at least one record`, { objectKey });
  if (chainBefore !== undefined && !HEX_32.test(chainBefore)) invalid(`${objectKey}: the chain before the file is not 64 lower-case hex characters`, { objectKey });

  const eventType = avroType(input.eventSchema, `${objectKey}: the events' writer schema (id ${input.schemaId})`);
  const schema = archiveFileSchema(input.eventSchema);
  // Checks that the wrapper is a valid schema (e.g. no name clash between the event's types and ours).
  avroType(schema, `${objectKey}: the archive file schema`);

  const sync = syncMarkerOf(objectKey);
  // The header goes first but is known last (the chain values): its slot is filled after the records.
  const parts: Buffer[] = [Buffer.alloc(0)];
  let chain: Buffer | undefined = chainBefore === undefined ? undefined : Buffer.from(chainBefore, 'hex');
  let firstChain: Buffer | undefined;

  let block: Buffer[] = [];
  let blockSize = 0;
  let blockCount = 0;
  const flush = () => {
    if (blockCount === 0) return;
    const data = Buffer.concat(block, blockSize);
    const body = codec === 'deflate' ? deflateRawSync(data) : data;
    parts.push(LONG_TYPE.toBuffer(blockCount), LONG_TYPE.toBuffer(body.length), body, sync);
    block = [];
    blockSize = 0;
    blockCount = 0;
  };

  let previous = -1;
  for (const record of records) {
    if (!Number.isSafeInteger(record.offset) || record.offset <= previous) {
      invalid(`${objectKey}: offset ${record.offset} after ${previous}: records must be in increasing offset order`, { objectKey, offset: record.offset });
    }
    previous = record.offset;
    let decoded: { value: unknown; offset: number };
    try {
      decoded = eventType.decode(record.event, 0);
    } catch (error) {
      invalid(`${objectKey}: the event at offset ${record.offset} does not decode with its writer schema: ${errorMessage(error)}`, { objectKey, offset: record.offset }, error);
    }
    if (decoded.offset !== record.event.length) {
      invalid(`${objectKey}: the event at offset ${record.offset} is not one record of its writer schema (${record.event.length} bytes, the record ends at ${decoded.offset})`, { objectKey, offset: record.offset });
    }
    if (chain !== undefined) {
      const hash = (decoded.value as { hash?: unknown } | null)?.hash;
      if (typeof hash !== 'string' || !HEX_32.test(hash)) {
        invalid(`${objectKey}: the event at offset ${record.offset} has no lower-case hex SHA-256 \`hash\` to chain`, { objectKey, offset: record.offset });
      }
      chain = nextChainBytes(chain, Buffer.from(hash, 'hex'));
      firstChain ??= chain;
    }
    let prefix: Buffer;
    try {
      prefix = PREFIX_TYPE.toBuffer({ offset: record.offset, timestamp: record.timestamp, key: record.key, headers: record.headers });
    } catch (error) {
      invalid(`${objectKey}: the record at offset ${record.offset} has an invalid timestamp, key or headers: ${errorMessage(error)}`, { objectKey, offset: record.offset }, error);
    }
    block.push(prefix, record.event);
    blockSize += prefix.length + record.event.length;
    blockCount += 1;
    if (blockSize >= blockBytes) flush();
  }
  flush();

  const span = chain !== undefined && firstChain !== undefined ? { first: firstChain.toString('hex'), last: chain.toString('hex') } : undefined;
  const meta: Record<string, Buffer> = {
    'avro.schema': Buffer.from(JSON.stringify(schema), 'utf8'),
    'avro.codec': Buffer.from(codec, 'utf8'),
    [ARCHIVE_METADATA.topic]: Buffer.from(input.topic, 'utf8'),
    [ARCHIVE_METADATA.partition]: Buffer.from(String(input.partition), 'utf8'),
    [ARCHIVE_METADATA.firstOffset]: Buffer.from(String(first.offset), 'utf8'),
    [ARCHIVE_METADATA.lastOffset]: Buffer.from(String(last.offset), 'utf8'),
    [ARCHIVE_METADATA.count]: Buffer.from(String(records.length), 'utf8'),
    [ARCHIVE_METADATA.schemaId]: Buffer.from(String(input.schemaId), 'utf8'),
    ...(span !== undefined ? { [ARCHIVE_METADATA.chainFirst]: Buffer.from(span.first, 'utf8'), [ARCHIVE_METADATA.chainLast]: Buffer.from(span.last, 'utf8') } : {}),
  };
  parts[0] = HEADER_TYPE.toBuffer({ magic: AVRO_MAGIC, meta, sync });
  return { body: Buffer.concat(parts), chain: span };
}
