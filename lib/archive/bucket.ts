import {
  CreateBucketCommand,
  GetBucketVersioningCommand,
  GetObjectLockConfigurationCommand,
  HeadBucketCommand,
  PutObjectLockConfigurationCommand,
  type DefaultRetention,
  type S3Client,
} from '@aws-sdk/client-s3';
import { z } from 'zod';
import { permanentError } from '../errors.ts';
import { bucketName, s3ErrorCode, s3Failure, s3HttpStatus } from './s3.ts';

/** The archive bucket of `s3 init` (and, later, of the archiver). */
export const archiveBucketConfigShape = {
  ARCHIVE_BUCKET: bucketName(),
  /** The bucket's default retention in days (COMPLIANCE): no one can delete or shorten it before then. */
  ARCHIVE_RETENTION_DAYS: z.coerce
    .number('expected a number of days')
    .int('expected a whole number of days')
    .min(1, 'expected at least 1 day')
    // S3's limit for a default retention (100 years).
    .max(36_500, 'expected at most 36500 days'),
};

export type RetentionMode = 'COMPLIANCE' | 'GOVERNANCE';

export interface ArchiveBucketSpec {
  readonly bucket: string;
  /** Default retention of every new object version. COMPLIANCE for the archive; GOVERNANCE only where a test must clean up. */
  readonly retention: { readonly mode: RetentionMode; readonly days: number };
}

export interface ArchiveBucketResult {
  readonly bucket: string;
  /** `created`: a new bucket; `updated`: the default retention was missing or weaker and was raised; `unchanged`: already as asked or stronger. */
  readonly outcome: 'created' | 'updated' | 'unchanged';
  /** What the bucket has now. */
  readonly retention: { readonly mode: RetentionMode; readonly days: number };
}

/** GOVERNANCE can be bypassed with a permission; COMPLIANCE by no one. */
const MODE_STRENGTH: Readonly<Record<RetentionMode, number>> = { GOVERNANCE: 0, COMPLIANCE: 1 };

function retentionOf(rule: DefaultRetention | undefined): { mode: RetentionMode; days: number } | undefined {
  if (rule?.Mode !== 'COMPLIANCE' && rule?.Mode !== 'GOVERNANCE') return undefined;
  // S3 counts a retention year as 365 days.
  const days = rule.Days ?? (rule.Years !== undefined ? rule.Years * 365 : undefined);
  return days === undefined ? undefined : { mode: rule.Mode, days };
}

/** Creates the bucket with Object Lock (versioning comes with it); true when it made it, false when it was there. */
async function ensureBucket(s3: S3Client, bucket: string): Promise<boolean> {
  try {
    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
    return false;
  } catch (error) {
    const status = s3HttpStatus(error);
    if (status === 403) {
      throw permanentError('ARCHIVE_BUCKET_FORBIDDEN', `archive bucket ${bucket}: access denied (it belongs to another account, or these credentials may not read it)`, error, { bucket });
    }
    if (status !== 404) throw s3Failure(`HeadBucket ${bucket}`, error, { bucket });
  }
  try {
    await s3.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
    return true;
  } catch (error) {
    const code = s3ErrorCode(error);
    // A concurrent `s3 init` made it first: check it as an existing bucket.
    if (code === 'BucketAlreadyOwnedByYou') return false;
    if (code === 'BucketAlreadyExists') throw permanentError('ARCHIVE_BUCKET_TAKEN', `archive bucket ${bucket}: the name is taken by another account; choose another ARCHIVE_BUCKET`, error, { bucket });
    throw s3Failure(`CreateBucket ${bucket}`, error, { bucket });
  }
}

/**
 * Makes the archive bucket: versioning, Object Lock and a default retention. Idempotent: on a bucket
 * already configured so it changes nothing. An existing bucket without Object Lock is an error, not
 * something to fix in place (MinIO cannot add it; AWS can, but not for the objects already there). The default retention is only ever raised: a missing or shorter one is set to
 * `spec.retention`, a longer one stays, and a COMPLIANCE one is never replaced by GOVERNANCE.
 */
export async function initArchiveBucket(s3: S3Client, spec: ArchiveBucketSpec): Promise<ArchiveBucketResult> {
  const { bucket, retention } = spec;
  const created = await ensureBucket(s3, bucket);

  let lock;
  try {
    lock = (await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).ObjectLockConfiguration;
  } catch (error) {
    if (s3ErrorCode(error) !== 'ObjectLockConfigurationNotFoundError') throw s3Failure(`GetObjectLockConfiguration ${bucket}`, error, { bucket });
  }
  if (lock?.ObjectLockEnabled !== 'Enabled') {
    throw permanentError(
      'ARCHIVE_BUCKET_NO_OBJECT_LOCK',
      `archive bucket ${bucket} exists without Object Lock, so its objects could be deleted or overwritten; ` +
        's3 init does not add Object Lock afterwards (MinIO allows it only when a bucket is created, and on AWS it would leave the objects already there unprotected): ' +
        'point ARCHIVE_BUCKET at a new bucket, run agent-manager s3 init, and copy the archive into it',
      undefined,
      { bucket },
    );
  }

  let versioning;
  try {
    versioning = (await s3.send(new GetBucketVersioningCommand({ Bucket: bucket }))).Status;
  } catch (error) {
    throw s3Failure(`GetBucketVersioning ${bucket}`, error, { bucket });
  }
  // Object Lock keeps versioning on (S3 refuses to suspend it); anything else is a broken server.
  if (versioning !== 'Enabled') {
    throw permanentError('ARCHIVE_BUCKET_NOT_VERSIONED', `archive bucket ${bucket} has Object Lock but versioning is ${versioning ?? 'off'}; the archive needs both`, undefined, { bucket });
  }

  // Only ever raised: the stronger mode and the longer period of what is there and what is asked.
  const current = retentionOf(lock.Rule?.DefaultRetention);
  const target: { mode: RetentionMode; days: number } =
    current === undefined
      ? { ...retention }
      : { mode: MODE_STRENGTH[current.mode] >= MODE_STRENGTH[retention.mode] ? current.mode : retention.mode, days: Math.max(current.days, retention.days) };
  if (current !== undefined && current.mode === target.mode && current.days === target.days) {
    return { bucket, outcome: created ? 'created' : 'unchanged', retention: current };
  }
  try {
    await s3.send(
      new PutObjectLockConfigurationCommand({
        Bucket: bucket,
        ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: target.mode, Days: target.days } } },
      }),
    );
  } catch (error) {
    throw s3Failure(`PutObjectLockConfiguration ${bucket}`, error, { bucket });
  }
  return { bucket, outcome: created ? 'created' : 'updated', retention: target };
}
