/**
 * Reads archive files (lib/archive/container.ts) back as a stream: the header first, then each
 * record with its Kafka offset, timestamp, key and headers, the decoded event and its exact Avro
 * bytes (what `audit replay` produces again). Reads any Avro container file whose records are
 * `AuditArchiveRecord`s, whatever block size or codec among null, deflate and zstandard wrote it.
 */
import { inflateRawSync, zstdDecompressSync } from 'node:zlib';
import avsc from 'avsc';
import { errorMessage, permanentError } from '../errors.ts';
import { avroType } from '../contracts/schemas.ts';
import { ARCHIVE_METADATA, AVRO_MAGIC, HEADER_TYPE, type KafkaHeader } from './container.ts';

export interface ArchiveFileHeader {
  /** The file's schema (`avro.schema`), parsed. */
  readonly schema: Record<string, unknown>;
  readonly codec: string;
  /** Every metadata entry, `avro.*` included. */
  readonly metadata: Readonly<Record<string, Buffer>>;
  readonly sync: Buffer;
  /** Our own metadata, when present. */
  readonly topic: string | undefined;
  readonly partition: number | undefined;
  readonly schemaId: number | undefined;
  readonly firstOffset: number | undefined;
  readonly lastOffset: number | undefined;
  readonly count: number | undefined;
  /** The hash chain at the first and last records (hex), on files written since the integrity change. */
  readonly firstChain: string | undefined;
  readonly lastChain: string | undefined;
}

export interface ArchivedRecord<E = unknown> {
  readonly offset: number;
  readonly timestamp: Date;
  readonly key: Buffer | null;
  readonly headers: readonly KafkaHeader[];
  /** The event, decoded with the file's writer schema, or resolved into `eventType` when given. */
  readonly event: E;
  /** The event's Avro body exactly as archived (in the writer schema `header.schemaId`). */
  readonly eventBytes: Buffer;
}

export interface OpenArchiveOptions {
  /** A reader type to resolve the events into (e.g. the current contract's type); default: the writer schema. */
  readonly eventType?: avsc.Type;
  /** Names the file in errors. */
  readonly name?: string;
}

export interface ArchiveFile<E = unknown> {
  readonly header: ArchiveFileHeader;
  /** The records in file order; once only. */
  readonly records: AsyncGenerator<ArchivedRecord<E>>;
}

function corrupt(name: string, message: string, cause?: unknown): never {
  throw permanentError('ARCHIVE_FILE_CORRUPT', `${name}: ${message}`, cause, { file: name });
}

/** Buffers chunks of a stream and hands out whole values. */
class ChunkReader {
  private buffer = Buffer.alloc(0);
  private position = 0;
  private done = false;
  private readonly iterator: AsyncIterator<Uint8Array>;

  constructor(source: AsyncIterable<Uint8Array> | Uint8Array) {
    const iterable: AsyncIterable<Uint8Array> =
      source instanceof Uint8Array
        ? (async function* () {
            yield source;
          })()
        : source;
    this.iterator = iterable[Symbol.asyncIterator]();
  }

  /** False when the stream ended before more bytes came. */
  private async more(): Promise<boolean> {
    if (this.done) return false;
    const next = await this.iterator.next();
    if (next.done === true) {
      this.done = true;
      return false;
    }
    const rest = this.buffer.subarray(this.position);
    this.buffer = rest.length === 0 ? Buffer.from(next.value) : Buffer.concat([rest, next.value]);
    this.position = 0;
    return true;
  }

  /** Decodes one value at the current position, reading more of the stream until it is whole; undefined at a clean end. */
  async decode<T>(type: avsc.Type): Promise<T | undefined> {
    for (;;) {
      if (this.position < this.buffer.length) {
        const decoded: { value: unknown; offset: number } = type.decode(this.buffer, this.position);
        if (decoded.offset >= 0) {
          this.position = decoded.offset;
          return decoded.value as T;
        }
      }
      const atStart = this.position >= this.buffer.length;
      if (!(await this.more())) {
        if (atStart) return undefined;
        throw new Error('the file ends in the middle of a value');
      }
    }
  }

  async take(length: number): Promise<Buffer> {
    while (this.buffer.length - this.position < length) {
      if (!(await this.more())) throw new Error(`the file ends ${length - (this.buffer.length - this.position)} bytes short`);
    }
    const bytes = this.buffer.subarray(this.position, this.position + length);
    this.position += length;
    return bytes;
  }
}

const LONG = avsc.Type.forSchema('long');

function decompress(codec: string, data: Buffer): Buffer {
  switch (codec) {
    case 'null':
      return data;
    case 'deflate':
      return inflateRawSync(data);
    case 'zstandard':
      return zstdDecompressSync(data);
    default:
      throw new Error(`codec ${codec} is not supported (null, deflate, zstandard)`);
  }
}

function numberMeta(meta: Record<string, Buffer>, key: string): number | undefined {
  const raw = meta[key]?.toString('utf8');
  if (raw === undefined || !/^\d+$/.test(raw)) return undefined;
  const value = Number(raw);
  return Number.isSafeInteger(value) ? value : undefined;
}

function chainMeta(meta: Record<string, Buffer>, key: string): string | undefined {
  const raw = meta[key]?.toString('utf8');
  return raw !== undefined && /^[0-9a-f]{64}$/.test(raw) ? raw : undefined;
}

interface FieldReader {
  readonly name: string;
  readonly type: avsc.Type;
  readonly resolver?: avsc.Resolver;
}

/**
 * Opens an archive file from its bytes or a stream of them (an S3 GetObject body, a file stream):
 * reads the header, then streams the records. Throws ARCHIVE_FILE_CORRUPT (permanent) for anything
 * that is not a whole, well-formed archive file.
 */
export async function openArchiveFile<E = unknown>(source: AsyncIterable<Uint8Array> | Uint8Array, options: OpenArchiveOptions = {}): Promise<ArchiveFile<E>> {
  const name = options.name ?? 'archive file';
  const reader = new ChunkReader(source);
  let raw: { magic: Buffer; meta: Record<string, Buffer>; sync: Buffer } | undefined;
  try {
    raw = await reader.decode(HEADER_TYPE);
  } catch (error) {
    corrupt(name, `unreadable header: ${errorMessage(error)}`, error);
  }
  if (raw === undefined) corrupt(name, 'empty');
  if (!raw.magic.equals(AVRO_MAGIC)) corrupt(name, 'not an Avro object container file (bad magic bytes)');
  const meta = raw.meta;
  const schemaText = meta['avro.schema']?.toString('utf8');
  if (schemaText === undefined) corrupt(name, 'no avro.schema in the header');
  let schema: Record<string, unknown>;
  let fileType: avsc.Type;
  try {
    schema = JSON.parse(schemaText) as Record<string, unknown>;
    fileType = avroType(schema, `${name}: avro.schema`);
  } catch (error) {
    corrupt(name, `bad avro.schema: ${errorMessage(error)}`, error);
  }
  const codec = meta['avro.codec']?.toString('utf8') ?? 'null';
  const fields = (fileType as avsc.types.RecordType).fields ?? [];
  const names = fields.map((f) => f.name).join(',');
  if (names !== 'offset,timestamp,key,headers,event') corrupt(name, `not an audit archive file (record fields ${names})`);
  const readers: FieldReader[] = fields.map((field) => {
    if (field.name !== 'event' || options.eventType === undefined) return { name: field.name, type: field.type };
    try {
      return { name: field.name, type: options.eventType, resolver: options.eventType.createResolver(field.type) };
    } catch (error) {
      corrupt(name, `the events' writer schema cannot be read as ${options.eventType.name ?? 'the given type'}: ${errorMessage(error)}`, error);
    }
  });

  const header: ArchiveFileHeader = {
    schema,
    codec,
    metadata: meta,
    sync: raw.sync,
    topic: meta[ARCHIVE_METADATA.topic]?.toString('utf8'),
    partition: numberMeta(meta, ARCHIVE_METADATA.partition),
    schemaId: numberMeta(meta, ARCHIVE_METADATA.schemaId),
    firstOffset: numberMeta(meta, ARCHIVE_METADATA.firstOffset),
    lastOffset: numberMeta(meta, ARCHIVE_METADATA.lastOffset),
    count: numberMeta(meta, ARCHIVE_METADATA.count),
    firstChain: chainMeta(meta, ARCHIVE_METADATA.chainFirst),
    lastChain: chainMeta(meta, ARCHIVE_METADATA.chainLast),
  };

  async function* records(): AsyncGenerator<ArchivedRecord<E>> {
    for (;;) {
      let data: Buffer;
      let count: number;
      try {
        const blockCount = await reader.decode<number>(LONG);
        if (blockCount === undefined) return;
        const size = await reader.decode<number>(LONG);
        if (size === undefined || size < 0 || blockCount < 0) throw new Error('bad block header');
        const body = await reader.take(size);
        const sync = await reader.take(16);
        if (!sync.equals(header.sync)) throw new Error('a block does not end with the file sync marker');
        data = decompress(codec, body);
        count = blockCount;
      } catch (error) {
        corrupt(name, errorMessage(error), error);
      }
      let position = 0;
      for (let i = 0; i < count; i++) {
        const values: Record<string, unknown> = {};
        let eventStart = 0;
        let eventEnd = 0;
        for (const field of readers) {
          const start = position;
          let decoded: { value: unknown; offset: number };
          try {
            decoded = field.type.decode(data, position, field.resolver);
          } catch (error) {
            corrupt(name, `record ${i} of a block: bad ${field.name}: ${errorMessage(error)}`, error);
          }
          const { value, offset } = decoded;
          if (offset < 0) corrupt(name, `record ${i} of a block is cut short`);
          values[field.name] = value;
          position = offset;
          if (field.name === 'event') {
            eventStart = start;
            eventEnd = offset;
          }
        }
        yield {
          offset: values.offset as number,
          timestamp: values.timestamp as Date,
          key: values.key as Buffer | null,
          headers: (values.headers as { key: string; value: Buffer | null }[]).map((h) => ({ key: h.key, value: h.value })),
          event: values.event as E,
          eventBytes: Buffer.from(data.subarray(eventStart, eventEnd)),
        };
      }
      if (position !== data.length) corrupt(name, `a block has ${data.length - position} bytes after its ${count} records`);
    }
  }

  return { header, records: records() };
}

/** Every record of a file (for files small enough to hold in memory, e.g. in tests and `audit show`). */
export async function readArchiveRecords<E = unknown>(source: AsyncIterable<Uint8Array> | Uint8Array, options: OpenArchiveOptions = {}): Promise<{ header: ArchiveFileHeader; records: ArchivedRecord<E>[] }> {
  const file = await openArchiveFile<E>(source, options);
  const records: ArchivedRecord<E>[] = [];
  for await (const record of file.records) records.push(record);
  return { header: file.header, records };
}
