/**
 * The archiver's dependencies as a PartitionArchiver uses them: the archive bucket, the registry's
 * writer schemas, and the index tables in Postgres; and where a partition resumes.
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { GENESIS_CHAIN } from '../../lib/archive/chain.ts';
import { closePartitionDay, earliestOpenDay, fileRow, lastClosedDay, recordArchiveFile, type Queryable } from '../../lib/archive/index-store.ts';
import { formatArchiveKey, highestArchivedFile, nextDay, type ArchiveFileName } from '../../lib/archive/layout.ts';
import { putArchiveObject, sha256Base64, type ArchivedObject } from '../../lib/archive/objects.ts';
import { readArchiveRecords } from '../../lib/archive/reader.ts';
import { s3Failure } from '../../lib/archive/s3.ts';
import { errorCode, errorMessage, permanentError, retryableError, unavailableError } from '../../lib/errors.ts';
import { backfillPartitionChain } from './chains.ts';
import type { PartitionArchiverDeps, ResumePoint } from './partition.ts';

export interface ArchiveStoreOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly db: Queryable;
  readonly registryUrl: string;
  /** Partitions of the topic: a day is closed when all of them have closed it. */
  readonly partitionCount: number;
}

/**
 * The writer schema text of a registry id (`GET /schemas/ids/<id>`), cached for the process's life:
 * a registered id's schema never changes, so the same id always gives the same text and the same
 * archive bytes.
 */
export function registryWriterSchemas(registryUrl: string): (schemaId: number) => Promise<string> {
  const cache = new Map<number, string>();
  const base = registryUrl.replace(/\/+$/, '');
  return async (schemaId) => {
    const cached = cache.get(schemaId);
    if (cached !== undefined) return cached;
    const url = `${base}/schemas/ids/${schemaId}`;
    let response: Response;
    try {
      response = await fetch(url, { headers: { accept: 'application/vnd.schemaregistry.v1+json, application/json' }, signal: AbortSignal.timeout(10_000) });
    } catch (error) {
      throw unavailableError('registry', 'SCHEMA_REGISTRY_UNAVAILABLE', `writer schema ${schemaId}: cannot reach the schema registry at ${url}: ${errorMessage(error)}`, error);
    }
    const body = await response.text();
    if (response.status >= 500 || response.status === 429) throw retryableError('SCHEMA_REGISTRY_ERROR', `writer schema ${schemaId}: the registry answered HTTP ${response.status}`);
    if (!response.ok) throw permanentError('SCHEMA_REGISTRY_ERROR', `writer schema ${schemaId}: the registry answered HTTP ${response.status}: ${body.slice(0, 300)}`);
    const schema = (JSON.parse(body) as { schema?: unknown }).schema;
    if (typeof schema !== 'string') throw permanentError('SCHEMA_REGISTRY_ERROR', `writer schema ${schemaId}: the registry's answer has no schema`);
    cache.set(schemaId, schema);
    return schema;
  };
}

export function archiveStore(options: ArchiveStoreOptions, writerSchema: (schemaId: number) => Promise<string> = registryWriterSchemas(options.registryUrl)): PartitionArchiverDeps {
  const { s3, bucket, db } = options;
  return {
    putObject: (key, body) => putOnce(s3, bucket, key, body),
    writerSchema,
    recordFile: (file) => recordArchiveFile(db, file),
    async closeDay(day, partition) {
      await closePartitionDay(db, day, partition, options.partitionCount);
    },
    earliestOpenDay: () => earliestOpenDay(db),
  };
}

/** The records of an archive file as comparable text: offsets, timestamps, keys, headers and event bytes. */
async function contentOf(body: Uint8Array | AsyncIterable<Uint8Array>, name: string): Promise<string[]> {
  const { records } = await readArchiveRecords(body, { name });
  return records.map((r) => JSON.stringify([r.offset, r.timestamp.getTime(), r.key?.toString('base64') ?? null, r.headers.map((h) => [h.key, h.value?.toString('base64') ?? null]), r.eventBytes.toString('base64')]));
}

/**
 * Uploads a file once. An object already there with other bytes but the same records (the file
 * written before by another build, whose zlib compressed differently) is taken as this file; one
 * with other records is an alarm: ARCHIVE_OBJECT_CONFLICT, raised as an unavailable dependency so
 * the partition is held (nothing past it archived or committed, nothing dead-lettered) until someone
 * looks, and /readyz says so.
 */
async function putOnce(s3: S3Client, bucket: string, key: string, body: Buffer): Promise<ArchivedObject> {
  try {
    return await putArchiveObject(s3, { bucket, key, body, contentType: 'application/avro' });
  } catch (error) {
    if (errorCode(error) !== 'ARCHIVE_OBJECT_CONFLICT') throw error;
    let existing;
    try {
      existing = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
    } catch (getError) {
      throw s3Failure(`GetObject s3://${bucket}/${key}`, getError, { bucket, key });
    }
    const same = existing.Body !== undefined && JSON.stringify(await contentOf(existing.Body as AsyncIterable<Uint8Array>, key).catch(() => [])) === JSON.stringify(await contentOf(body, key));
    if (same) return { bucket, key, checksumSha256: existing.ChecksumSHA256 ?? '', versionId: existing.VersionId, outcome: 'existing' };
    throw unavailableError('archive', 'ARCHIVE_OBJECT_CONFLICT', `${errorMessage(error)} (and it holds other records)`, error, { bucket, key });
  }
}

/**
 * A crash between a file's upload and its audit_files row leaves the file in S3 only; resuming after
 * it never writes it again, so it is recorded here, from the object itself. Files of a partition are
 * written one at a time, so only its highest one can be in that state.
 */
async function recordIfMissing(s3: S3Client, bucket: string, db: Queryable, file: ArchiveFileName): Promise<void> {
  const key = formatArchiveKey(file);
  let known: boolean;
  try {
    known = ((await db.query('SELECT 1 FROM audit_files WHERE object_key = $1', [key])).rowCount ?? 0) > 0;
  } catch (error) {
    throw retryableError('AUDIT_INDEX_FAILED', `audit index: looking up archive file ${key}: ${errorMessage(error)}`, error);
  }
  if (known) return;
  let object;
  let body: Uint8Array;
  try {
    object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
    body = await (object.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray();
  } catch (error) {
    throw s3Failure(`GetObject s3://${bucket}/${key}`, error, { bucket, key });
  }
  const { header, records } = await readArchiveRecords(body, { name: key });
  await recordArchiveFile(db, {
    objectKey: key,
    day: file.day,
    partition: file.partition,
    firstOffset: file.firstOffset,
    lastOffset: file.lastOffset,
    recordCount: records.length,
    bytes: body.length,
    sha256: object.ChecksumSHA256 ?? sha256Base64(body),
    versionId: object.VersionId,
    firstChain: header.firstChain,
    lastChain: header.lastChain,
  });
}

export interface ResumeOptions {
  /** Told when the partition's chain had to be recomputed from its files (the first start after the chain came in). */
  readonly chainRecomputed?: (info: { partition: number; files: number; recomputed: number }) => void;
}

/**
 * Where a partition resumes: after the highest archived file in S3 (the source of truth), with its
 * closed days from Postgres and the chain after that file (its row, which has it from the file's
 * header; for a file from before the chain, recomputed from all the partition's files).
 */
export async function resumePoint(s3: S3Client, bucket: string, prefix: string, db: Queryable, partition: number, options: ResumeOptions = {}): Promise<ResumePoint> {
  const file = await highestArchivedFile(s3, bucket, prefix, partition);
  let chain = GENESIS_CHAIN;
  if (file !== undefined) {
    await recordIfMissing(s3, bucket, db, file);
    const recorded = (await fileRow(db, formatArchiveKey(file)))?.lastChain;
    if (recorded != null) chain = recorded;
    else {
      const backfilled = await backfillPartitionChain({ s3, bucket, prefix, db }, partition);
      options.chainRecomputed?.({ partition, files: backfilled.files, recomputed: backfilled.recomputed });
      chain = backfilled.last;
    }
  }
  const closed = await lastClosedDay(db, partition);
  return { nextOffset: file === undefined ? 0 : file.lastOffset + 1, lastFileDay: file?.day, openDay: closed === undefined ? undefined : nextDay(closed), chain };
}
