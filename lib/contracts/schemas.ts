/**
 * Loads the Avro topic contracts from `schemas/<topic>.avsc` and checks schema evolution locally.
 *
 * avsc is configured with one logical type, `timestamp-millis`, decoded to and encoded from a `Date`;
 * `uuid` has no implementation on purpose, so avsc treats it as its underlying string (and the
 * annotation still travels in the schema). Use `avroTypeOptions()` wherever a `Type` is built for
 * these schemas (e.g. the Schema Registry client's AVRO options) so every service sees the same values.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import avsc from 'avsc';
import { errorMessage, permanentError } from '../errors.ts';
import { TOPICS, type TopicName, type TopicRecords } from './types.ts';

export { TOPICS, type TopicName, type TopicRecords } from './types.ts';

/** `timestamp-millis`: an Avro long of milliseconds since the epoch, as a `Date` in JavaScript. */
export class TimestampMillisType extends avsc.types.LogicalType {
  protected override _fromValue(value: unknown): Date {
    return value instanceof Date ? value : new Date(Number(value));
  }

  protected override _toValue(value: unknown): number | undefined {
    // Returning undefined marks the value invalid (isValid false, encode throws).
    if (!(value instanceof Date)) return undefined;
    const millis = value.getTime();
    return Number.isNaN(millis) ? undefined : millis;
  }

  /** Readable from a writer's long, int or timestamp-millis (the Avro spec's promotions). */
  protected override _resolve(writer: avsc.Type): ((value: unknown) => Date) | undefined {
    if (avsc.Type.isType(writer, 'long', 'int', 'logical:timestamp-millis')) return (value) => this._fromValue(value);
    return undefined;
  }
}

/**
 * The avsc options every `Type` for these contracts is built with. A new object per call: avsc keeps
 * the named types it has seen in `opts.registry`, so sharing one object across schemas (or two
 * versions of one schema) fails with "duplicate type name".
 */
export function avroTypeOptions(): Partial<avsc.ForSchemaOptions> {
  return { logicalTypes: { 'timestamp-millis': TimestampMillisType } };
}

/** An Avro schema as parsed JSON (a record at the top level for every topic). */
export interface AvroRecordSchema {
  type: 'record';
  name: string;
  namespace?: string;
  doc?: string;
  fields: AvroField[];
}

export interface AvroField {
  name: string;
  doc?: string;
  type: unknown;
  default?: unknown;
}

export interface TopicContract<T extends TopicName = TopicName> {
  topic: T;
  /** The Schema Registry subject (TopicNameStrategy): `<topic>-value`. */
  subject: string;
  /** The parsed `.avsc` document. */
  schema: AvroRecordSchema;
  /** The schema as compact JSON text, as sent to the registry. */
  schemaText: string;
  /** The avsc type, built with `avroTypeOptions()`. */
  type: avsc.Type;
  /** Encodes a record (plain Avro binary, without the registry's wire-format header); throws if invalid. */
  toBuffer(value: TopicRecords[T]): Buffer;
  /** Decodes plain Avro binary written with this schema. */
  fromBuffer(buffer: Buffer): TopicRecords[T];
}

/** The `schemas/` folder of a project root. */
export function defaultSchemasDir(root: string): string {
  return join(root, 'schemas');
}

/** The dead-letter topic of a topic. */
export function dlqTopic(topic: string): string {
  return `${topic}.dlq`;
}

/** The registry subject of a topic's values (TopicNameStrategy). */
export function valueSubject(topic: string): string {
  return `${topic}-value`;
}

export function isTopicName(value: string): value is TopicName {
  return (TOPICS as readonly string[]).includes(value);
}

/**
 * Parses an Avro schema (JSON text or an object) into an avsc type with the project's logical types.
 * `what` names the schema in the error (a file, a subject).
 */
export function avroType(schema: string | object, what: string): avsc.Type {
  let parsed: unknown;
  try {
    parsed = typeof schema === 'string' ? JSON.parse(schema) : schema;
  } catch (error) {
    throw permanentError('SCHEMA_INVALID', `${what}: the schema is not valid JSON: ${errorMessage(error)}`, error);
  }
  try {
    return avsc.Type.forSchema(parsed as avsc.Schema, avroTypeOptions());
  } catch (error) {
    throw permanentError('SCHEMA_INVALID', `${what}: not a valid Avro schema: ${errorMessage(error)}`, error);
  }
}

function isRecordSchema(value: unknown): value is AvroRecordSchema {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Record<string, unknown>;
  return record.type === 'record' && typeof record.name === 'string' && Array.isArray(record.fields);
}

/** Reads and parses `<schemasDir>/<topic>.avsc`; the top level must be a record. */
export function loadSchema(topic: TopicName, schemasDir: string): AvroRecordSchema {
  const file = join(schemasDir, `${topic}.avsc`);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw permanentError('SCHEMA_NOT_FOUND', `topic ${topic}: cannot read its schema ${file}: ${errorMessage(error)}`, error);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw permanentError('SCHEMA_INVALID', `${file}: not valid JSON: ${errorMessage(error)}`, error);
  }
  if (!isRecordSchema(parsed)) throw permanentError('SCHEMA_INVALID', `${file}: the top level must be an Avro record with a name and fields`);
  return parsed;
}

const contracts = new Map<string, TopicContract>();

/** The contract of a topic, loaded from `schemasDir` once and cached. */
export function topicContract<T extends TopicName>(topic: T, schemasDir: string): TopicContract<T> {
  const key = `${schemasDir}\0${topic}`;
  const cached = contracts.get(key);
  if (cached) return cached as unknown as TopicContract<T>;
  const schema = loadSchema(topic, schemasDir);
  const type = avroType(schema, join(schemasDir, `${topic}.avsc`));
  const contract: TopicContract<T> = {
    topic,
    subject: valueSubject(topic),
    schema,
    schemaText: JSON.stringify(schema),
    type,
    toBuffer: (value) => type.toBuffer(value),
    fromBuffer: (buffer) => type.fromBuffer(buffer) as TopicRecords[T],
  };
  contracts.set(key, contract);
  return contract;
}

/** Every topic's contract, in `TOPICS` order. */
export function allTopicContracts(schemasDir: string): TopicContract[] {
  return TOPICS.map((topic) => topicContract(topic, schemasDir));
}

/**
 * The record key of a topic's value: the agentId. Two cases have no agent yet or at all: an
 * INSTANTIATE request is keyed by its idempotency key, and an audit event about no agent by its eventId.
 */
export function recordKey<T extends TopicName>(topic: T, value: TopicRecords[T]): string {
  if (value.agentId !== null) return value.agentId;
  if (topic === 'agent-requests') return (value as TopicRecords['agent-requests']).idempotencyKey;
  return (value as TopicRecords['audit-events']).eventId;
}

/**
 * Throws `SCHEMA_INCOMPATIBLE` (permanent) unless `nextSchema` is BACKWARD compatible with
 * `previousSchema`: a consumer using the new schema must be able to read every record written with
 * the previous one (added fields need a default, removed enum symbols need an enum default, types
 * may only change by Avro promotion, names must match or be aliased).
 */
export function checkBackwardCompatible(previousSchema: string | object, nextSchema: string | object, subject: string): void {
  const previous = avroType(previousSchema, `${subject} (the registered schema)`);
  const next = avroType(nextSchema, `${subject} (the new schema)`);
  try {
    next.createResolver(previous);
  } catch (error) {
    const problem = explainIncompatibility(next, previous, '') ?? errorMessage(error);
    throw permanentError(
      'SCHEMA_INCOMPATIBLE',
      `${subject}: the new schema is not BACKWARD compatible with the registered one (a consumer using it could not read records written with the old one): ${problem}`,
      error,
      { subject, problem },
    );
  }
}

function canResolve(reader: avsc.Type, writer: avsc.Type): boolean {
  try {
    reader.createResolver(writer);
    return true;
  } catch {
    return false;
  }
}

function describeType(type: avsc.Type): string {
  return type.branchName ?? type.typeName;
}

const at = (path: string) => (path === '' ? 'the top-level record' : `field ${path}`);

/**
 * The first reason `reader` cannot read `writer`'s data, in terms of field paths; undefined when it
 * finds none (the caller then falls back to avsc's own message).
 */
function explainIncompatibility(reader: avsc.Type, writer: avsc.Type, path: string): string | undefined {
  if (canResolve(reader, writer)) return undefined;
  if (avsc.Type.isType(writer, 'union')) {
    for (const branch of (writer as avsc.types.WrappedUnionType).types) {
      if (!canResolve(reader, branch)) {
        return explainIncompatibility(reader, branch, path) ?? `${at(path)}: cannot read the old ${describeType(branch)} values as ${describeType(reader)}`;
      }
    }
    return undefined;
  }
  if (avsc.Type.isType(reader, 'union')) {
    const branches = (reader as avsc.types.WrappedUnionType).types;
    const sameKind = branches.find((b) => b.typeName === writer.typeName && (b.name === undefined || b.name === writer.name));
    if (sameKind) return explainIncompatibility(sameKind, writer, path);
    return `${at(path)}: the old ${describeType(writer)} values match no branch of the new union [${branches.map(describeType).join(', ')}]`;
  }
  if (avsc.Type.isType(reader, 'record') && avsc.Type.isType(writer, 'record')) {
    const readerRecord = reader as avsc.types.RecordType;
    const writerRecord = writer as avsc.types.RecordType;
    if (readerRecord.name !== writerRecord.name && !(readerRecord.aliases ?? []).includes(writerRecord.name ?? '')) {
      return `record ${writerRecord.name}${path === '' ? '' : ` (field ${path})`} was renamed to ${readerRecord.name} without an alias`;
    }
    for (const field of readerRecord.fields) {
      const fieldPath = path === '' ? field.name : `${path}.${field.name}`;
      const old = writerRecord.fields.find((f) => f.name === field.name || field.aliases.includes(f.name));
      if (!old) {
        if (field.defaultValue() === undefined) return `field ${fieldPath} was added without a default (old records have no value for it)`;
        continue;
      }
      const problem = explainIncompatibility(field.type, old.type, fieldPath);
      if (problem) return problem;
    }
    return undefined;
  }
  if (avsc.Type.isType(reader, 'enum') && avsc.Type.isType(writer, 'enum')) {
    const kept = new Set((reader as avsc.types.EnumType).symbols);
    const removed = (writer as avsc.types.EnumType).symbols.filter((s) => !kept.has(s));
    if (removed.length > 0) return `${at(path)}: enum symbols ${removed.join(', ')} were removed and the enum has no default`;
  }
  if (avsc.Type.isType(reader, 'array') && avsc.Type.isType(writer, 'array')) {
    return explainIncompatibility((reader as avsc.types.ArrayType).itemsType, (writer as avsc.types.ArrayType).itemsType, `${path}[]`);
  }
  if (avsc.Type.isType(reader, 'map') && avsc.Type.isType(writer, 'map')) {
    const readerValues = (reader as avsc.types.MapType).valuesType as avsc.Type;
    const writerValues = (writer as avsc.types.MapType).valuesType as avsc.Type;
    return explainIncompatibility(readerValues, writerValues, `${path}{}`);
  }
  return `${at(path)}: cannot read the old ${describeType(writer)} values as ${describeType(reader)}`;
}
