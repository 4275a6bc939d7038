import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import { z } from 'zod';
import { commonConfigShape, databaseConfigShape, kafkaTlsOf, loadConfig, redisConfigShape, workerConfigShape, workerRetryPolicyOf, type Env } from '../config.ts';
import { avroTypeOptions } from '../contracts/schemas.ts';
import { TOPICS, type TopicName } from '../contracts/types.ts';
import { createPool, type Pool } from '../db/pool.ts';
import { createAvroCodec, type AvroCodec } from '../kafka/avro.ts';
import { createKafkajsClient } from '../kafka/kafkajs.ts';
import type { KafkaClient, ProducerClient } from '../kafka/types.ts';
import { createLogger, type Logger } from '../logger.ts';
import { createMetrics, type Metrics } from '../metrics.ts';
import { createOutboxRelay, type OutboxRelay } from '../outbox/relay.ts';
import { startOpsServer, type ReadinessCheck } from '../runtime/http.ts';
import { createEventProducer, type EventProducer } from '../runtime/producer.ts';
import type { RetryPolicy } from '../runtime/retry.ts';
import { runCleanup, type CleanupStep } from '../runtime/shutdown.ts';
import { errorMessage } from '../errors.ts';

/** True while any partition of this process waits for an unavailable dependency. */
async function dependencyBlocked(metrics: Metrics): Promise<boolean> {
  const { values } = await metrics.dependencyBlockedPartitions.get();
  return values.some((sample) => sample.value > 0);
}

/**
 * What every service process shares: validated configuration, logger, metrics, the Kafka client and
 * an idempotent producer, the Avro codec, the Postgres pool and outbox relay, Redis, the ops HTTP
 * listener, and an ordered shutdown. A service's `main.ts` builds one of these, then its workers.
 */
export const serviceConfigShape = {
  ...commonConfigShape,
  ...databaseConfigShape,
  ...redisConfigShape,
  ...workerConfigShape,
  /** Prepended to every topic name (tests isolate themselves with one). */
  TOPIC_PREFIX: z.string().regex(/^[a-zA-Z0-9._-]*$/, 'expected letters, digits, ".", "_" or "-"').default(''),
  /** The Postgres schema holding the tables (tests isolate themselves with one). */
  DATABASE_SCHEMA: z
    .string()
    .regex(/^[a-z_][a-z0-9_]*$/, 'expected a lower-case SQL identifier')
    .default('public'),
  /** This process's name among its replicas (pod name in Kubernetes). */
  INSTANCE_ID: z.string().min(1).default(`${hostname()}:${process.pid}`),
};

export type ServiceConfig = z.infer<z.ZodObject<typeof serviceConfigShape>>;

export function loadServiceConfig(env: Env): ServiceConfig {
  const config = loadConfig(serviceConfigShape, env);
  workerRetryPolicyOf(config); // refuses inconsistent retry settings at start-up
  return config;
}

export type TopicNames = Readonly<Record<TopicName, string>>;

export function topicNames(prefix: string): TopicNames {
  return Object.fromEntries(TOPICS.map((topic) => [topic, `${prefix}${topic}`])) as Record<TopicName, string>;
}

export interface ServiceContextOptions {
  readonly service: string;
  readonly config: ServiceConfig;
  /** Open a Postgres pool and run the outbox relay. */
  readonly database?: boolean;
  readonly redis?: boolean;
  /** Serve /livez, /readyz and /metrics (off when several services share one process). */
  readonly opsServer?: boolean;
  readonly logger?: Logger;
  readonly metrics?: Metrics;
}

export interface ServiceContext {
  readonly service: string;
  readonly config: ServiceConfig;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly kafka: KafkaClient;
  readonly producer: ProducerClient;
  readonly codec: AvroCodec;
  readonly events: EventProducer;
  readonly topics: TopicNames;
  /** The retries of this process's workers (`WORKER_*` settings): pass it as `createWorker`'s `retry`. */
  readonly workerRetry: RetryPolicy;
  /** Present when the service uses Postgres. */
  readonly pool: Pool | undefined;
  readonly relay: OutboxRelay | undefined;
  readonly redis: Redis | undefined;
  /** Readiness checks of what this context opened (Kafka, Postgres, Redis). */
  readonly checks: ReadinessCheck[];
  /** Registers a cleanup step; steps run in reverse order of registration. */
  onShutdown(step: CleanupStep): void;
  /** Starts the ops listener when enabled; `accepting` turns false during the drain. */
  startOps(extraChecks?: readonly ReadinessCheck[]): Promise<void>;
  /** Runs every cleanup step (each even if another fails); returns the failures. */
  shutdown(): Promise<string[]>;
}

export async function createServiceContext(options: ServiceContextOptions): Promise<ServiceContext> {
  const { config, service } = options;
  const logger = options.logger ?? createLogger(service, config.LOG_LEVEL);
  const metrics = options.metrics ?? createMetrics(service);
  const steps: CleanupStep[] = [];
  const onShutdown = (step: CleanupStep) => void steps.unshift(step);
  let accepting = true;

  const kafka = createKafkajsClient({ clientId: `${config.KAFKA_CLIENT_ID}-${service}`, brokers: config.KAFKA_BROKERS, tls: kafkaTlsOf(config), logger });
  const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
  const producer = kafka.producer();
  await producer.connect();
  onShutdown(['producer', () => producer.disconnect()]);
  const checks: ReadinessCheck[] = [['kafka', () => kafka.ping(3_000)]];

  let pool: Pool | undefined;
  let relay: OutboxRelay | undefined;
  if (options.database) {
    const database = createPool({
      connectionString: config.DATABASE_URL,
      max: config.DATABASE_POOL_MAX,
      schema: config.DATABASE_SCHEMA,
      applicationName: `agent-manager-${service}`,
      onIdleError: (error) => logger.warn({ err: error.message }, 'an idle database connection dropped; it is replaced on the next use'),
    });
    pool = database;
    onShutdown(['database', () => database.end()]);
    checks.push(['postgres', async () => (await database.query('SELECT 1')).rowCount === 1]);
    const outboxRelay = createOutboxRelay({ pool: database, databaseUrl: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, producer, logger, metrics });
    relay = outboxRelay;
    await outboxRelay.start();
    onShutdown(['outbox relay', () => outboxRelay.stop()]);
  }

  let redis: Redis | undefined;
  if (options.redis) {
    // BullMQ needs maxRetriesPerRequest null on the connections it blocks on.
    const client = new Redis(config.REDIS_URL, { maxRetriesPerRequest: null, lazyConnect: false });
    redis = client;
    // QUIT waits in the offline queue while Redis is down (maxRetriesPerRequest null): cut the
    // connection instead when it is not up, so a drain during an outage does not hang.
    onShutdown(['redis', async () => void (client.status === 'ready' ? await client.quit() : client.disconnect())]);
    // Not ready while disconnected (a PING would only wait in the offline queue).
    checks.push(['redis', async () => client.status === 'ready' && (await client.ping()) === 'PONG']);
  }

  return {
    service,
    config,
    logger,
    metrics,
    kafka,
    producer,
    codec,
    events: createEventProducer(producer, codec),
    topics: topicNames(config.TOPIC_PREFIX),
    workerRetry: workerRetryPolicyOf(config),
    pool,
    relay,
    redis,
    checks,
    onShutdown,
    async startOps(extraChecks = []) {
      if (options.opsServer === false) return;
      const ops = await startOpsServer({
        port: config.HTTP_PORT,
        host: config.HTTP_HOST,
        registry: metrics.registry,
        accepting: () => accepting,
        // Not ready while a worker holds a partition for a dependency that is down (the gauge says which).
        checks: [...checks, ...extraChecks, ['dependencies', async () => !(await dependencyBlocked(metrics))]],
        onCheckError: (name, error) => logger.warn({ check: name, err: errorMessage(error) }, 'readiness check failed'),
      });
      logger.info({ port: ops.port }, 'ops listener on /livez /readyz /metrics');
      // Closed last (not first, as its registration would have it): /readyz answers "draining" and
      // /metrics stays scrapeable for the whole drain.
      steps.push(['ops listener', () => ops.close()]);
    },
    async shutdown() {
      accepting = false;
      return runCleanup(steps, config.SHUTDOWN_GRACE_MS, logger);
    },
  };
}
