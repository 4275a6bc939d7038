import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { permanentError, retryableError } from '../errors.ts';

/** Avro in the Confluent wire format (magic byte, 4-byte schema id, Avro body) through the registry. */
export interface AvroCodec {
  /** Throws a permanent error for bytes that are not a decodable record (bad framing, unknown schema id, bad body). */
  decode(buffer: Buffer): Promise<unknown>;
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

export function createAvroCodec(options: AvroCodecOptions): AvroCodec {
  const registry = new SchemaRegistry(
    { host: options.registryUrl, retry: { retries: 2 } },
    options.avroOptions ? { [SchemaType.AVRO]: options.avroOptions } : undefined,
  );
  const latestIds = new Map<string, Promise<number>>();

  return {
    async decode(buffer) {
      if (buffer.length < 5 || buffer[0] !== 0) {
        throw permanentError('DECODE_BAD_FRAMING', `not a Confluent-framed Avro record (${buffer.length} bytes, first byte ${buffer[0] ?? 'none'})`);
      }
      try {
        return (await registry.decode(buffer)) as unknown;
      } catch (error) {
        const status = httpStatus(error);
        if (status === 404) {
          throw permanentError('DECODE_UNKNOWN_SCHEMA', `schema id ${buffer.readInt32BE(1)} is not in the registry`, error);
        }
        if (status !== undefined || (error as { code?: string }).code === 'ECONNREFUSED' || /fetch failed|ECONN|socket/i.test(String(error))) {
          throw retryableError('REGISTRY_UNAVAILABLE', `schema registry lookup failed: ${String(error)}`, error);
        }
        throw permanentError('DECODE_FAILED', `Avro body does not match schema id ${buffer.readInt32BE(1)}: ${String(error)}`, error);
      }
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
        throw retryableError('REGISTRY_UNAVAILABLE', `schema registry lookup of ${subject} failed: ${String(error)}`, error);
      }
      try {
        return await registry.encode(schemaId, value);
      } catch (error) {
        throw permanentError('ENCODE_FAILED', `value does not match the schema of ${subject}: ${String(error)}`, error);
      }
    },
  };
}
