import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectVersionsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { putArchiveObject, sha256Base64 } from '../../../../lib/archive/objects.ts';
import { errorCode, isRetryable, unavailableDependency } from '../../../../lib/errors.ts';
import { rejection, removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { uniqueName } from '../../../support/stack.ts';

// The bucket is made by the archive's own init, with GOVERNANCE instead of the archive's COMPLIANCE
// default retention so the test can remove what it wrote (the root user may bypass GOVERNANCE; no
// one may bypass COMPLIANCE, whose refusals test/integration/smoke/s3.test.ts checks with a
// retention of seconds). Without the bypass header, a GOVERNANCE lock refuses a delete the same way.
describe('putArchiveObject: write once, with a SHA-256 checksum, into an Object Lock bucket', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('archive-objects');
  const key = (name: string) => `audit-events/dt=2026-12-01/p=0/${name}.avro`;

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  });

  afterAll(async () => {
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  const versionsOf = async (Key: string) => (await s3.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: Key }))).Versions ?? [];

  it('uploads with its checksum under the bucket default retention; the same bytes again are a no-op', async () => {
    const Key = key('00000000000000000000-00000000000000000009');
    const body = Buffer.from('Obj\u0001 ten audit events would be here');
    const first = await putArchiveObject(s3, { bucket, key: Key, body });
    expect(first).toEqual({ bucket, key: Key, checksumSha256: sha256Base64(body), versionId: first.versionId, outcome: 'uploaded' });
    expect(first.versionId).toBeTruthy();

    const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key, ChecksumMode: 'ENABLED' }));
    expect(head.ChecksumSHA256).toBe(first.checksumSha256);
    expect(head.ObjectLockMode).toBe('GOVERNANCE');
    expect(head.ObjectLockRetainUntilDate?.getTime()).toBeGreaterThan(Date.now() + 23 * 3600_000);

    // A retry after a crash between the upload and the offset commit.
    const again = await putArchiveObject(s3, { bucket, key: Key, body: Buffer.from(body) });
    expect(again).toEqual({ ...first, outcome: 'existing' });
    expect(await versionsOf(Key)).toHaveLength(1);
  });

  it('refuses different bytes for an archived key with a permanent ARCHIVE_OBJECT_CONFLICT, and adds no version', async () => {
    const Key = key('00000000000000000010-00000000000000000019');
    const original = Buffer.from('the archived bytes');
    const first = await putArchiveObject(s3, { bucket, key: Key, body: original });
    const error = await rejection(putArchiveObject(s3, { bucket, key: Key, body: Buffer.from('other bytes for the same range') }));
    expect(errorCode(error)).toBe('ARCHIVE_OBJECT_CONFLICT');
    expect(isRetryable(error)).toBe(false);
    expect(unavailableDependency(error)).toBeUndefined();
    expect(error.message).toContain(first.checksumSha256);

    const versions = await versionsOf(Key);
    expect(versions.map((v) => v.VersionId)).toEqual([first.versionId]);
    const read = await s3.send(new GetObjectCommand({ Bucket: bucket, Key }));
    expect(await read.Body?.transformToString()).toBe('the archived bytes');
  });

  it('a locked version cannot be deleted, and an overwrite only adds a version beside it', async () => {
    const Key = key('00000000000000000020-00000000000000000029');
    const archived = await putArchiveObject(s3, { bucket, key: Key, body: Buffer.from('locked bytes') });

    const refusal = await rejection(s3.send(new DeleteObjectCommand({ Bucket: bucket, Key, VersionId: archived.versionId })));
    // S3 answers AccessDenied; MinIO InvalidRequest "Object is WORM protected and cannot be overwritten".
    expect(['AccessDenied', 'InvalidRequest']).toContain(refusal.name);
    expect(refusal.message).toMatch(/WORM|Access Denied/i);

    // A plain PUT (not putArchiveObject) to the same key: S3 keeps the locked version and adds a new one.
    const overwrite = await s3.send(new PutObjectCommand({ Bucket: bucket, Key, Body: 'overwritten', ChecksumAlgorithm: 'SHA256' }));
    expect(overwrite.VersionId).not.toBe(archived.versionId);
    const locked = await s3.send(new GetObjectCommand({ Bucket: bucket, Key, VersionId: archived.versionId }));
    expect(await locked.Body?.transformToString()).toBe('locked bytes');
    expect(locked.ObjectLockMode).toBe('GOVERNANCE');
    expect((await versionsOf(Key)).map((v) => v.VersionId).sort()).toEqual([archived.versionId, overwrite.VersionId].sort());

    // putArchiveObject sees the newest version's different bytes: an alarm, not a silent success.
    expect(errorCode(await rejection(putArchiveObject(s3, { bucket, key: Key, body: Buffer.from('locked bytes') })))).toBe('ARCHIVE_OBJECT_CONFLICT');

    // A delete without a version id only hides the key behind a delete marker: the locked version stays.
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key }));
    const stillThere = await s3.send(new GetObjectCommand({ Bucket: bucket, Key, VersionId: archived.versionId }));
    expect(await stillThere.Body?.transformToString()).toBe('locked bytes');
  });

  it('an upload whose bytes do not match its checksum is refused (S3 verifies what the archive sends)', async () => {
    const refusal = await rejection(
      s3.send(new PutObjectCommand({ Bucket: bucket, Key: key('corrupted'), Body: Buffer.from('bytes damaged on the way'), ChecksumSHA256: sha256Base64(Buffer.from('the bytes meant')) })),
    );
    expect(refusal.name).toMatch(/BadDigest|XAmzContentChecksumMismatch|InvalidRequest/);
    expect(await versionsOf(key('corrupted'))).toEqual([]);
  });
});
