import { S3Client, S3ServiceException, type S3ClientConfig } from '@aws-sdk/client-s3';
import { z } from 'zod';
import { configFields } from '../config.ts';
import { permanentError, retryableError, unavailableDependency, unavailableError, type AppError } from '../errors.ts';

/**
 * How a process reaches S3. Without S3_ENDPOINT the SDK talks to AWS; with one (MinIO, the local
 * stack) requests use path-style addressing unless S3_FORCE_PATH_STYLE=false. Keys are optional as a
 * pair: without them the SDK's default chain applies (an IAM role, a web identity token).
 */
export const s3ConfigShape = {
  S3_ENDPOINT: z.url('expected the S3 endpoint URL, e.g. https://minio.example:9000').optional(),
  S3_REGION: z.string('expected an AWS region, e.g. eu-west-1').min(1, 'expected an AWS region, e.g. eu-west-1'),
  S3_ACCESS_KEY_ID: z.string().min(1).optional(),
  S3_SECRET_ACCESS_KEY: z.string().min(1).optional(),
  S3_FORCE_PATH_STYLE: z
    .enum(['true', 'false', '1', '0', 'yes', 'no'], 'expected true or false')
    .optional()
    .transform((v) => (v === undefined ? undefined : v === 'true' || v === '1' || v === 'yes')),
  /** Longest wait for one S3 request (the SDK retries on top of it). */
  S3_REQUEST_TIMEOUT_MS: configFields.positiveInt(30_000),
};

export type S3Config = z.infer<z.ZodObject<typeof s3ConfigShape>>;

/** S3's bucket naming rules (general purpose buckets): 3-63 characters, lowercase, not an IP address. */
const BUCKET_NAME = /^(?!\d{1,3}(\.\d{1,3}){3}$)(?!xn--)(?!sthree-)(?!.*\.\.)(?!.*-s3alias$)(?!.*--ol-s3$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export const bucketName = () =>
  z.string('expected an S3 bucket name').regex(BUCKET_NAME, 'expected an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit');

/** The S3 client of a validated configuration; CONFIG_INVALID when only one of the two keys is set. */
export function createS3Client(config: S3Config): S3Client {
  return new S3Client(s3ClientConfig(config));
}

/** The client options of a validated configuration (see `createS3Client`). */
export function s3ClientConfig(config: S3Config): S3ClientConfig {
  const { S3_ACCESS_KEY_ID: accessKeyId, S3_SECRET_ACCESS_KEY: secretAccessKey } = config;
  if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    const missing = accessKeyId === undefined ? 'S3_ACCESS_KEY_ID' : 'S3_SECRET_ACCESS_KEY';
    throw permanentError('CONFIG_INVALID', `invalid configuration:\n  ${missing}: required with ${missing === 'S3_ACCESS_KEY_ID' ? 'S3_SECRET_ACCESS_KEY' : 'S3_ACCESS_KEY_ID'} (set both, or neither to use the SDK's credential chain)`);
  }
  return {
    region: config.S3_REGION,
    ...(config.S3_ENDPOINT !== undefined ? { endpoint: config.S3_ENDPOINT } : {}),
    forcePathStyle: config.S3_FORCE_PATH_STYLE ?? config.S3_ENDPOINT !== undefined,
    ...(accessKeyId !== undefined && secretAccessKey !== undefined ? { credentials: { accessKeyId, secretAccessKey } } : {}),
    requestHandler: { connectionTimeout: 5_000, requestTimeout: config.S3_REQUEST_TIMEOUT_MS },
  };
}

/** The S3 error's code (`NoSuchKey`, `InvalidRequest`…), or undefined for a non-S3 error. */
export function s3ErrorCode(error: unknown): string | undefined {
  if (error instanceof S3ServiceException) return error.name;
  // Another loaded copy of the SDK: its errors still carry $metadata and a name.
  if (typeof error === 'object' && error !== null && '$metadata' in error && 'name' in error && typeof error.name === 'string' && '$fault' in error) return error.name;
  return undefined;
}

/** The HTTP status S3 answered with, if it answered. */
export function s3HttpStatus(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null || !('$metadata' in error)) return undefined;
  const metadata = (error as { $metadata?: { httpStatusCode?: unknown } }).$metadata;
  return typeof metadata?.httpStatusCode === 'number' ? metadata.httpStatusCode : undefined;
}

/**
 * A typed error for a failed S3 call: `unavailable` (dependency `s3`) when S3 did not answer or
 * answered 5xx/429 (the SDK's retries spent), otherwise permanent — a refused request fails the
 * same way next time.
 */
export function s3Failure(operation: string, error: unknown, context?: Record<string, unknown>): AppError {
  const dependency = unavailableDependency(error);
  if (dependency !== undefined) return unavailableError('s3', 'S3_UNAVAILABLE', `S3 ${operation}: S3 did not answer (${describe(error)})`, error, context);
  const code = s3ErrorCode(error);
  if (code === undefined) return retryableError('S3_FAILED', `S3 ${operation}: ${describe(error)}`, error, context);
  return permanentError('S3_REQUEST_REFUSED', `S3 ${operation}: ${describe(error)}`, error, { ...context, s3Code: code, httpStatus: s3HttpStatus(error) });
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as NodeJS.ErrnoException).code;
  const status = s3HttpStatus(error);
  return [error.name !== 'Error' ? error.name : undefined, code, status !== undefined ? `HTTP ${status}` : undefined, error.message].filter(Boolean).join(': ');
}
