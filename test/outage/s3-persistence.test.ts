import { setTimeout as sleep } from 'node:timers/promises';
import { DeleteObjectCommand, GetObjectCommand, GetObjectLockConfigurationCommand, HeadObjectCommand, ListObjectVersionsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { initArchiveBucket } from '../../lib/archive/bucket.ts';
import { putArchiveObject } from '../../lib/archive/objects.ts';
import { errorCode, isRetryable, unavailableDependency } from '../../lib/errors.ts';
import { restoreStack, startServer, stopServer } from '../support/outage.ts';
import { rejection, removeTestBucket, testS3Client } from '../support/s3.ts';
import { uniqueName } from '../support/stack.ts';

// The archive must outlive the S3 server (moto, the stack's S3 before MinIO, lost everything on a
// restart while Postgres kept an index pointing at it). This stops the stack's MinIO with the
// archive's objects, versions and locks in it, checks that S3 calls fail as "unavailable" meanwhile,
// and finds all of it again after the restart. The bucket's default is GOVERNANCE so the test can
// clean up; one version carries a COMPLIANCE lock of seconds, which the test waits out.
jest.setTimeout(180_000);

describe('S3 (MinIO) keeps objects, versions and Object Lock across a restart', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('outage-s3');
  const archiveKey = 'audit-events/dt=2026-12-01/p=0/00000000000000000000-00000000000000000099.avro';
  const otherKey = 'audit-events/dt=2026-12-01/p=1/00000000000000000000-00000000000000000049.avro';
  let complianceUntil = new Date();

  afterAll(async () => {
    await restoreStack();
    const left = complianceUntil.getTime() - Date.now();
    if (left > 0) await sleep(left + 1000);
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  it('finds every version with its lock after stop and start, and refuses to delete a locked one', async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
    const archived = await putArchiveObject(s3, { bucket, key: archiveKey, body: Buffer.from('one hundred audit events') });
    // A second version of the same key (a plain overwrite) and an object locked COMPLIANCE for seconds.
    const overwrite = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: archiveKey, Body: 'a later version', ChecksumAlgorithm: 'SHA256' }));
    complianceUntil = new Date(Date.now() + 30_000);
    complianceUntil.setMilliseconds(0);
    const other = await s3.send(
      new PutObjectCommand({ Bucket: bucket, Key: otherKey, Body: 'fifty events', ChecksumAlgorithm: 'SHA256', ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: complianceUntil }),
    );
    const versionsBefore = (await s3.send(new ListObjectVersionsCommand({ Bucket: bucket }))).Versions ?? [];
    expect(versionsBefore).toHaveLength(3);
    const lockBefore = await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }));

    await stopServer('s3');
    try {
      // While it is down, an archive upload fails as "S3 unavailable": the runtime waits, never dead-letters.
      const down = await rejection(putArchiveObject(s3, { bucket, key: otherKey, body: Buffer.from('fifty events') }));
      expect(errorCode(down)).toBe('S3_UNAVAILABLE');
      expect(isRetryable(down)).toBe(true);
      expect(unavailableDependency(down)).toBe('s3');
    } finally {
      await startServer('s3');
    }

    const versionsAfter = (await s3.send(new ListObjectVersionsCommand({ Bucket: bucket }))).Versions ?? [];
    const summary = (versions: typeof versionsAfter) => versions.map((v) => `${v.Key}@${v.VersionId}:${v.ETag}:${v.Size}:${v.IsLatest}`).sort();
    expect(summary(versionsAfter)).toEqual(summary(versionsBefore));
    expect((await s3.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }))).ObjectLockConfiguration).toEqual(lockBefore.ObjectLockConfiguration);

    const first = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: archiveKey, VersionId: archived.versionId }));
    expect(await first.Body?.transformToString()).toBe('one hundred audit events');
    expect(first.ObjectLockMode).toBe('GOVERNANCE');
    const second = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: archiveKey, VersionId: overwrite.VersionId }));
    expect(second.ObjectLockMode).toBe('GOVERNANCE');
    const locked = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: otherKey, VersionId: other.VersionId, ChecksumMode: 'ENABLED' }));
    expect(locked.ObjectLockMode).toBe('COMPLIANCE');
    expect(locked.ObjectLockRetainUntilDate?.getTime()).toBe(complianceUntil.getTime());

    // The locks are enforced after the restart as before it; the same upload again is a no-op.
    const refusal = await rejection(s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: otherKey, VersionId: other.VersionId, BypassGovernanceRetention: true })));
    expect(['AccessDenied', 'InvalidRequest']).toContain(refusal.name);
    const again = await putArchiveObject(s3, { bucket, key: otherKey, body: Buffer.from('fifty events') });
    expect(again).toEqual(expect.objectContaining({ outcome: 'existing', versionId: other.VersionId, checksumSha256: locked.ChecksumSHA256 }));
  });
});
