import {
  S3Client,
  CreateBucketCommand,
  PutObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetBucketVersioningCommand,
  PutObjectRetentionCommand,
  ListObjectVersionsCommand,
  DeleteBucketCommand,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { testEnv, uniqueName } from '../../support/stack.ts';

function s3Client(): S3Client {
  const env = testEnv();
  return new S3Client({
    endpoint: env.S3_ENDPOINT,
    region: env.S3_REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: env.S3_ACCESS_KEY_ID ?? '', secretAccessKey: env.S3_SECRET_ACCESS_KEY ?? '' },
  });
}

describe('S3 server with versioning and Object Lock (@aws-sdk/client-s3)', () => {
  const s3 = s3Client();
  const Bucket = uniqueName('smoke-lock');
  const Key = 'audit-events/dt=2026-11-27/p=0/0-9.avro';

  afterAll(async () => {
    // Cleanup only: the local server lets a retention be shortened, real S3 in COMPLIANCE mode does not.
    const versions = await s3.send(new ListObjectVersionsCommand({ Bucket }));
    for (const v of [...(versions.Versions ?? []), ...(versions.DeleteMarkers ?? [])]) {
      await s3
        .send(new PutObjectRetentionCommand({ Bucket, Key: v.Key, VersionId: v.VersionId, Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(Date.now() - 1000) } }))
        .catch(() => undefined);
      await s3.send(new DeleteObjectCommand({ Bucket, Key: v.Key, VersionId: v.VersionId })).catch(() => undefined);
    }
    await s3.send(new DeleteBucketCommand({ Bucket })).catch(() => undefined);
    s3.destroy();
  });

  it('refuses to delete an object version under COMPLIANCE retention with AccessDenied', async () => {
    await s3.send(new CreateBucketCommand({ Bucket, ObjectLockEnabledForBucket: true }));
    const lock = await s3.send(new GetObjectLockConfigurationCommand({ Bucket }));
    expect(lock.ObjectLockConfiguration?.ObjectLockEnabled).toBe('Enabled');
    const versioning = await s3.send(new GetBucketVersioningCommand({ Bucket }));
    expect(versioning.Status).toBe('Enabled');

    const put = await s3.send(
      new PutObjectCommand({
        Bucket,
        Key,
        Body: Buffer.from('Obj\u0001 an avro container would be here'),
        // Object Lock uploads must carry a checksum (S3 refuses them otherwise).
        ChecksumAlgorithm: 'SHA256',
        ObjectLockMode: 'COMPLIANCE',
        ObjectLockRetainUntilDate: new Date(Date.now() + 24 * 3600 * 1000),
      }),
    );
    expect(put.VersionId).toBeTruthy();

    let refusal: unknown;
    try {
      await s3.send(new DeleteObjectCommand({ Bucket, Key, VersionId: put.VersionId }));
    } catch (error) {
      refusal = error;
    }
    expect(refusal).toBeInstanceOf(S3ServiceException);
    expect((refusal as S3ServiceException).name).toBe('AccessDenied');

    const stillThere = await s3.send(new GetObjectCommand({ Bucket, Key, VersionId: put.VersionId }));
    expect(await stillThere.Body?.transformToString()).toContain('avro container');
    expect(stillThere.ObjectLockMode).toBe('COMPLIANCE');
  });
});
