import { S3ServiceException } from '@aws-sdk/client-s3';
import { archiveBucketConfigShape } from '../../../../lib/archive/bucket.ts';
import { sha256Base64 } from '../../../../lib/archive/objects.ts';
import { createS3Client, s3ConfigShape, s3Failure } from '../../../../lib/archive/s3.ts';
import { loadConfig } from '../../../../lib/config.ts';
import { errorCode, isRetryable, unavailableDependency } from '../../../../lib/errors.ts';

function s3Error(name: string, status: number): S3ServiceException {
  return new S3ServiceException({ name, $fault: status >= 500 ? 'server' : 'client', $metadata: { httpStatusCode: status }, message: `${name} (HTTP ${status})` });
}

describe('archive bucket configuration', () => {
  const valid = { ARCHIVE_BUCKET: 'agent-manager-audit', ARCHIVE_RETENTION_DAYS: '2555' };

  it('accepts an S3 bucket name and a retention in whole days', () => {
    expect(loadConfig(archiveBucketConfigShape, valid)).toEqual({ ARCHIVE_BUCKET: 'agent-manager-audit', ARCHIVE_RETENTION_DAYS: 2555 });
  });

  it.each(['ab', 'Agent-Manager', 'under_score', '-leading', 'trailing-', 'two..dots', '192.168.1.10', 'xn--punycode', 'x'.repeat(64)])('refuses the bucket name %s', (name) => {
    expect(() => loadConfig(archiveBucketConfigShape, { ...valid, ARCHIVE_BUCKET: name })).toThrow(/ARCHIVE_BUCKET: expected an S3 bucket name/);
  });

  it.each(['0', '1.5', 'ten', '36501'])('refuses ARCHIVE_RETENTION_DAYS=%s', (days) => {
    expect(() => loadConfig(archiveBucketConfigShape, { ...valid, ARCHIVE_RETENTION_DAYS: days })).toThrow(/ARCHIVE_RETENTION_DAYS/);
  });

  it('has no default bucket or retention', () => {
    expect(() => loadConfig(archiveBucketConfigShape, {})).toThrow(/ARCHIVE_BUCKET: .*\(not set\)[\s\S]*ARCHIVE_RETENTION_DAYS/);
  });
});

describe('S3 client configuration', () => {
  it('needs a region, and both keys or neither', () => {
    expect(() => loadConfig(s3ConfigShape, {})).toThrow(/S3_REGION/);
    const config = loadConfig(s3ConfigShape, { S3_REGION: 'eu-west-1', S3_ACCESS_KEY_ID: 'id' });
    expect(() => createS3Client(config)).toThrow(/S3_SECRET_ACCESS_KEY: required with S3_ACCESS_KEY_ID/);
  });

  it('uses path-style addressing with a custom endpoint unless told otherwise', async () => {
    const custom = createS3Client(loadConfig(s3ConfigShape, { S3_REGION: 'us-east-1', S3_ENDPOINT: 'http://127.0.0.1:19000' }));
    const aws = createS3Client(loadConfig(s3ConfigShape, { S3_REGION: 'us-east-1' }));
    const virtual = createS3Client(loadConfig(s3ConfigShape, { S3_REGION: 'us-east-1', S3_ENDPOINT: 'https://s3.example', S3_FORCE_PATH_STYLE: 'false' }));
    try {
      expect(custom.config.forcePathStyle).toBe(true);
      expect(aws.config.forcePathStyle).toBe(false);
      expect(virtual.config.forcePathStyle).toBe(false);
      expect(await custom.config.region()).toBe('us-east-1');
    } finally {
      for (const client of [custom, aws, virtual]) client.destroy();
    }
  });
});

describe('s3Failure: an outage or a refusal', () => {
  it.each([
    ['a 503', s3Error('ServiceUnavailable', 503)],
    ['a 500', s3Error('InternalError', 500)],
    ['throttling', s3Error('SlowDown', 429)],
    ['a refused connection', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:19000'), { code: 'ECONNREFUSED' })],
  ])('%s is S3 unavailable (retryable, dependency s3)', (_, cause) => {
    const error = s3Failure('PutObject s3://b/k', cause);
    expect(errorCode(error)).toBe('S3_UNAVAILABLE');
    expect(isRetryable(error)).toBe(true);
    expect(unavailableDependency(error)).toBe('s3');
  });

  it.each([
    ['AccessDenied', 403],
    ['InvalidRequest', 400],
    ['NoSuchBucket', 404],
  ])('%s (HTTP %d) is a permanent refusal, not an outage', (name, status) => {
    const error = s3Failure('DeleteObject s3://b/k', s3Error(name, status));
    expect(errorCode(error)).toBe('S3_REQUEST_REFUSED');
    expect(isRetryable(error)).toBe(false);
    expect(unavailableDependency(error)).toBeUndefined();
    expect(error.context).toEqual(expect.objectContaining({ s3Code: name, httpStatus: status }));
  });
});

describe('sha256Base64', () => {
  it("is S3's x-amz-checksum-sha256 form", () => {
    // The SHA-256 of the empty string (the well-known e3b0c442…b855), base64-encoded.
    const empty = Buffer.from('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'hex').toString('base64');
    expect(sha256Base64(new Uint8Array())).toBe(empty);
  });
});
