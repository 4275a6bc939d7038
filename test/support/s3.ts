import { DeleteBucketCommand, DeleteObjectCommand, ListObjectVersionsCommand, type S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { createS3Client, s3ClientConfig, s3ConfigShape } from '../../lib/archive/s3.ts';
import { loadConfig } from '../../lib/config.ts';
import { testEnv } from './stack.ts';

/** An S3 client for the test stack's S3 (MinIO), as a service builds its own. */
export function testS3Client(): S3Client {
  return createS3Client(loadConfig(s3ConfigShape, testEnv()));
}

/** The options of `testS3Client`, for a test that needs a client configured otherwise. */
export function testS3ClientConfig(): S3ClientConfig {
  return s3ClientConfig(loadConfig(s3ConfigShape, testEnv()));
}

/**
 * Removes a test bucket as far as Object Lock allows: every version and delete marker (bypassing
 * GOVERNANCE retention, which the root user may), then the bucket. Versions still under COMPLIANCE
 * retention cannot be removed by anyone: tests give those a retention of seconds and wait it out.
 */
export async function removeTestBucket(s3: S3Client, bucket: string): Promise<void> {
  const versions = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket })).catch(() => undefined);
  for (const v of [...(versions?.Versions ?? []), ...(versions?.DeleteMarkers ?? [])]) {
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: v.Key, VersionId: v.VersionId, BypassGovernanceRetention: true })).catch(() => undefined);
  }
  await s3.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
}

/** The error a promise rejects with (fails the test when it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<Error & { name: string; $metadata?: { httpStatusCode?: number } }> {
  try {
    await promise;
  } catch (error) {
    return error as Error & { name: string; $metadata?: { httpStatusCode?: number } };
  }
  throw new Error('expected the S3 call to be refused, but it succeeded');
}
