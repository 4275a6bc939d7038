import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { CreateBucketCommand, GetBucketVersioningCommand, GetObjectLockConfigurationCommand, HeadBucketCommand, PutObjectLockConfigurationCommand, S3Client } from '@aws-sdk/client-s3';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { createS3Client, s3ConfigShape } from '../../../../lib/archive/s3.ts';
import { loadConfig } from '../../../../lib/config.ts';
import { errorCode, isAppError, isRetryable, unavailableDependency } from '../../../../lib/errors.ts';
import { rejection, removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { portInUse } from '../../../../dev/stack/process.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `agent-manager s3 init` as an operator (or the deployed init Job) runs it: its own process, configured by the environment. */
function s3Init(env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 's3', 'init'], { env: { ...process.env, ...testEnv(), ...env }, timeout: 90_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

describe('agent-manager s3 init (the archive bucket)', () => {
  const s3 = testS3Client();
  const buckets: string[] = [];
  const newBucket = (prefix: string) => {
    const bucket = uniqueName(prefix);
    buckets.push(bucket);
    return bucket;
  };

  afterAll(async () => {
    // These buckets hold no objects, so even COMPLIANCE ones can be removed.
    for (const bucket of buckets) await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  it('creates the bucket with versioning, Object Lock and a COMPLIANCE default retention, and is a no-op the second time', async () => {
    const bucket = newBucket('archive-init');
    const first = await s3Init({ ARCHIVE_BUCKET: bucket, ARCHIVE_RETENTION_DAYS: '3' });
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(`s3 init: created bucket ${bucket} (versioning, Object Lock, default retention COMPLIANCE 3 days)`);

    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
    expect((await s3.send(new GetBucketVersioningCommand({ Bucket: bucket }))).Status).toBe('Enabled');
    const lock = (await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).ObjectLockConfiguration;
    expect(lock?.ObjectLockEnabled).toBe('Enabled');
    expect(lock?.Rule?.DefaultRetention).toEqual(expect.objectContaining({ Mode: 'COMPLIANCE', Days: 3 }));

    const second = await s3Init({ ARCHIVE_BUCKET: bucket, ARCHIVE_RETENTION_DAYS: '3' });
    expect(second.code).toBe(0);
    expect(second.stdout).toContain(`s3 init: already configured: bucket ${bucket}`);
    expect((await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).ObjectLockConfiguration).toEqual(lock);
  });

  it('raises a shorter or missing default retention, never lowers one, and never trades COMPLIANCE for GOVERNANCE', async () => {
    const bucket = newBucket('archive-raise');
    // Object Lock without a default retention (as a bucket made by hand).
    await s3.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: true }));
    expect(await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 2 } })).toEqual({ bucket, outcome: 'updated', retention: { mode: 'GOVERNANCE', days: 2 } });
    expect(await initArchiveBucket(s3, { bucket, retention: { mode: 'COMPLIANCE', days: 1 } })).toEqual({ bucket, outcome: 'updated', retention: { mode: 'COMPLIANCE', days: 2 } });
    expect(await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } })).toEqual({ bucket, outcome: 'unchanged', retention: { mode: 'COMPLIANCE', days: 2 } });

    const shorter = await s3Init({ ARCHIVE_BUCKET: bucket, ARCHIVE_RETENTION_DAYS: '1' });
    expect(shorter.code).toBe(0);
    expect(shorter.stdout).toContain('default retention COMPLIANCE 2 days (longer than ARCHIVE_RETENTION_DAYS=1: kept)');
    const lock = (await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).ObjectLockConfiguration;
    expect(lock?.Rule?.DefaultRetention).toEqual(expect.objectContaining({ Mode: 'COMPLIANCE', Days: 2 }));
  });

  it('refuses an existing bucket without Object Lock with a clear, permanent error', async () => {
    const bucket = newBucket('archive-nolock');
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    const error = await rejection(initArchiveBucket(s3, { bucket, retention: { mode: 'COMPLIANCE', days: 1 } }));
    expect(errorCode(error)).toBe('ARCHIVE_BUCKET_NO_OBJECT_LOCK');
    expect(isRetryable(error)).toBe(false);
    expect(unavailableDependency(error)).toBeUndefined();

    const run = await s3Init({ ARCHIVE_BUCKET: bucket, ARCHIVE_RETENTION_DAYS: '1' });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`archive bucket ${bucket} exists without Object Lock`);
    // Nothing was changed on it.
    await expect(s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).rejects.toThrow();
  });

  it('refuses a bad configuration before talking to S3', async () => {
    const run = await s3Init({ ARCHIVE_BUCKET: 'Not_A_Bucket', ARCHIVE_RETENTION_DAYS: '0' });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('ARCHIVE_BUCKET: expected an S3 bucket name');
    expect(run.stderr).toContain('ARCHIVE_RETENTION_DAYS: expected at least 1 day');
  });

  it('classifies S3 not answering as unavailable (retryable, dependency s3), not as a refusal', async () => {
    // A loopback port with nothing listening: the AWS SDK's own connection error, after its retries.
    let port = 19_999;
    while (await portInUse('127.0.0.1', port)) port--;
    const config = loadConfig(s3ConfigShape, { ...testEnv(), S3_ENDPOINT: `http://127.0.0.1:${port}` });
    const down: S3Client = createS3Client(config);
    try {
      const error = await rejection(initArchiveBucket(down, { bucket: uniqueName('archive-down'), retention: { mode: 'COMPLIANCE', days: 1 } }));
      expect(isAppError(error)).toBe(true);
      expect(errorCode(error)).toBe('S3_UNAVAILABLE');
      expect(isRetryable(error)).toBe(true);
      expect(unavailableDependency(error)).toBe('s3');
      // The SDK's raw error is classified too (the runtime sees it when a handler does not wrap it).
      expect(unavailableDependency((error as Error).cause)).toBe('s3');
    } finally {
      down.destroy();
    }
  });

  it('a PutObjectLockConfiguration without a retention on an existing archive bucket is what init repairs', async () => {
    const bucket = newBucket('archive-repair');
    await initArchiveBucket(s3, { bucket, retention: { mode: 'COMPLIANCE', days: 1 } });
    // Someone removed the default retention (Object Lock itself cannot be turned off).
    await s3.send(new PutObjectLockConfigurationCommand({ Bucket: bucket, ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled' } }));
    expect(await initArchiveBucket(s3, { bucket, retention: { mode: 'COMPLIANCE', days: 1 } })).toEqual({ bucket, outcome: 'updated', retention: { mode: 'COMPLIANCE', days: 1 } });
  });
});
