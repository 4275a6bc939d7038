/**
 * The archiver's settings (environment variables), validated at start-up.
 */
import { z } from 'zod';
import { archiveBucketConfigShape } from '../../lib/archive/bucket.ts';
import { archiveDayConfigShape } from '../../lib/archive/days.ts';
import { DEFAULT_ARCHIVE_PREFIX } from '../../lib/archive/layout.ts';
import { archiveRotationConfigShape, rotationLimitsOf, type RotationLimits } from '../../lib/archive/rotation.ts';
import { s3ConfigShape } from '../../lib/archive/s3.ts';
import { configFields, loadConfig, type Env } from '../../lib/config.ts';

export const archiverConfigShape = {
  ...s3ConfigShape,
  ARCHIVE_BUCKET: archiveBucketConfigShape.ARCHIVE_BUCKET,
  /** The archive's root in the bucket (tests use their own). */
  ARCHIVE_PREFIX: z
    .string()
    .regex(/^[^/](.*[^/])?$/, 'expected a key prefix without a leading or trailing slash, e.g. audit-events')
    .default(DEFAULT_ARCHIVE_PREFIX),
  ...archiveRotationConfigShape,
  ...archiveDayConfigShape,
  /** How often idle partitions are checked for a last file to cut and a day to close. */
  ARCHIVE_TICK_MS: configFields.positiveInt(1_000),
  ARCHIVER_CONCURRENCY: configFields.positiveInt(4),
};

export type ArchiverConfig = z.infer<z.ZodObject<typeof archiverConfigShape>>;

/** The archiver's settings; CONFIG_INVALID naming every bad variable. */
export function loadArchiverConfig(env: Env): ArchiverConfig {
  return loadConfig(archiverConfigShape, env);
}

export function archiverRotationLimits(config: ArchiverConfig): RotationLimits {
  return rotationLimitsOf(config);
}
