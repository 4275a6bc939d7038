import { z } from 'zod';
import { permanentError } from './errors.ts';
import { DEFAULT_RETRY_POLICY, type RetryPolicy } from './runtime/retry.ts';
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

const pem = (what: string, variable: string) =>
  z
    .string()
    .optional()
    .transform((value) => (value === undefined || value.trim() === '' ? undefined : value.trim()))
    .refine((value) => value === undefined || /^-----BEGIN [A-Z0-9 ]+-----/m.test(value), `expected ${what} in PEM (or set ${variable}_FILE to the path of its file)`);

/**
 * How a process connects to Kafka. `ssl` (the default, so a service never falls back to plaintext
 * by omission) is TLS with a client certificate: the brokers authenticate each client by it and
 * authorize its principal with ACLs (lib/contracts/acls.ts). The PEM values come, like any secret,
 * from `<NAME>_FILE` files or `vault:` references (lib/secrets.ts): KAFKA_SSL_CA_FILE,
 * KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE. Check the combination with `kafkaTlsOf`.
 */
export const kafkaConfigShape = {
  KAFKA_BROKERS: configFields.brokers,
  KAFKA_SECURITY_PROTOCOL: z.enum(['ssl', 'plaintext'], 'expected ssl (TLS with a client certificate) or plaintext').default('ssl'),
  /** The CA that signed the brokers' certificates; unset: the system's trusted CAs. */
  KAFKA_SSL_CA: pem('the CA certificate(s)', 'KAFKA_SSL_CA'),
  KAFKA_SSL_CERT: pem("the client's certificate", 'KAFKA_SSL_CERT'),
  KAFKA_SSL_KEY: pem("the client's private key", 'KAFKA_SSL_KEY'),
};

export type KafkaConnectionConfig = z.infer<z.ZodObject<typeof kafkaConfigShape>>;

/** TLS with a client certificate (kafkajs' `ssl` option); `undefined` means plaintext. */
export interface KafkaTls {
  /** PEM; undefined trusts the system's CAs. */
  readonly ca: string | undefined;
  readonly cert: string;
  readonly key: string;
}

/**
 * The TLS settings of a validated Kafka configuration, or undefined for plaintext. Throws
 * CONFIG_INVALID at start-up when `ssl` lacks the client certificate or key, or when `plaintext`
 * comes with TLS material (a half-applied configuration must not silently connect in the clear).
 */
export function kafkaTlsOf(config: Pick<KafkaConnectionConfig, 'KAFKA_SECURITY_PROTOCOL' | 'KAFKA_SSL_CA' | 'KAFKA_SSL_CERT' | 'KAFKA_SSL_KEY'>): KafkaTls | undefined {
  const { KAFKA_SECURITY_PROTOCOL: protocol, KAFKA_SSL_CA: ca, KAFKA_SSL_CERT: cert, KAFKA_SSL_KEY: key } = config;
  if (protocol === 'plaintext') {
    const set = Object.entries({ KAFKA_SSL_CA: ca, KAFKA_SSL_CERT: cert, KAFKA_SSL_KEY: key }).filter(([, v]) => v !== undefined).map(([k]) => k);
    if (set.length > 0) throw permanentError('CONFIG_INVALID', `invalid configuration:\n  KAFKA_SECURITY_PROTOCOL: plaintext, but ${set.join(', ')} ${set.length === 1 ? 'is' : 'are'} set: use ssl, or unset them`);
    return undefined;
  }
  const missing = Object.entries({ KAFKA_SSL_CERT: cert, KAFKA_SSL_KEY: key }).filter(([, v]) => v === undefined).map(([k]) => k);
  if (missing.length > 0 || cert === undefined || key === undefined) {
    throw permanentError(
      'CONFIG_INVALID',
      `invalid configuration:\n  ${missing.join(', ')}: required with KAFKA_SECURITY_PROTOCOL=ssl (the brokers authenticate clients by certificate): set ${missing.map((m) => `${m}_FILE`).join(' and ')} to the PEM files, or vault: references (for the local stack: eval "$(npx agent-manager stack env --export)")`,
    );
  }
  return { ca, cert, key };
}

/** What every service process needs. */
export const commonConfigShape = {
  ...kafkaConfigShape,
  KAFKA_CLIENT_ID: z.string().min(1).default('agent-manager'),
  SCHEMA_REGISTRY_URL: configFields.url(),
  LOG_LEVEL: configFields.logLevel,
  HTTP_PORT: configFields.port(9464),
  /** Address of the ops listener (/livez, /readyz, /metrics): all interfaces by default, for probes and scrapes; 127.0.0.1 keeps it local. */
  HTTP_HOST: z.string().min(1, 'expected an address to bind, e.g. 0.0.0.0 or 127.0.0.1').default('0.0.0.0'),
  SHUTDOWN_GRACE_MS: configFields.positiveInt(25_000),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.url('expected the OTLP/HTTP endpoint URL').optional(),
};

/**
 * The worker runtime's retries (lib/runtime/retry.ts); defaults are `DEFAULT_RETRY_POLICY`. A record
 * failing by itself is retried up to WORKER_MAX_ATTEMPTS times, from WORKER_RETRY_BASE_DELAY_MS
 * doubling to WORKER_RETRY_MAX_DELAY_MS, then dead-lettered; while a dependency is down it is retried
 * without end, each wait at most WORKER_UNAVAILABLE_MAX_DELAY_MS. Read them with `workerRetryPolicyOf`.
 */
export const workerConfigShape = {
  WORKER_MAX_ATTEMPTS: configFields.positiveInt(DEFAULT_RETRY_POLICY.maxAttempts),
  WORKER_RETRY_BASE_DELAY_MS: configFields.positiveInt(DEFAULT_RETRY_POLICY.initialDelayMs),
  WORKER_RETRY_MAX_DELAY_MS: configFields.positiveInt(DEFAULT_RETRY_POLICY.maxDelayMs),
  WORKER_UNAVAILABLE_MAX_DELAY_MS: configFields.positiveInt(DEFAULT_RETRY_POLICY.unavailableMaxDelayMs),
};

export type WorkerConfig = z.infer<z.ZodObject<typeof workerConfigShape>>;

/** The worker's retry policy from validated settings; throws CONFIG_INVALID when a cap is below the first delay. */
export function workerRetryPolicyOf(config: WorkerConfig): RetryPolicy {
  const base = config.WORKER_RETRY_BASE_DELAY_MS;
  const below = (['WORKER_RETRY_MAX_DELAY_MS', 'WORKER_UNAVAILABLE_MAX_DELAY_MS'] as const).filter((name) => config[name] < base);
  if (below.length > 0) {
    throw permanentError('CONFIG_INVALID', `invalid configuration:\n  ${below.map((name) => `${name}: expected at least WORKER_RETRY_BASE_DELAY_MS (${base}) (got ${config[name]})`).join('\n  ')}`);
  }
  return {
    maxAttempts: config.WORKER_MAX_ATTEMPTS,
    initialDelayMs: base,
    multiplier: DEFAULT_RETRY_POLICY.multiplier,
    maxDelayMs: config.WORKER_RETRY_MAX_DELAY_MS,
    unavailableMaxDelayMs: config.WORKER_UNAVAILABLE_MAX_DELAY_MS,
  };
}

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
