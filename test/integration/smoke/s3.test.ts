import { setTimeout as sleep } from 'node:timers/promises';
import {
  CreateBucketCommand,
  PutObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetBucketVersioningCommand,
  PutObjectRetentionCommand,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { rejection, removeTestBucket, testS3Client } from '../../support/s3.ts';
import { uniqueName } from '../../support/stack.ts';

// COMPLIANCE retention is enforced for real (MinIO, as S3): no one can delete the version or shorten
// its retention until it expires, so the test locks for seconds and waits that out before cleaning up.
const LOCK_MS = 20_000;
jest.setTimeout(90_000);

describe('S3 server with versioning and Object Lock (@aws-sdk/client-s3)', () => {
  const s3 = testS3Client();
  const Bucket = uniqueName('smoke-lock');
  const Key = 'audit-events/dt=2026-11-27/p=0/0-9.avro';
  let retainUntil = new Date();

  afterAll(async () => {
    const left = retainUntil.getTime() - Date.now();
    if (left > 0) await sleep(left + 1000);
    await removeTestBucket(s3, Bucket);
    s3.destroy();
  });

  it('refuses to delete an object version under COMPLIANCE retention, or to shorten that retention', async () => {
    await s3.send(new CreateBucketCommand({ Bucket, ObjectLockEnabledForBucket: true }));
    const lock = await s3.send(new GetObjectLockConfigurationCommand({ Bucket }));
    expect(lock.ObjectLockConfiguration?.ObjectLockEnabled).toBe('Enabled');
    const versioning = await s3.send(new GetBucketVersioningCommand({ Bucket }));
    expect(versioning.Status).toBe('Enabled');

    // Whole seconds: S3 keeps a retention date to the second.
    retainUntil = new Date(Math.ceil((Date.now() + LOCK_MS) / 1000) * 1000);
    const put = await s3.send(
      new PutObjectCommand({
        Bucket,
        Key,
        Body: Buffer.from('Obj\u0001 an avro container would be here'),
        // Object Lock uploads must carry a checksum (S3 refuses them otherwise).
        ChecksumAlgorithm: 'SHA256',
        ObjectLockMode: 'COMPLIANCE',
        ObjectLockRetainUntilDate: retainUntil,
      }),
    );
    expect(put.VersionId).toBeTruthy();

    // S3 answers AccessDenied; MinIO InvalidRequest, "Object is WORM protected and cannot be overwritten".
    const refusal = await rejection(s3.send(new DeleteObjectCommand({ Bucket, Key, VersionId: put.VersionId })));
    expect(refusal).toBeInstanceOf(S3ServiceException);
    expect(['AccessDenied', 'InvalidRequest']).toContain(refusal.name);

    const shorten = await rejection(
      s3.send(new PutObjectRetentionCommand({ Bucket, Key, VersionId: put.VersionId, Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(Date.now() + 1000) } })),
    );
    expect(shorten).toBeInstanceOf(S3ServiceException);

    const stillThere = await s3.send(new GetObjectCommand({ Bucket, Key, VersionId: put.VersionId }));
    expect(await stillThere.Body?.transformToString()).toContain('avro container');
    expect(stillThere.ObjectLockMode).toBe('COMPLIANCE');
    expect(stillThere.ObjectLockRetainUntilDate?.getTime()).toBe(retainUntil.getTime());
  });
});
