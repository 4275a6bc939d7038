/**
 * The archiver's dependencies as a PartitionArchiver uses them: the archive bucket, the registry's
 * writer schemas, and the index tables in Postgres; and where a partition resumes.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { closePartitionDay, lastClosedDay, recordArchiveFile, type Queryable } from '../../lib/archive/index-store.ts';
import { highestArchivedFile, nextDay } from '../../lib/archive/layout.ts';
import { putArchiveObject } from '../../lib/archive/objects.ts';
import { errorMessage, permanentError, retryableError, unavailableError } from '../../lib/errors.ts';
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
    putObject: (key, body) => putArchiveObject(s3, { bucket, key, body, contentType: 'application/avro' }),
    writerSchema,
    recordFile: (file) => recordArchiveFile(db, file),
    async closeDay(day, partition) {
      await closePartitionDay(db, day, partition, options.partitionCount);
    },
  };
}

/** Where a partition resumes: after the highest archived file in S3 (the source of truth), with its closed days from Postgres. */
export async function resumePoint(s3: S3Client, bucket: string, prefix: string, db: Queryable, partition: number): Promise<ResumePoint> {
  const file = await highestArchivedFile(s3, bucket, prefix, partition);
  const closed = await lastClosedDay(db, partition);
  return { nextOffset: file === undefined ? 0 : file.lastOffset + 1, lastFileDay: file?.day, openDay: closed === undefined ? undefined : nextDay(closed) };
}
