/**
 * The audit index in Postgres (migrations/*_audit_index.sql): one row per event id, written once per
 * Kafka batch, and the archive files; `queryAuditIndex` pages through it for `audit query` and the API.
 */
import type pg from 'pg';
import { errorMessage, permanentError, retryableError } from '../errors.ts';

/** Something that runs a query: a pool, or a client inside a transaction. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

export interface AuditIndexEntry {
  readonly eventId: string;
  readonly time: Date;
  readonly action: string;
  readonly actor: string;
  readonly agentId: string | null;
  readonly requestId: string | null;
  readonly traceId: string | null;
  readonly partition: number;
  readonly offset: number;
  /** The event's `hash` (hex SHA-256 of its canonical form). */
  readonly payloadHash: string;
}

function failed(what: string, error: unknown): Error {
  // Postgres outages keep their cause, which unavailableDependency() recognises.
  return retryableError('AUDIT_INDEX_FAILED', `audit index: ${what}: ${errorMessage(error)}`, error);
}

/**
 * Indexes a batch of events in one statement, idempotently: an event id already indexed (a
 * redelivered batch, a duplicate publish, a reindex) is left as it is. Returns how many rows were new.
 */
export async function insertAuditIndex(db: Queryable, entries: readonly AuditIndexEntry[]): Promise<number> {
  if (entries.length === 0) return 0;
  const columns = {
    eventId: [] as string[],
    time: [] as string[],
    action: [] as string[],
    actor: [] as string[],
    agentId: [] as (string | null)[],
    requestId: [] as (string | null)[],
    traceId: [] as (string | null)[],
    partition: [] as number[],
    offset: [] as string[],
    payloadHash: [] as string[],
  };
  for (const e of entries) {
    columns.eventId.push(e.eventId);
    columns.time.push(e.time.toISOString());
    columns.action.push(e.action);
    columns.actor.push(e.actor);
    columns.agentId.push(e.agentId);
    columns.requestId.push(e.requestId);
    columns.traceId.push(e.traceId);
    columns.partition.push(e.partition);
    columns.offset.push(String(e.offset));
    columns.payloadHash.push(e.payloadHash);
  }
  try {
    const result = await db.query(
      `INSERT INTO audit_index (event_id, event_time, action, actor, agent_id, request_id, trace_id, kafka_partition, kafka_offset, payload_hash)
       SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::text[], $8::integer[], $9::bigint[], $10::text[])
       ON CONFLICT (event_id) DO NOTHING`,
      [columns.eventId, columns.time, columns.action, columns.actor, columns.agentId, columns.requestId, columns.traceId, columns.partition, columns.offset, columns.payloadHash],
    );
    return result.rowCount ?? 0;
  } catch (error) {
    // 22P02: a value Postgres cannot read as its column type (e.g. a uuid that is not one).
    if ((error as { code?: unknown }).code === '22P02') throw permanentError('AUDIT_INDEX_INVALID', `audit index: a value of the batch is invalid: ${errorMessage(error)}`, error);
    throw failed(`inserting ${entries.length} events`, error);
  }
}

export interface ArchiveFileRow {
  readonly objectKey: string;
  readonly day: string;
  readonly partition: number;
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly recordCount: number;
  readonly bytes: number;
  /** Base64 SHA-256 of the object. */
  readonly sha256: string;
  readonly versionId: string | undefined;
  /** The hash chain at the file's first and last records (hex); undefined for files from before the chain. */
  readonly firstChain?: string | undefined;
  readonly lastChain?: string | undefined;
}

/**
 * Records a file that is durable in S3; a file already recorded (a retry after a crash) is left as it
 * is, except that chain values it lacks are filled in (a reindex restores them from the file headers).
 */
export async function recordArchiveFile(db: Queryable, file: ArchiveFileRow): Promise<void> {
  try {
    await db.query(
      `INSERT INTO audit_files (object_key, day, kafka_partition, first_offset, last_offset, record_count, bytes, sha256, version_id, first_chain, last_chain)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
       ON CONFLICT (object_key) DO UPDATE SET first_chain = EXCLUDED.first_chain, last_chain = EXCLUDED.last_chain
         WHERE audit_files.first_chain IS NULL AND EXCLUDED.first_chain IS NOT NULL`,
      [file.objectKey, file.day, file.partition, String(file.firstOffset), String(file.lastOffset), file.recordCount, String(file.bytes), file.sha256, file.versionId ?? null, file.firstChain ?? null, file.lastChain ?? null],
    );
  } catch (error) {
    throw failed(`recording file ${file.objectKey}`, error);
  }
}

/** A file's row as the chain and manifest code read it. */
export interface ArchiveFileChainRow {
  readonly objectKey: string;
  readonly day: string;
  readonly partition: number;
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly recordCount: number;
  readonly sha256: string;
  readonly versionId: string | null;
  readonly firstChain: string | null;
  readonly lastChain: string | null;
}

interface FileChainRecord {
  object_key: string;
  day: string;
  kafka_partition: number;
  first_offset: string;
  last_offset: string;
  record_count: number;
  sha256: string;
  version_id: string | null;
  first_chain: string | null;
  last_chain: string | null;
}

const FILE_CHAIN_SELECT = `SELECT object_key, to_char(day, 'YYYY-MM-DD') AS day, kafka_partition, first_offset, last_offset, record_count, sha256, version_id, first_chain, last_chain FROM audit_files`;

function fileChainRowOf(r: FileChainRecord): ArchiveFileChainRow {
  return {
    objectKey: r.object_key,
    day: r.day,
    partition: r.kafka_partition,
    firstOffset: Number(r.first_offset),
    lastOffset: Number(r.last_offset),
    recordCount: r.record_count,
    sha256: r.sha256,
    versionId: r.version_id,
    firstChain: r.first_chain,
    lastChain: r.last_chain,
  };
}

/** The recorded files of one day, in (partition, offset) order. */
export async function dayFileRows(db: Queryable, day: string): Promise<ArchiveFileChainRow[]> {
  try {
    const { rows } = await db.query<FileChainRecord>(`${FILE_CHAIN_SELECT} WHERE day = $1::date ORDER BY kafka_partition, first_offset`, [day]);
    return rows.map(fileChainRowOf);
  } catch (error) {
    throw failed(`reading the files of ${day}`, error);
  }
}

/** The recorded file of a partition with the highest offsets before `day` (whose last chain is the chain before the day), if any. */
export async function lastFileRowBefore(db: Queryable, partition: number, day: string): Promise<ArchiveFileChainRow | undefined> {
  try {
    const { rows } = await db.query<FileChainRecord>(`${FILE_CHAIN_SELECT} WHERE kafka_partition = $1 AND day < $2::date ORDER BY last_offset DESC LIMIT 1`, [partition, day]);
    const row = rows[0];
    return row === undefined ? undefined : fileChainRowOf(row);
  } catch (error) {
    throw failed(`reading the last file of partition ${partition} before ${day}`, error);
  }
}

/** The recorded file under `objectKey`, if any. */
export async function fileRow(db: Queryable, objectKey: string): Promise<ArchiveFileChainRow | undefined> {
  try {
    const { rows } = await db.query<FileChainRecord>(`${FILE_CHAIN_SELECT} WHERE object_key = $1`, [objectKey]);
    const row = rows[0];
    return row === undefined ? undefined : fileChainRowOf(row);
  } catch (error) {
    throw failed(`reading file ${objectKey}`, error);
  }
}

/** Fills in the chain values of files recorded without them (written before the chain). */
export async function setFileChain(db: Queryable, objectKey: string, firstChain: string, lastChain: string): Promise<void> {
  try {
    await db.query('UPDATE audit_files SET first_chain = $2, last_chain = $3 WHERE object_key = $1 AND first_chain IS NULL', [objectKey, firstChain, lastChain]);
  } catch (error) {
    throw failed(`recording the chain of file ${objectKey}`, error);
  }
}

export interface AuditQuery {
  readonly agentId?: string;
  readonly requestId?: string;
  readonly action?: string;
  readonly actor?: string;
  /** Inclusive. */
  readonly from?: Date;
  /** Exclusive. */
  readonly to?: Date;
  /** At most 1000; default 100. */
  readonly limit?: number;
  /** From the previous page's `nextCursor`. */
  readonly cursor?: string;
}

export interface AuditIndexRow extends AuditIndexEntry {
  /** The archive file holding the event, or null while it is not archived yet. */
  readonly objectKey: string | null;
}

export interface AuditPage {
  readonly events: AuditIndexRow[];
  /** Pass as `cursor` for the next page; null on the last page. */
  readonly nextCursor: string | null;
}

export const AUDIT_QUERY_MAX_LIMIT = 1000;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function invalidQuery(message: string): never {
  throw permanentError('AUDIT_QUERY_INVALID', message);
}

/** The position after a row, as an opaque string: its time (microseconds are not used: events carry milliseconds) and event id. */
export function encodeCursor(time: Date, eventId: string): string {
  return Buffer.from(JSON.stringify([time.toISOString(), eventId]), 'utf8').toString('base64url');
}

export function decodeCursor(cursor: string): { time: Date; eventId: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    invalidQuery(`cursor '${cursor}' is not one this query returned`);
  }
  if (!Array.isArray(parsed) || parsed.length !== 2 || typeof parsed[0] !== 'string' || typeof parsed[1] !== 'string' || !UUID.test(parsed[1])) {
    invalidQuery(`cursor '${cursor}' is not one this query returned`);
  }
  const time = new Date(parsed[0]);
  if (Number.isNaN(time.getTime())) invalidQuery(`cursor '${cursor}' is not one this query returned`);
  return { time, eventId: parsed[1] };
}

const INDEX_SELECT = `SELECT i.event_id, i.event_time, i.action, i.actor, i.agent_id, i.request_id, i.trace_id, i.kafka_partition, i.kafka_offset, i.payload_hash, f.object_key
    FROM audit_index i
    LEFT JOIN LATERAL (
      SELECT object_key, last_offset FROM audit_files
      WHERE kafka_partition = i.kafka_partition AND first_offset <= i.kafka_offset
      ORDER BY first_offset DESC LIMIT 1
    ) f ON f.last_offset >= i.kafka_offset`;

function rowOf(r: IndexRow): AuditIndexRow {
  return {
    eventId: r.event_id,
    time: r.event_time,
    action: r.action,
    actor: r.actor,
    agentId: r.agent_id,
    requestId: r.request_id,
    traceId: r.trace_id,
    partition: r.kafka_partition,
    offset: Number(r.kafka_offset),
    payloadHash: r.payload_hash,
    objectKey: r.object_key,
  };
}

/** The index row of one event, with its archive file when it has one; undefined when not indexed. */
export async function findAuditEvent(db: Queryable, eventId: string): Promise<AuditIndexRow | undefined> {
  if (!UUID.test(eventId)) invalidQuery(`event id '${eventId}' is not a uuid`);
  try {
    const { rows } = await db.query<IndexRow>(`${INDEX_SELECT} WHERE i.event_id = $1`, [eventId.toLowerCase()]);
    const row = rows[0];
    return row === undefined ? undefined : rowOf(row);
  } catch (error) {
    throw failed(`reading event ${eventId}`, error);
  }
}

interface IndexRow {
  event_id: string;
  event_time: Date;
  action: string;
  actor: string;
  agent_id: string | null;
  request_id: string | null;
  trace_id: string | null;
  kafka_partition: number;
  kafka_offset: string;
  payload_hash: string;
  object_key: string | null;
}

/**
 * One page of the index in (time, event id) order, keyset-paginated: each page starts after the last
 * row of the previous one, so a page costs the same wherever it is and rows indexed meanwhile are
 * neither skipped nor repeated before the cursor. Filters combine with AND.
 */
export async function queryAuditIndex(db: Queryable, query: AuditQuery): Promise<AuditPage> {
  const limit = query.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 1 || limit > AUDIT_QUERY_MAX_LIMIT) invalidQuery(`limit ${limit}: expected a whole number from 1 to ${AUDIT_QUERY_MAX_LIMIT}`);
  for (const [name, value] of [['agent', query.agentId], ['request', query.requestId]] as const) {
    if (value !== undefined && !UUID.test(value)) invalidQuery(`${name} id '${value}' is not a uuid`);
  }
  for (const [name, value] of [['from', query.from], ['to', query.to]] as const) {
    if (value !== undefined && Number.isNaN(value.getTime())) invalidQuery(`${name}: not a valid time`);
  }
  const where: string[] = [];
  const params: unknown[] = [];
  const add = (sql: (placeholder: string) => string, value: unknown) => {
    params.push(value);
    where.push(sql(`$${params.length}`));
  };
  if (query.agentId !== undefined) add((p) => `i.agent_id = ${p}`, query.agentId.toLowerCase());
  if (query.requestId !== undefined) add((p) => `i.request_id = ${p}`, query.requestId.toLowerCase());
  if (query.action !== undefined) add((p) => `i.action = ${p}`, query.action);
  if (query.actor !== undefined) add((p) => `i.actor = ${p}`, query.actor);
  if (query.from !== undefined) add((p) => `i.event_time >= ${p}`, query.from.toISOString());
  if (query.to !== undefined) add((p) => `i.event_time < ${p}`, query.to.toISOString());
  if (query.cursor !== undefined) {
    const after = decodeCursor(query.cursor);
    params.push(after.time.toISOString(), after.eventId);
    where.push(`(i.event_time, i.event_id) > ($${params.length - 1}::timestamptz, $${params.length}::uuid)`);
  }
  params.push(limit + 1);
  const sql = `${INDEX_SELECT}
    ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
    ORDER BY i.event_time, i.event_id
    LIMIT $${params.length}`;
  let rows: IndexRow[];
  try {
    rows = (await db.query<IndexRow>(sql, params)).rows;
  } catch (error) {
    throw failed('query', error);
  }
  const page = rows.slice(0, limit);
  const events = page.map(rowOf);
  const last = events.at(-1);
  return { events, nextCursor: rows.length > limit && last !== undefined ? encodeCursor(last.time, last.eventId) : null };
}

/**
 * Records that a day closed on a partition, with its files and counts from audit_files (a day with no
 * record on the partition closes with none); idempotent. Then records the day as closed when every
 * one of `partitionCount` partitions has closed it. Returns whether the day is now closed.
 */
export async function closePartitionDay(db: Queryable, day: string, partition: number, partitionCount: number): Promise<boolean> {
  try {
    await db.query(
      `INSERT INTO audit_partition_days (day, kafka_partition, file_count, record_count, last_offset)
       SELECT $1::date, $2::integer, count(*), coalesce(sum(record_count), 0), max(last_offset) FROM audit_files WHERE day = $1::date AND kafka_partition = $2::integer
       ON CONFLICT (day, kafka_partition) DO NOTHING`,
      [day, partition],
    );
    const closed = await db.query(
      `INSERT INTO audit_days (day, partition_count, file_count, record_count)
       SELECT $1::date, count(*), sum(file_count), sum(record_count) FROM audit_partition_days WHERE day = $1::date HAVING count(*) >= $2::integer
       ON CONFLICT (day) DO NOTHING`,
      [day, partitionCount],
    );
    if ((closed.rowCount ?? 0) > 0) return true;
    const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_days WHERE day = $1::date', [day]);
    return (rows[0]?.n ?? 0) > 0;
  } catch (error) {
    throw failed(`closing day ${day} on partition ${partition}`, error);
  }
}

/** The last day closed on a partition (`YYYY-MM-DD`), or undefined when none has. */
/**
 * The archive's earliest day not closed on every partition: the day after the last closed day (all
 * partitions close days in order, so closed days are contiguous), else the earliest day of any
 * file; undefined while nothing is archived. A partition that never had a record opens this day.
 */
export async function earliestOpenDay(db: Queryable): Promise<string | undefined> {
  try {
    const { rows } = await db.query<{ day: string | null }>(
      `SELECT to_char(COALESCE((SELECT max(day) + 1 FROM audit_days), (SELECT min(day) FROM audit_files)), 'YYYY-MM-DD') AS day`,
    );
    return rows[0]?.day ?? undefined;
  } catch (error) {
    throw failed('reading the earliest open day', error);
  }
}

export async function lastClosedDay(db: Queryable, partition: number): Promise<string | undefined> {
  try {
    const { rows } = await db.query<{ day: string | null }>(`SELECT to_char(max(day), 'YYYY-MM-DD') AS day FROM audit_partition_days WHERE kafka_partition = $1`, [partition]);
    return rows[0]?.day ?? undefined;
  } catch (error) {
    throw failed(`reading the closed days of partition ${partition}`, error);
  }
}
