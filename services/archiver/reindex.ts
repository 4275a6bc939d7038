/**
 * `audit reindex`: rebuilds the Postgres index from the archive in S3 alone (the DR drill's second
 * half): every file of the days asked, every record's index row, and the file rows. Idempotent: rows
 * already there are left as they are.
 */
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { insertAuditIndex, recordArchiveFile, type AuditIndexEntry, type Queryable } from '../../lib/archive/index-store.ts';
import { formatArchiveKey, listArchiveDays, listDayFiles } from '../../lib/archive/layout.ts';
import { getArchiveObject } from '../../lib/archive/objects.ts';
import { openArchiveFile } from '../../lib/archive/reader.ts';
import type avsc from 'avsc';
import { indexEntryOf, validateAuditEvent, type AuditEvent } from './handler.ts';

export interface ReindexOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  readonly db: Queryable;
  /** A reader type to resolve older writer schemas into (the current contract); default: each file's writer schema. */
  readonly eventType?: avsc.Type;
  /** Inclusive days, `YYYY-MM-DD`. */
  readonly from: string;
  readonly to: string;
  /** Told after each file. */
  readonly progress?: (file: ReindexedFile) => void;
}

export interface ReindexedFile {
  readonly key: string;
  readonly records: number;
  /** Index rows that were not there yet. */
  readonly inserted: number;
  /** Records the index cannot hold (they fail the archiver's validation), skipped. */
  readonly invalid: number;
}

export interface ReindexSummary {
  readonly days: number;
  readonly files: number;
  readonly records: number;
  readonly inserted: number;
  readonly invalid: number;
}

const CHUNK = 1_000;

export async function reindexArchive(options: ReindexOptions): Promise<ReindexSummary> {
  const { s3, bucket, prefix, db } = options;
  const days = (await listArchiveDays(s3, bucket, prefix)).filter((d) => d >= options.from && d <= options.to);
  const summary = { days: days.length, files: 0, records: 0, inserted: 0, invalid: 0 };
  for (const day of days) {
    for (const name of await listDayFiles(s3, bucket, prefix, day)) {
      const key = formatArchiveKey(name);
      const object = await getArchiveObject(s3, bucket, key);
      const file = await openArchiveFile<AuditEvent>(object.Body as Readable, { name: key, ...(options.eventType !== undefined ? { eventType: options.eventType } : {}) });
      let entries: AuditIndexEntry[] = [];
      const done = { records: 0, inserted: 0, invalid: 0 };
      for await (const record of file.records) {
        done.records += 1;
        try {
          entries.push(indexEntryOf(validateAuditEvent(record.event), name.partition, record.offset));
        } catch {
          done.invalid += 1;
        }
        if (entries.length >= CHUNK) {
          done.inserted += await insertAuditIndex(db, entries);
          entries = [];
        }
      }
      done.inserted += await insertAuditIndex(db, entries);
      await recordArchiveFile(db, {
        objectKey: key,
        day,
        partition: name.partition,
        firstOffset: name.firstOffset,
        lastOffset: name.lastOffset,
        recordCount: done.records,
        bytes: object.ContentLength ?? 0,
        sha256: object.ChecksumSHA256 ?? '',
        versionId: object.VersionId,
        // The chain as the file's header has it (files from before the chain: none, recomputed by the archiver when it needs them).
        firstChain: file.header.firstChain,
        lastChain: file.header.lastChain,
      });
      summary.files += 1;
      summary.records += done.records;
      summary.inserted += done.inserted;
      summary.invalid += done.invalid;
      options.progress?.({ key, ...done });
    }
  }
  return summary;
}
