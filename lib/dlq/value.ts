import { errorMessage } from '../errors.ts';
import type { AvroCodec } from '../kafka/avro.ts';
import { printableText } from './records.ts';

/** A record value as an operator reads it: decoded with Avro when possible, else a preview of its bytes. */
export interface ValueView {
  readonly size: number;
  /** The Confluent-framed schema id, when the value starts like one. */
  readonly schemaId: number | null;
  /** The decoded value, as JSON-ready data; absent when it could not be decoded. */
  readonly decoded?: unknown;
  /** Why it was not decoded. */
  readonly decodeError?: string;
  /** The value as text when it is printable UTF-8. */
  readonly text: string | null;
  /** The first `previewBytes` bytes in hex. */
  readonly hexPreview: string;
  readonly base64: string;
}

/** JSON-ready: bigints as strings, bytes as hex, dates as ISO strings. */
function jsonReady(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (Buffer.isBuffer(value)) return `0x${value.toString('hex')}`;
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(jsonReady);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, jsonReady(v)]));
  return value;
}

export async function viewValue(value: Buffer | null, codec: Pick<AvroCodec, 'decode'>, previewBytes = 64): Promise<ValueView | null> {
  if (value === null) return null;
  const schemaId = value.length >= 5 && value[0] === 0 ? value.readInt32BE(1) : null;
  const bytes = { size: value.length, schemaId, text: printableText(value), hexPreview: value.subarray(0, previewBytes).toString('hex'), base64: value.toString('base64') };
  try {
    return { ...bytes, decoded: jsonReady(await codec.decode(value)) };
  } catch (error) {
    return { ...bytes, decodeError: errorMessage(error) };
  }
}
