import { databaseConfigShape } from '../lib/config.ts';
import { serviceConfigShape } from '../lib/service/context.ts';
import { archiverConfigShape } from '../services/archiver/config.ts';

/** What `audit query` reads: the archiver's index in Postgres. */
export const auditConfigShape = { ...databaseConfigShape, DATABASE_SCHEMA: serviceConfigShape.DATABASE_SCHEMA };

/** The archive in S3: where it is and how to reach it. */
export const archiveS3ConfigShape = {
  S3_ENDPOINT: archiverConfigShape.S3_ENDPOINT,
  S3_REGION: archiverConfigShape.S3_REGION,
  S3_ACCESS_KEY_ID: archiverConfigShape.S3_ACCESS_KEY_ID,
  S3_SECRET_ACCESS_KEY: archiverConfigShape.S3_SECRET_ACCESS_KEY,
  S3_FORCE_PATH_STYLE: archiverConfigShape.S3_FORCE_PATH_STYLE,
  S3_REQUEST_TIMEOUT_MS: archiverConfigShape.S3_REQUEST_TIMEOUT_MS,
  ARCHIVE_BUCKET: archiverConfigShape.ARCHIVE_BUCKET,
  ARCHIVE_PREFIX: archiverConfigShape.ARCHIVE_PREFIX,
};

/** What the `audit` commands that compare the archive with the index read. */
export const archiveReadConfigShape = { ...auditConfigShape, ...archiveS3ConfigShape };
