import { z } from 'zod';
import { permanentError } from './errors.ts';
import { isSecretVariable } from './secrets.ts';

/** Reads `<NAME>_FILE` secrets and `vault:` references; validate its result with `loadConfig`. */
export { loadServiceEnv, resolveSecretFiles } from './secrets.ts';

export type Env = Readonly<Record<string, string | undefined>>;

/**
 * Validates a process's configuration once, at start-up. Keys of `shape` are environment variable
 * names; the error names every bad or missing variable and what it expected.
 */
export function loadConfig<Shape extends z.ZodRawShape>(shape: Shape, env: Env): z.infer<z.ZodObject<Shape>> {
  const result = z.object(shape).safeParse(env);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const variable = issue.path.join('.');
    const got = env[variable];
    return `${variable}: ${issue.message}${got === undefined ? ' (not set)' : ` (got ${JSON.stringify(redactIfSecret(variable, got))})`}`;
  });
  throw permanentError('CONFIG_INVALID', `invalid configuration:\n  ${problems.join('\n  ')}`);
}

// Secret-bearing values (tokens, keys, URLs with credentials such as DATABASE_URL) are never echoed.
function redactIfSecret(variable: string, value: string): string {
  return isSecretVariable(variable) ? '[redacted]' : value;
}

/**
 * Reusable field definitions. Addresses and credentials have no defaults: a deployed service missing
 * one refuses to start. The local stack's values come only from `agent-manager stack env` and the demo.
 */
export const configFields = {
  brokers: z
    .string('expected a comma-separated list of host:port')
    .transform((value) => value.split(',').map((b) => b.trim()).filter(Boolean))
    .refine((list) => list.length > 0 && list.every((b) => /^[^:\s]+:\d+$/.test(b)), 'expected a comma-separated list of host:port'),
  url: () => z.url('expected a URL'),
  positiveInt: (fallback: number) => z.coerce.number().int('expected an integer').positive('expected a positive integer').default(fallback),
  nonNegativeInt: (fallback: number) => z.coerce.number().int('expected an integer').min(0, 'expected 0 or more').default(fallback),
  port: (fallback: number) => z.coerce.number().int().min(0).max(65535, 'expected a TCP port (0-65535)').default(fallback),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  boolean: (fallback: boolean) =>
    z
      .enum(['true', 'false', '1', '0', 'yes', 'no'], 'expected true or false')
      .default(fallback ? 'true' : 'false')
      .transform((v) => v === 'true' || v === '1' || v === 'yes'),
};

/** What every service process needs. */
export const commonConfigShape = {
  KAFKA_BROKERS: configFields.brokers,
  KAFKA_CLIENT_ID: z.string().min(1).default('agent-manager'),
  SCHEMA_REGISTRY_URL: configFields.url(),
  LOG_LEVEL: configFields.logLevel,
  HTTP_PORT: configFields.port(9464),
  SHUTDOWN_GRACE_MS: configFields.positiveInt(25_000),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.url('expected the OTLP/HTTP endpoint URL').optional(),
};

export const databaseConfigShape = {
  DATABASE_URL: configFields.url(),
  DATABASE_POOL_MAX: configFields.positiveInt(10),
};

/** Vault, for services that read from it at run time (start-up `vault:` references need only the environment). */
export const vaultConfigShape = {
  VAULT_ADDR: z.url('expected the Vault URL, e.g. https://vault:8200').optional(),
  VAULT_TOKEN: z.string().min(1).optional(),
  VAULT_NAMESPACE: z.string().min(1).optional(),
};

export const redisConfigShape = {
  REDIS_URL: configFields.url(),
};
