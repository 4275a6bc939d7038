import type { Command } from 'commander';
import { archiveBucketConfigShape, initArchiveBucket } from '../lib/archive/bucket.ts';
import { createS3Client, s3ConfigShape } from '../lib/archive/s3.ts';
import { loadConfig } from '../lib/config.ts';
import { resolvedServiceEnv } from './services.ts';

const initConfigShape = { ...s3ConfigShape, ...archiveBucketConfigShape };

export function registerS3Commands(program: Command, setExitCode: (code: number) => void): void {
  const s3 = program.command('s3').description('The S3 buckets Agent Manager writes to.');

  s3.command('init')
    .description(
      'Create the audit archive bucket (ARCHIVE_BUCKET) with versioning, Object Lock and a default COMPLIANCE retention of ARCHIVE_RETENTION_DAYS; ' +
        'S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY. Safe to run repeatedly: an existing bucket so configured is left as it is, ' +
        'a shorter default retention is raised (never lowered), a bucket without Object Lock is an error.',
    )
    .action(async () => {
      const config = loadConfig(initConfigShape, await resolvedServiceEnv());
      const client = createS3Client(config);
      try {
        const result = await initArchiveBucket(client, { bucket: config.ARCHIVE_BUCKET, retention: { mode: 'COMPLIANCE', days: config.ARCHIVE_RETENTION_DAYS } });
        const retention = `default retention ${result.retention.mode} ${result.retention.days} day${result.retention.days === 1 ? '' : 's'}`;
        const longer = result.retention.days > config.ARCHIVE_RETENTION_DAYS ? ` (longer than ARCHIVE_RETENTION_DAYS=${config.ARCHIVE_RETENTION_DAYS}: kept)` : '';
        const what = { created: 'created', updated: 'raised the default retention of', unchanged: 'already configured:' }[result.outcome];
        console.log(`s3 init: ${what} bucket ${result.bucket} (versioning, Object Lock, ${retention}${longer})`);
        setExitCode(0);
      } finally {
        client.destroy();
      }
    });
}
