import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

/** Field names whose values are secrets wherever they appear at the top level or one level down. */
const SECRET_FIELDS = [
  'password',
  'passphrase',
  'secret',
  'token',
  'accessToken',
  'refreshToken',
  'apiKey',
  'api_key',
  'privateKey',
  'clientSecret',
  'secretAccessKey',
  'authorization',
  'cookie',
  'connectionString',
  'databaseUrl',
  'redisUrl',
  'vaultToken',
  // Environment variables and configuration objects logged by mistake.
  'DATABASE_URL',
  'REDIS_URL',
  'S3_SECRET_ACCESS_KEY',
  'S3_ACCESS_KEY_ID',
  'VAULT_TOKEN',
  'KAFKA_SASL_PASSWORD',
  'OTEL_EXPORTER_OTLP_HEADERS',
];

/** Paths pino redacts: each secret field at the top level, one level down, and request/response headers. */
export const REDACTED_PATHS: readonly string[] = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((field) => `*.${field}`),
  'headers["x-vault-token"]',
  '*.headers["x-vault-token"]',
  '*.headers.authorization',
  '*.headers.cookie',
  'headers["set-cookie"]',
  '*.headers["set-cookie"]',
];

/**
 * JSON logs with `service` on every line; per-record children add `agentId`, `requestId` and
 * `traceId`. Anything that looks like a secret is redacted (see `REDACTED_PATHS`); secrets are
 * still never passed to a logger on purpose.
 */
export function createLogger(service: string, level: LevelWithSilent = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: [...REDACTED_PATHS], censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
