/**
 * The hash chain of a partition (lib/archive/chain.ts) where the archive does not record it yet:
 * files written before the integrity change carry no chain in their header nor in audit_files. The
 * chain is defined from the first record ever archived on the partition, so it is recomputed from the
 * partition's files in offset order (every day), reading only the files whose row has no chain, and
 * the rows are filled in (the old files' bytes stay as they are: Object Lock). Runs once per partition
 * after the upgrade: every file written since carries its chain.
 */
import type { Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { GENESIS_CHAIN, nextChainBytes } from '../../lib/archive/chain.ts';
import { fileRow, recordArchiveFile, setFileChain, type Queryable } from '../../lib/archive/index-store.ts';
import { formatArchiveKey, listArchiveDays, listPartitionDayFiles } from '../../lib/archive/layout.ts';
import { getArchiveObject, sha256Base64 } from '../../lib/archive/objects.ts';
import { openArchiveFile } from '../../lib/archive/reader.ts';
import { permanentError } from '../../lib/errors.ts';

export interface ChainSource {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  readonly db: Queryable;
}

export interface PartitionChain {
  /** The chain after the partition's last archived record (GENESIS_CHAIN when it has none). */
  readonly last: string;
  /** Files whose chain was computed from their records here (0: every file had its chain). */
  readonly recomputed: number;
  readonly files: number;
}

const HEX_32 = /^[0-9a-f]{64}$/;

/** Reads a whole archive object: its records' event hashes in order, its header's chain, and what its row needs. */
async function readChainFile(source: ChainSource, key: string): Promise<{ hashes: Buffer[]; header: { first: string | undefined; last: string | undefined }; bytes: number; sha256: string; versionId: string | undefined }> {
  const { s3, bucket } = source;
  const object = await getArchiveObject(s3, bucket, key);
  const body = await (object.Body as { transformToByteArray(): Promise<Uint8Array> } & Readable).transformToByteArray();
  const file = await openArchiveFile<{ hash?: unknown }>(body, { name: key });
  const hashes: Buffer[] = [];
  for await (const record of file.records) {
    const hash = record.event.hash;
    if (typeof hash !== 'string' || !HEX_32.test(hash)) throw permanentError('ARCHIVE_CHAIN_UNREADABLE', `${key}: the record at offset ${record.offset} has no hex SHA-256 hash to chain`, undefined, { key, offset: record.offset });
    hashes.push(Buffer.from(hash, 'hex'));
  }
  return { hashes, header: { first: file.header.firstChain, last: file.header.lastChain }, bytes: body.length, sha256: object.ChecksumSHA256 ?? sha256Base64(body), versionId: object.VersionId };
}

/**
 * Walks every file of `partition` in offset order and makes sure its audit_files row has its chain
 * values: from the row, else from the file's header, else computed from its records after the
 * previous file's last chain. Returns the chain after the last file.
 */
export async function backfillPartitionChain(source: ChainSource, partition: number): Promise<PartitionChain> {
  const { s3, bucket, prefix, db } = source;
  let running = GENESIS_CHAIN;
  let recomputed = 0;
  let files = 0;
  for (const day of await listArchiveDays(s3, bucket, prefix)) {
    for (const name of await listPartitionDayFiles(s3, bucket, prefix, day, partition)) {
      files += 1;
      const key = formatArchiveKey(name);
      const row = await fileRow(db, key);
      if (row?.firstChain != null && row.lastChain != null) {
        running = row.lastChain;
        continue;
      }
      const read = await readChainFile(source, key);
      let first = read.header.first;
      let last = read.header.last;
      if (first === undefined || last === undefined) {
        let chain: Buffer = Buffer.from(running, 'hex');
        let firstBytes: Buffer | undefined;
        for (const hash of read.hashes) {
          chain = nextChainBytes(chain, hash);
          firstBytes ??= chain;
        }
        if (firstBytes === undefined) throw permanentError('ARCHIVE_CHAIN_UNREADABLE', `${key}: an archive file without records`, undefined, { key });
        first = firstBytes.toString('hex');
        last = chain.toString('hex');
        recomputed += 1;
      }
      if (row === undefined) {
        await recordArchiveFile(db, { objectKey: key, day, partition, firstOffset: name.firstOffset, lastOffset: name.lastOffset, recordCount: read.hashes.length, bytes: read.bytes, sha256: read.sha256, versionId: read.versionId, firstChain: first, lastChain: last });
      } else {
        await setFileChain(db, key, first, last);
      }
      running = last;
    }
  }
  return { last: running, recomputed, files };
}
