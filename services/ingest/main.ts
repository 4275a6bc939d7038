/**
 * The ingest service's wiring: the `agent-requests` worker and, when TLS files are configured, the
 * HTTPS API for the Kernel, both on a `ServiceContext` (which must have the database).
 *
 * Environment (validated with `loadIngestOptions`):
 * - INGEST_IDENTITIES_FILE   identities and roles (default `config/identities.json`)
 * - INGEST_KNOWN_TEMPLATES   comma-separated template names a request may instantiate
 * - INGEST_CONCURRENCY       partitions processed at once (default 4)
 * - INGEST_TLS_CERT_FILE, INGEST_TLS_KEY_FILE, INGEST_TLS_CA_FILE   PEM files of the API: all three
 *   to serve it (the CA signs the clients' certificates), none to run without it
 * - INGEST_API_PORT (default 8443), INGEST_API_HOST (default 127.0.0.1)
 * - INGEST_API_BODY_LIMIT_BYTES (1 MiB), INGEST_API_CONNECTION_TIMEOUT_MS (60 s idle),
 *   INGEST_API_REQUEST_TIMEOUT_MS (30 s), INGEST_API_KEEP_ALIVE_TIMEOUT_MS (30 s),
 *   INGEST_API_RATE_LIMIT_MAX requests per identity per INGEST_API_RATE_LIMIT_WINDOW_MS (1200 per 60 s)
 */
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { configFields, loadConfig, type Env } from '../../lib/config.ts';
import type { AgentRequest } from '../../lib/contracts/types.ts';
import { errorCode, errorMessage, permanentError } from '../../lib/errors.ts';
import { createBatchWorker, type BatchWorker } from '../../lib/runtime/batch-worker.ts';
import { deadLetterRecord, dlqTopicOf } from '../../lib/runtime/dlq.ts';
import type { ServiceContext } from '../../lib/service/context.ts';
import { heartbeatKeyPrefix, readLastHeartbeat } from '../../lib/heartbeat/last-heartbeat.ts';
import type { Logger } from '../../lib/logger.ts';
import { buildApi, DEFAULT_API_LIMITS, type ApiLimits, type ApiTls, type IngestApi, type LastHeartbeatReader } from './api.ts';
import { loadIdentitiesConfig } from './authz.ts';
import { createIngestBatchHandler, validateAgentRequestRecord, type FailedRequest, type IngestDeps } from './handler.ts';

/** How long the API waits for Redis for an agent's last heartbeat, by default. */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 500;

/** Templates known when INGEST_KNOWN_TEMPLATES is not set. */
export const DEFAULT_KNOWN_TEMPLATES: readonly string[] = ['echo', 'support-assistant', 'research-assistant'];

const optionalFile = z
  .string()
  .optional()
  .transform((value) => (value === undefined || value.trim() === '' ? undefined : value.trim()));

/** Ingest's own environment variables (the ServiceContext's are `serviceConfigShape`). */
export const ingestConfigShape = {
  INGEST_IDENTITIES_FILE: z.string().min(1, 'expected the path of the identities JSON file').default(join(process.cwd(), 'config', 'identities.json')),
  INGEST_KNOWN_TEMPLATES: z
    .string()
    .default(DEFAULT_KNOWN_TEMPLATES.join(','))
    .transform((value) => value.split(',').map((t) => t.trim()).filter(Boolean)),
  INGEST_CONCURRENCY: configFields.positiveInt(4),
  INGEST_API_PORT: configFields.port(8443),
  INGEST_API_HOST: z.string().min(1).default('127.0.0.1'),
  INGEST_TLS_CERT_FILE: optionalFile,
  INGEST_TLS_KEY_FILE: optionalFile,
  INGEST_TLS_CA_FILE: optionalFile,
  INGEST_API_BODY_LIMIT_BYTES: configFields.positiveInt(DEFAULT_API_LIMITS.bodyLimitBytes),
  INGEST_API_CONNECTION_TIMEOUT_MS: configFields.positiveInt(DEFAULT_API_LIMITS.connectionTimeoutMs),
  INGEST_API_REQUEST_TIMEOUT_MS: configFields.positiveInt(DEFAULT_API_LIMITS.requestTimeoutMs),
  INGEST_API_KEEP_ALIVE_TIMEOUT_MS: configFields.positiveInt(DEFAULT_API_LIMITS.keepAliveTimeoutMs),
  INGEST_API_RATE_LIMIT_MAX: configFields.positiveInt(DEFAULT_API_LIMITS.rateLimitMax),
  INGEST_API_RATE_LIMIT_WINDOW_MS: configFields.positiveInt(DEFAULT_API_LIMITS.rateLimitWindowMs),
  INGEST_API_HEARTBEAT_TIMEOUT_MS: configFields.positiveInt(DEFAULT_HEARTBEAT_TIMEOUT_MS),
};

export type IngestConfig = z.infer<z.ZodObject<typeof ingestConfigShape>>;

export interface IngestApiOptions {
  readonly port: number;
  readonly host: string;
  readonly tlsCertFile: string;
  readonly tlsKeyFile: string;
  readonly tlsCaFile: string;
  /** Each one defaults to `DEFAULT_API_LIMITS`. */
  readonly limits?: Partial<ApiLimits>;
  /** Longest wait for Redis for a last heartbeat (default `DEFAULT_HEARTBEAT_TIMEOUT_MS`). */
  readonly heartbeatTimeoutMs?: number;
}

export interface IngestOptions {
  readonly identitiesFile: string;
  /** Default `DEFAULT_KNOWN_TEMPLATES`. */
  readonly knownTemplates?: readonly string[];
  /** The HTTPS API; not served when undefined. */
  readonly api?: IngestApiOptions | undefined;
  readonly concurrency?: number;
  /** Consumer group; default `<TOPIC_PREFIX>agent-manager-ingest`. */
  readonly groupId?: string;
}

export interface RunningIngest {
  readonly worker: BatchWorker;
  /** Where the API listens (the real port when 0 was asked for); undefined without the API. */
  readonly apiAddress: { readonly host: string; readonly port: number } | undefined;
  /** Stops the API and the worker (also registered with the context's shutdown; idempotent). */
  stop(): Promise<void>;
}

export function loadIngestConfig(env: Env): IngestConfig {
  const config = loadConfig(ingestConfigShape, env);
  const tls = { INGEST_TLS_CERT_FILE: config.INGEST_TLS_CERT_FILE, INGEST_TLS_KEY_FILE: config.INGEST_TLS_KEY_FILE, INGEST_TLS_CA_FILE: config.INGEST_TLS_CA_FILE };
  const set = Object.entries(tls).filter(([, v]) => v !== undefined).map(([k]) => k);
  if (set.length > 0 && set.length < 3) {
    const missing = Object.keys(tls).filter((k) => !set.includes(k));
    throw permanentError('CONFIG_INVALID', `invalid configuration:\n  ${missing.join(', ')}: required to serve the HTTPS API because ${set.join(', ')} ${set.length === 1 ? 'is' : 'are'} set (set all three, or none to run without the API)`);
  }
  return config;
}

export function ingestOptionsFromConfig(config: IngestConfig, cwd = process.cwd()): IngestOptions {
  const { INGEST_TLS_CERT_FILE: cert, INGEST_TLS_KEY_FILE: key, INGEST_TLS_CA_FILE: ca } = config;
  return {
    identitiesFile: resolve(cwd, config.INGEST_IDENTITIES_FILE),
    knownTemplates: config.INGEST_KNOWN_TEMPLATES,
    concurrency: config.INGEST_CONCURRENCY,
    api:
      cert !== undefined && key !== undefined && ca !== undefined
        ? {
            port: config.INGEST_API_PORT,
            host: config.INGEST_API_HOST,
            tlsCertFile: resolve(cwd, cert),
            tlsKeyFile: resolve(cwd, key),
            tlsCaFile: resolve(cwd, ca),
            heartbeatTimeoutMs: config.INGEST_API_HEARTBEAT_TIMEOUT_MS,
            limits: {
              bodyLimitBytes: config.INGEST_API_BODY_LIMIT_BYTES,
              connectionTimeoutMs: config.INGEST_API_CONNECTION_TIMEOUT_MS,
              requestTimeoutMs: config.INGEST_API_REQUEST_TIMEOUT_MS,
              keepAliveTimeoutMs: config.INGEST_API_KEEP_ALIVE_TIMEOUT_MS,
              rateLimitMax: config.INGEST_API_RATE_LIMIT_MAX,
              rateLimitWindowMs: config.INGEST_API_RATE_LIMIT_WINDOW_MS,
            },
          }
        : undefined,
  };
}

/** The options of `startIngest` from environment variables; throws CONFIG_INVALID naming each bad one. */
export function loadIngestOptions(env: Env): IngestOptions {
  return ingestOptionsFromConfig(loadIngestConfig(env));
}

function readPem(file: string, what: string, variable: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw permanentError('CONFIG_INVALID', `cannot read the API's ${what} ${file} (${variable}): ${errorMessage(error)}`, error, { file });
  }
}

export function readApiTls(api: IngestApiOptions): ApiTls {
  return {
    cert: readPem(api.tlsCertFile, 'certificate', 'INGEST_TLS_CERT_FILE'),
    key: readPem(api.tlsKeyFile, 'private key', 'INGEST_TLS_KEY_FILE'),
    ca: readPem(api.tlsCaFile, 'client CA certificate', 'INGEST_TLS_CA_FILE'),
  };
}

/** Starts the worker (and the API when configured) on `ctx`; cleanup is registered with `ctx.onShutdown`. */
export async function startIngest(ctx: ServiceContext, options: IngestOptions): Promise<RunningIngest> {
  const pool = ctx.pool;
  if (!pool) throw permanentError('CONFIG_INVALID', 'ingest needs the database: create its ServiceContext with database: true');
  const logger = ctx.logger.child({ component: 'ingest' });
  // Everything read from files fails here, before anything starts.
  const authz = loadIdentitiesConfig(options.identitiesFile);
  const tls = options.api ? readApiTls(options.api) : undefined;
  const deadLetter = async (topic: string, failed: readonly FailedRequest[]): Promise<void> => {
    const failedAt = new Date();
    const records = failed.map(({ record, error, attempts }) => deadLetterRecord(record, { code: errorCode(error), message: errorMessage(error), attempts, service: ctx.service, failedAt }));
    await ctx.producer.send(dlqTopicOf(topic), records);
    for (const { record, error, attempts } of failed) {
      const code = errorCode(error);
      ctx.metrics.recordsFailed.inc({ topic, code });
      ctx.metrics.recordsDeadLettered.inc({ topic, code });
      logger.warn({ topic, partition: record.partition, offset: record.offset, code, attempts, err: errorMessage(error) }, 'record dead-lettered');
    }
  };
  const deps: IngestDeps = {
    pool,
    codec: ctx.codec,
    topics: ctx.topics,
    authz,
    rules: { knownTemplates: options.knownTemplates ?? DEFAULT_KNOWN_TEMPLATES },
    metrics: ctx.metrics,
    maxAttempts: ctx.workerRetry.maxAttempts,
    deadLetter,
  };

  // A partition's batch is decided in one transaction (see handler.ts); raw records for the
  // traceparent header and the DLQ copies.
  const worker = createBatchWorker<AgentRequest, IngestDeps>(
    {
      service: ctx.service,
      topics: [ctx.topics['agent-requests']],
      groupId: options.groupId ?? `${ctx.config.TOPIC_PREFIX}agent-manager-ingest`,
      handler: createIngestBatchHandler(),
      validate: validateAgentRequestRecord,
      deps,
      concurrency: options.concurrency ?? 4,
      retry: ctx.workerRetry,
      rawRecords: true,
    },
    { kafka: ctx.kafka, codec: ctx.codec, producer: ctx.producer, logger, metrics: ctx.metrics },
  );

  let api: IngestApi | undefined;
  let apiAddress: RunningIngest['apiAddress'];
  const stopWorker = once(() => worker.stop());
  const stopApi = once(async () => {
    await api?.close();
  });
  try {
    await worker.start();
    ctx.onShutdown(['agent-requests worker', stopWorker]);
    if (options.api && tls) {
      const heartbeats = heartbeatStore(ctx.config.REDIS_URL, ctx.config.TOPIC_PREFIX, options.api.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS, logger);
      ctx.onShutdown(['ingest heartbeat reads (redis)', heartbeats.close]);
      api = buildApi({ tls, deps, logger, limits: options.api.limits, lastHeartbeat: heartbeats.read });
      await api.listen({ port: options.api.port, host: options.api.host });
      const address = api.server.address() as AddressInfo;
      apiAddress = { host: options.api.host, port: address.port };
      // Registered last, so it runs first: stop taking HTTP requests, then drain the worker.
      ctx.onShutdown(['ingest HTTPS API', stopApi]);
    }
  } catch (error) {
    await stopApi().catch(() => undefined);
    await stopWorker().catch(() => undefined);
    throw error;
  }
  logger.info({ topic: ctx.topics['agent-requests'], api: apiAddress ?? 'off', identities: options.identitiesFile }, 'ingest running');
  return {
    worker,
    apiAddress,
    async stop() {
      await stopApi();
      await stopWorker();
    },
  };
}

/**
 * The API's own Redis client for last heartbeats. Unlike the context's (which queues commands while
 * Redis is down, for BullMQ), it fails at once when disconnected and gives up on a command after
 * `timeoutMs`, so `GET /v1/agents/:id` answers without the heartbeat instead of waiting; and it is
 * no readiness check: ingest serves without Redis. It reconnects in the background.
 */
export function heartbeatStore(redisUrl: string, topicPrefix: string, timeoutMs: number, logger: Logger): { read: LastHeartbeatReader; close: () => Promise<void> } {
  const redis = new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: timeoutMs, connectTimeout: 5_000 });
  const keyPrefix = heartbeatKeyPrefix(topicPrefix);
  let down = false;
  redis.on('error', (error: Error) => {
    if (down) return;
    down = true;
    logger.warn({ err: errorMessage(error) }, 'Redis unreachable: GET /v1/agents/:id answers without the last heartbeat until it is back');
  });
  redis.on('ready', () => {
    if (!down) return;
    down = false;
    logger.info('Redis reachable again: last heartbeats are served');
  });
  return {
    read: (agentId) => readLastHeartbeat(redis, keyPrefix, agentId),
    async close() {
      if (redis.status === 'ready') await redis.quit();
      else redis.disconnect();
    },
  };
}

function once(step: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () => (running ??= step());
}
