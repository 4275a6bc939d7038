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
import { permanentError } from '../../lib/errors.ts';
import { signerConfigProblems, signerConfigShape } from '../../lib/signing/config.ts';

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
  /** Kafka group session: how soon the partitions of a dead archiver process move. */
  ARCHIVER_SESSION_TIMEOUT_MS: configFields.positiveInt(10_000),
  /**
   * Signed daily manifests: `on` (a signer must be configured), `off`, or `auto` (the default): on
   * when a signer is configured (AUDIT_SIGNER, AUDIT_SIGNING_KEY_FILE or AUDIT_SIGNING_KEY set).
   */
  AUDIT_MANIFESTS: z.enum(['auto', 'on', 'off'], 'expected auto, on or off').default('auto'),
  /** Between checks for closed days to sign. */
  AUDIT_MANIFEST_INTERVAL_MS: configFields.positiveInt(10_000),
  /** Backoff after a failed signing attempt (Vault, S3 or Postgres down): from the first to the second, doubling. */
  AUDIT_MANIFEST_RETRY_MIN_MS: configFields.positiveInt(1_000),
  AUDIT_MANIFEST_RETRY_MAX_MS: configFields.positiveInt(60_000),
  ...signerConfigShape,
};

export type ArchiverConfig = z.infer<z.ZodObject<typeof archiverConfigShape>>;

/**
 * The archiver's settings; CONFIG_INVALID naming every bad variable. Without ARCHIVE_PREFIX the
 * archive's root is the audit topic's name (`<TOPIC_PREFIX>audit-events`), so fleets that share a
 * bucket under different topic prefixes (test worlds, staging) never share partition folders.
 */
export function loadArchiverConfig(env: Env): ArchiverConfig {
  const config = loadConfig(archiverConfigShape, withDefaultArchivePrefix(env));
  const configured = ['AUDIT_SIGNER', 'AUDIT_SIGNING_KEY_FILE', 'AUDIT_SIGNING_KEY'].some((name) => (env[name] ?? '').trim() !== '');
  const manifests = config.AUDIT_MANIFESTS === 'auto' ? (configured ? 'on' : 'off') : config.AUDIT_MANIFESTS;
  if (manifests === 'on') {
    const problems = signerConfigProblems(config);
    if (problems.length > 0) throw permanentError('CONFIG_INVALID', `invalid configuration (signed manifests are on: AUDIT_MANIFESTS=${config.AUDIT_MANIFESTS}):\n  ${problems.join('\n  ')}`);
  }
  return { ...config, AUDIT_MANIFESTS: manifests };
}

/** `env` with ARCHIVE_PREFIX defaulted to the audit topic's name; the archiver and the `audit` commands read the same root. */
export function withDefaultArchivePrefix(env: Env): Env {
  const topicPrefix = env.TOPIC_PREFIX ?? '';
  return (env.ARCHIVE_PREFIX ?? '') === '' && topicPrefix !== '' ? { ...env, ARCHIVE_PREFIX: `${topicPrefix}${DEFAULT_ARCHIVE_PREFIX}` } : env;
}

export function archiverRotationLimits(config: ArchiverConfig): RotationLimits {
  return rotationLimitsOf(config);
}
