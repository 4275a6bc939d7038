import { createHash } from 'node:crypto';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, type GetObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3';
import { permanentError, retryableError } from '../errors.ts';
import { s3ErrorCode, s3Failure, s3HttpStatus } from './s3.ts';

export interface ArchiveObject {
  readonly bucket: string;
  readonly key: string;
  readonly body: Uint8Array;
  /** Defaults to application/octet-stream. */
  readonly contentType?: string;
}

export interface ArchivedObject {
  readonly bucket: string;
  readonly key: string;
  /** The object's SHA-256, base64 (as S3's x-amz-checksum-sha256). */
  readonly checksumSha256: string;
  /** The version holding these bytes (the bucket is versioned). */
  readonly versionId: string | undefined;
  /** `uploaded` now, or `existing`: the same bytes were already there (a re-upload after a crash). */
  readonly outcome: 'uploaded' | 'existing';
}

/** Base64 SHA-256, the form of S3's x-amz-checksum-sha256. */
export function sha256Base64(body: Uint8Array): string {
  return createHash('sha256').update(body).digest('base64');
}

/**
 * Writes an archive object once. The upload carries its SHA-256 (S3 verifies it; Object Lock buckets
 * refuse uploads without a checksum) and is conditional (`If-None-Match: *`), so it never adds a
 * version over an existing object. When the key is taken, the existing object's checksum decides:
 * the same bytes are a no-op (the retry of an upload that succeeded before a crash); different bytes
 * are ARCHIVE_OBJECT_CONFLICT, permanent — an alarm: something else wrote there, never overwritten.
 */
export async function putArchiveObject(s3: S3Client, object: ArchiveObject): Promise<ArchivedObject> {
  const { bucket, key, body } = object;
  const checksumSha256 = sha256Base64(body);
  const context = { bucket, key };
  try {
    const put = await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: body,
        ContentType: object.contentType ?? 'application/octet-stream',
        ChecksumSHA256: checksumSha256,
        IfNoneMatch: '*',
      }),
    );
    return { bucket, key, checksumSha256, versionId: put.VersionId, outcome: 'uploaded' };
  } catch (error) {
    // 412: the key exists. 409: a concurrent conditional write of the same key is in flight; either
    // way the object that is (or will be) there decides.
    const status = s3HttpStatus(error);
    if (status !== 412 && status !== 409) throw s3Failure(`PutObject s3://${bucket}/${key}`, error, context);
  }
  return existingObject(s3, bucket, key, checksumSha256);
}

async function existingObject(s3: S3Client, bucket: string, key: string, checksumSha256: string): Promise<ArchivedObject> {
  const context = { bucket, key };
  let head;
  try {
    head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
  } catch (error) {
    // Still in flight (the 409 case) or deleted under us: nothing to compare yet; the caller retries.
    if (s3ErrorCode(error) === 'NotFound' || s3HttpStatus(error) === 404) {
      throw retryableError('ARCHIVE_OBJECT_RACE', `s3://${bucket}/${key}: the upload was refused as existing, but no object is there yet (a concurrent upload); retry`, error, context);
    }
    throw s3Failure(`HeadObject s3://${bucket}/${key}`, error, context);
  }
  if (head.ChecksumSHA256 === checksumSha256) {
    return { bucket, key, checksumSha256, versionId: head.VersionId, outcome: 'existing' };
  }
  throw permanentError(
    'ARCHIVE_OBJECT_CONFLICT',
    `s3://${bucket}/${key} already holds different bytes (sha256 ${head.ChecksumSHA256 ?? 'unknown: uploaded without a SHA-256 checksum'}, this upload ${checksumSha256}); ` +
      'an archived object is never overwritten: find out what wrote it',
    undefined,
    { ...context, existingSha256: head.ChecksumSHA256, existingVersionId: head.VersionId, uploadSha256: checksumSha256 },
  );
}

/** GetObject of an archive file with its checksum checked; a failure is classified as `s3Failure` does. */
export async function getArchiveObject(s3: S3Client, bucket: string, key: string): Promise<GetObjectCommandOutput> {
  try {
    return await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
  } catch (error) {
    throw s3Failure(`GetObject s3://${bucket}/${key}`, error, { bucket, key });
  }
}
