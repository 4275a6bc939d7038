import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Where the local stack listens. Ports are off the well-known defaults so the stack can run beside a
 * developer's own Postgres, Redis or Kafka; every service reads these through its configuration,
 * so pointing it elsewhere is a matter of environment variables (see `agent-manager stack env`).
 */
export const LOCAL_STACK = {
  /** One TLS listener with client certificates required (mTLS); the controller listener too. */
  kafka: { host: '127.0.0.1', port: 19092, controllerPort: 19093 },
  schemaRegistry: { host: '127.0.0.1', port: 18081 },
  postgres: { host: '127.0.0.1', port: 15432, user: 'agent_manager', password: 'agent_manager', database: 'agent_manager' },
  redis: { host: '127.0.0.1', port: 16379 },
  /**
   * MinIO: the access key and secret are its root user and password (development credentials of the
   * stack only; MinIO wants at least 3 and 8 characters). The archive bucket is made by `s3 init`;
   * its default retention is one day here (COMPLIANCE: nothing can shorten it, not even the root user).
   */
  s3: {
    host: '127.0.0.1',
    port: 19000,
    consolePort: 19001,
    region: 'us-east-1',
    accessKeyId: 'local',
    secretAccessKey: 'local-secret',
    archiveBucket: 'agent-manager-audit',
    archiveRetentionDays: 1,
  },
  /** OPA standing in for SentinelNet, the policy decision point. */
  opa: { host: '127.0.0.1', port: 18181 },
} as const;

/**
 * The Kafka principals of the local stack, one certificate each (`CN=<name>` = `User:<name>`).
 * `broker` is the broker itself; `admin` is the operator (a super user: the stack's health checks,
 * `topics create`, tests); the others are the Kernel, one per service, and the agents (all agents
 * share one principal that may only heartbeat).
 */
export const STACK_PRINCIPALS = ['broker', 'admin', 'kernel', 'ingest', 'provisioner', 'heartbeat', 'archiver', 'agent'] as const;
export type StackPrincipal = (typeof STACK_PRINCIPALS)[number];

/** Principals with every right (Kafka `super.users`). */
export const SUPER_PRINCIPALS: readonly StackPrincipal[] = ['broker', 'admin'];

export interface PrincipalFiles {
  /** The certificate (PEM). */
  readonly cert: string;
  /** The private key (PEM, PKCS#8, unencrypted, mode 600). */
  readonly key: string;
}

export interface StackPkiFiles {
  readonly dir: string;
  /** The CA certificate every client and the broker trust. */
  readonly ca: string;
  /** The broker's key store: its key followed by its certificate (Kafka's `ssl.keystore.type=PEM`). */
  readonly brokerKeystore: string;
  readonly principals: Readonly<Record<StackPrincipal, PrincipalFiles>>;
}

/** Where `stack up` keeps the PKI (`<stackDir>/pki`, made by dev/stack/pki.ts), whether or not it exists yet. */
export function stackPkiFiles(stackDir: string): StackPkiFiles {
  const dir = join(stackDir, 'pki');
  const principals = Object.fromEntries(STACK_PRINCIPALS.map((p) => [p, { cert: join(dir, `${p}.pem`), key: join(dir, `${p}-key.pem`) }])) as Record<StackPrincipal, PrincipalFiles>;
  return { dir, ca: join(dir, 'ca.pem'), brokerKeystore: join(dir, 'broker-keystore.pem'), principals };
}

/**
 * What a Kafka client needs to act as `principal` on the local stack: the bootstrap address, the
 * security protocol and the credential files (`<NAME>_FILE` variables: see lib/secrets.ts). The
 * default principal is the operator's; the provisioner also gets the agents' own certificate to hand
 * to the agents it starts, and the Kernel's files are listed for a Kernel run from elsewhere.
 */
export function kafkaStackEnv(stackDir: string, principal: StackPrincipal = 'admin'): Record<string, string> {
  const { kafka } = LOCAL_STACK;
  const pki = stackPkiFiles(stackDir);
  return {
    KAFKA_BROKERS: `${kafka.host}:${kafka.port}`,
    KAFKA_SECURITY_PROTOCOL: 'ssl',
    KAFKA_SSL_CA_FILE: pki.ca,
    KAFKA_SSL_CERT_FILE: pki.principals[principal].cert,
    KAFKA_SSL_KEY_FILE: pki.principals[principal].key,
    AGENT_KAFKA_SSL_CERT_FILE: pki.principals.agent.cert,
    AGENT_KAFKA_SSL_KEY_FILE: pki.principals.agent.key,
    KERNEL_KAFKA_SSL_CERT_FILE: pki.principals.kernel.cert,
    KERNEL_KAFKA_SSL_KEY_FILE: pki.principals.kernel.key,
  };
}

const KAFKA_PEM_VARIABLES = ['KAFKA_SSL_CA', 'KAFKA_SSL_CERT', 'KAFKA_SSL_KEY'] as const;

/**
 * `env` with KAFKA_SSL_CA_FILE, KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE replaced by the files'
 * contents (KAFKA_SSL_CA, …): for what loads its configuration straight from an object without
 * reading `<NAME>_FILE` (tests, the demo, benchmarks). Files the stack has not made yet stay files.
 */
export function inlineKafkaFiles(env: Readonly<Record<string, string>>): Record<string, string> {
  const result = { ...env };
  for (const name of KAFKA_PEM_VARIABLES) {
    const file = result[`${name}_FILE`];
    if (file === undefined || !existsSync(file)) continue;
    result[name] = readFileSync(file, 'utf8');
    delete result[`${name}_FILE`];
  }
  return result;
}

/** The Kafka certificate and key (PEM contents) of a principal of the local stack. */
export function stackCredentials(root: string, principal: StackPrincipal): { KAFKA_SSL_CERT: string; KAFKA_SSL_KEY: string } {
  const files = stackPkiFiles(join(root, '.stack')).principals[principal];
  return { KAFKA_SSL_CERT: readFileSync(files.cert, 'utf8'), KAFKA_SSL_KEY: readFileSync(files.key, 'utf8') };
}

/**
 * The environment that points an in-process service (or a test) at the local stack (`root` holds
 * `.stack/`): like `stack env`, but with the Kafka PEM contents in place of their files (see
 * `inlineKafkaFiles`).
 */
export function localStackEnv(root: string = process.cwd(), principal: StackPrincipal = 'admin'): Record<string, string> {
  const { schemaRegistry, postgres, redis, s3, opa } = LOCAL_STACK;
  return {
    ...inlineKafkaFiles(kafkaStackEnv(join(root, '.stack'), principal)),
    SCHEMA_REGISTRY_URL: `http://${schemaRegistry.host}:${schemaRegistry.port}/apis/ccompat/v7`,
    DATABASE_URL: `postgres://${postgres.user}:${postgres.password}@${postgres.host}:${postgres.port}/${postgres.database}`,
    REDIS_URL: `redis://${redis.host}:${redis.port}`,
    S3_ENDPOINT: `http://${s3.host}:${s3.port}`,
    S3_REGION: s3.region,
    S3_ACCESS_KEY_ID: s3.accessKeyId,
    S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
    ARCHIVE_BUCKET: s3.archiveBucket,
    ARCHIVE_RETENTION_DAYS: String(s3.archiveRetentionDays),
    OPA_URL: `http://${opa.host}:${opa.port}`,
  };
}
