import avsc from 'avsc';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { permanentError, unavailableError } from '../errors.ts';

/** What `decodeCached` returns when the record's schema is not in the process's cache yet. */
export const NOT_CACHED: unique symbol = Symbol('agent-manager.avro.not-cached');

/** Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro body) through the registry. */
export interface AvroCodec {
  /** Throws a permanent error for bytes that are not a decodable record (bad framing, unknown schema id, bad body). */
  decode(buffer: Buffer): Promise<unknown>;
  /**
   * The synchronous fast path: decodes when the writer schema is already cached (after the first
   * record of each schema id), else returns `NOT_CACHED` and the caller awaits `decode`. Throws the
   * same permanent errors as `decode`. Optional so that test doubles need not implement it.
   */
  decodeCached?(buffer: Buffer): unknown;
  /** Encodes with the latest schema registered under `subject` (cached for the process's life). */
  encode(subject: string, value: unknown): Promise<Buffer>;
}

export interface AvroCodecOptions {
  readonly registryUrl: string;
  /** avsc options for every schema, e.g. logical type implementations. */
  readonly avroOptions?: Record<string, unknown>;
}

function httpStatus(error: unknown): number | undefined {
  const status = (error as { status?: unknown }).status;
  return typeof status === 'number' ? status : undefined;
}

/** No answer at all: a refused or dropped connection, a timeout (the registry client uses fetch/mappersmith). */
function isConnectionFailure(error: unknown): boolean {
  for (let current = error, depth = 0; typeof current === 'object' && current !== null && depth < 5; current = (current as { cause?: unknown }).cause, depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && /^(ECONN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EPIPE|UND_ERR)/.test(code)) return true;
  }
  return /fetch failed|ECONN|socket|timed? ?out|network/i.test(String(error));
}

/** A writer schema as the registry builds it: an avsc Type for Avro (JSON/Protobuf schemas only have `fromBuffer`). */
interface WriterSchema {
  fromBuffer(buffer: Buffer): unknown;
}

const HEADER_BYTES = 5;

function checkFraming(buffer: Buffer): void {
  if (buffer.length < HEADER_BYTES || buffer[0] !== 0) {
    throw permanentError('DECODE_BAD_FRAMING', `not a Confluent-framed Avro record (${buffer.length} bytes, first byte ${buffer[0] ?? 'none'})`);
  }
}

/** Decodes the body after the 5-byte header with `schema`; the same checks as the registry's `decode` (truncated body, trailing data). */
function decodeBody(schema: WriterSchema, isAvsc: boolean, buffer: Buffer, id: number): unknown {
  try {
    if (isAvsc) {
      // avsc reads in place from the header's end: no sub-buffer per record.
      const result: { value: unknown; offset: number } = (schema as avsc.Type).decode(buffer, HEADER_BYTES);
      if (result.offset === buffer.length) return result.value;
      throw new Error(result.offset < 0 ? 'truncated buffer' : 'trailing data');
    }
    return schema.fromBuffer(buffer.subarray(HEADER_BYTES));
  } catch (error) {
    throw permanentError('DECODE_FAILED', `Avro body does not match schema id ${id}: ${String(error)}`, error);
  }
}

export function createAvroCodec(options: AvroCodecOptions): AvroCodec {
  const registry = new SchemaRegistry(
    { host: options.registryUrl, retry: { retries: 2 } },
    options.avroOptions ? { [SchemaType.AVRO]: options.avroOptions } : undefined,
  );
  const latestIds = new Map<string, Promise<number>>();
  /** Writer schemas by id, filled on first use: schema ids are immutable in a registry. */
  const schemas = new Map<number, { schema: WriterSchema; isAvsc: boolean }>();

  async function loadSchema(id: number): Promise<{ schema: WriterSchema; isAvsc: boolean }> {
    try {
      const schema = (await registry.getSchema(id)) as WriterSchema;
      const entry = { schema, isAvsc: avsc.Type.isType(schema) };
      schemas.set(id, entry);
      return entry;
    } catch (error) {
      const status = httpStatus(error);
      if (status === 404) throw permanentError('DECODE_UNKNOWN_SCHEMA', `schema id ${id} is not in the registry`, error);
      // Any other answer (5xx, 401/403 of a misconfigured registry) or no answer is the registry's
      // problem, not the record's: the runtime waits for it instead of dead-lettering.
      if (status !== undefined || isConnectionFailure(error)) {
        throw unavailableError('registry', 'REGISTRY_UNAVAILABLE', `schema registry lookup failed: ${String(error)}`, error, status === undefined ? undefined : { status });
      }
      throw permanentError('DECODE_FAILED', `schema id ${id} cannot be used: ${String(error)}`, error);
    }
  }

  return {
    decodeCached(buffer) {
      checkFraming(buffer);
      const id = buffer.readInt32BE(1);
      const entry = schemas.get(id);
      return entry === undefined ? NOT_CACHED : decodeBody(entry.schema, entry.isAvsc, buffer, id);
    },
    async decode(buffer) {
      checkFraming(buffer);
      const id = buffer.readInt32BE(1);
      const entry = schemas.get(id) ?? (await loadSchema(id));
      return decodeBody(entry.schema, entry.isAvsc, buffer, id);
    },
    async encode(subject, value) {
      let id = latestIds.get(subject);
      if (!id) {
        id = registry.getLatestSchemaId(subject);
        latestIds.set(subject, id);
        id.catch(() => latestIds.delete(subject));
      }
      let schemaId: number;
      try {
        schemaId = await id;
      } catch (error) {
        if (httpStatus(error) === 404) throw permanentError('SCHEMA_NOT_REGISTERED', `no schema registered under ${subject}; run \`agent-manager schemas register\``, error);
        throw unavailableError('registry', 'REGISTRY_UNAVAILABLE', `schema registry lookup of ${subject} failed: ${String(error)}`, error);
      }
      try {
        return await registry.encode(schemaId, value);
      } catch (error) {
        throw permanentError('ENCODE_FAILED', `value does not match the schema of ${subject}: ${String(error)}`, error);
      }
    },
  };
}
