import { join } from 'node:path';
import { z } from 'zod';
import { configFields, loadConfig, type Env } from '../../lib/config.ts';
import type { AgentCommand } from '../../lib/contracts/types.ts';
import { readSafeMode, watchSafeMode } from '../../lib/control/safe-mode.ts';
import { permanentError } from '../../lib/errors.ts';
import { createKubernetesLease } from '../../lib/leader/kubernetes-lease.ts';
import { createPostgresLease } from '../../lib/leader/postgres-lease.ts';
import { recordTerm } from '../../lib/leader/fence.ts';
import type { LeaderElector } from '../../lib/leader/types.ts';
import { createBatchWorker } from '../../lib/runtime/batch-worker.ts';
import type { ServiceContext } from '../../lib/service/context.ts';
import { createLifecycleApplier, type LifecycleApplier } from './apply.ts';
import { createDriver, defaultInstance, INSTANCE_PATTERN } from './drivers/index.ts';
import type { AllocatorDriver } from './drivers/types.ts';
import { handleCommandBatch, validateAgentCommand, type CommandBatchDeps } from './handler.ts';
import type { RetryPolicy } from './lifecycle.ts';
import { createPolicyDecider, loadLocalPolicyFile } from './policy-client.ts';
import { createReconciler } from './reconciler.ts';
import { createBullmqTimers } from './timers.ts';

/** Provisioner settings (environment variables), validated at start-up. */
export const provisionerConfigShape = {
  PROVISIONER_DRIVER: z.enum(['local', 'kubernetes', 'simulated'], 'expected local, kubernetes or simulated').default('local'),
  /** The local driver's folder of agents (pid and log files). */
  PROVISIONER_STATE_DIR: z.string().min(1).default(join(process.cwd(), '.stack', 'agents')),
  PROVISIONER_CONCURRENCY: configFields.positiveInt(4),
  /** SentinelNet (any OPA-compatible Data API). Unset: the local policy file is evaluated in-process. */
  SENTINELNET_URL: z.url('expected the policy decision point base URL, e.g. http://127.0.0.1:18181').optional(),
  SENTINELNET_POLICY_PATH: z.string().regex(/^[a-zA-Z0-9_/]+$/, 'expected a data path such as agentmanager/provisioning').default('agentmanager/provisioning'),
  SENTINELNET_TIMEOUT_MS: configFields.positiveInt(2_000),
  POLICY_FILE: z.string().min(1).default(join(process.cwd(), 'policies', 'local-policy.json')),
  START_TIMEOUT_MS: configFields.positiveInt(30_000),
  MAX_START_ATTEMPTS: configFields.positiveInt(3),
  RETRY_BASE_DELAY_MS: configFields.positiveInt(1_000),
  RETRY_MAX_DELAY_MS: configFields.positiveInt(30_000),
  STOP_GRACE_MS: configFields.nonNegativeInt(10_000),
  RESTART_POLICY: z.enum(['always', 'on-failure', 'never'], 'expected always, on-failure or never').default('on-failure'),
  MAX_RESTARTS: configFields.nonNegativeInt(3),
  RECONCILE_INTERVAL_MS: configFields.positiveInt(5_000),
  RECONCILE_STUCK_AFTER_MS: configFields.positiveInt(15_000),
  SAFE_MODE_POLL_MS: configFields.positiveInt(1_000),
  LEADER_ELECTION: z.enum(['postgres', 'kubernetes'], 'expected postgres or kubernetes').default('postgres'),
  /** Namespace of the agents' Pods and of the Lease (in a cluster: the service account's namespace). */
  KUBERNETES_NAMESPACE: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'expected a Kubernetes namespace name').optional(),
  /**
   * The deployment (release) this provisioner belongs to: its agents carry it (Pod label
   * `app.kubernetes.io/instance`, the local folders' `instance` file) and only they are watched,
   * adopted and swept as orphans. Default `<TOPIC_PREFIX>agent-manager`.
   */
  AGENT_MANAGER_INSTANCE: z.string().regex(INSTANCE_PATTERN, 'expected a Kubernetes label value (letters, digits, ".", "_", "-"; at most 63)').optional(),
  LEASE_DURATION_MS: configFields.positiveInt(15_000),
  LEASE_RENEW_MS: configFields.positiveInt(5_000),
  /** How often local agents heartbeat. */
  AGENT_HEARTBEAT_INTERVAL_MS: configFields.positiveInt(2_000),
  AGENT_READY_TIMEOUT_MS: configFields.positiveInt(30_000),
  /** The simulated driver's delay before an agent reports STARTED (benchmarks, timeout tests). */
  SIMULATED_START_DELAY_MS: configFields.nonNegativeInt(0),
  /**
   * The agents' own Kafka credentials (PEM files the agents read), not the provisioner's: their
   * principal may only write heartbeats. Required with KAFKA_SECURITY_PROTOCOL=ssl and the local
   * driver. The CA defaults to the provisioner's own KAFKA_SSL_CA.
   */
  AGENT_KAFKA_SSL_CERT_FILE: z.string().trim().min(1).optional(),
  AGENT_KAFKA_SSL_KEY_FILE: z.string().trim().min(1).optional(),
  AGENT_KAFKA_SSL_CA_FILE: z.string().trim().min(1).optional(),
};

export type ProvisionerConfig = z.infer<z.ZodObject<typeof provisionerConfigShape>>;

export interface RunningProvisioner {
  readonly applier: LifecycleApplier;
  readonly driver: AllocatorDriver;
  readonly leader: LeaderElector;
}

export interface ProvisionerOptions {
  /** Consumer group; default `<prefix>agent-manager-provisioner`. */
  readonly groupId?: string;
}

export function retryPolicyOf(config: ProvisionerConfig): RetryPolicy {
  return {
    startTimeoutMs: config.START_TIMEOUT_MS,
    maxStartAttempts: config.MAX_START_ATTEMPTS,
    baseDelayMs: config.RETRY_BASE_DELAY_MS,
    maxDelayMs: config.RETRY_MAX_DELAY_MS,
    multiplier: 2,
    stopGraceMs: config.STOP_GRACE_MS,
  };
}

/** Wires the provisioner into a service context: driver, policy, timers, worker, safe mode, leader, reconciler. */
export async function startProvisioner(ctx: ServiceContext, config: ProvisionerConfig, options: ProvisionerOptions = {}): Promise<RunningProvisioner> {
  const { pool, redis, logger } = ctx;
  if (!pool || !redis) throw permanentError('SERVICE_WIRING', 'the provisioner needs a context with Postgres and Redis');
  const prefix = ctx.config.TOPIC_PREFIX;
  const retryPolicy = retryPolicyOf(config);

  // The driver and the timers report to the applier, which needs both: a late-bound reference.
  const late: { applier?: LifecycleApplier } = {};
  const driver = createDriver(config.PROVISIONER_DRIVER, {
    logger,
    onEvent: (agentId, event) => late.applier?.onDriverEvent(agentId, event),
    stateDir: config.PROVISIONER_STATE_DIR,
    instance: config.AGENT_MANAGER_INSTANCE ?? defaultInstance(prefix),
    readyTimeoutMs: config.AGENT_READY_TIMEOUT_MS,
    agentEnv: {
      KAFKA_BROKERS: ctx.config.KAFKA_BROKERS.join(','),
      ...agentKafkaEnv(ctx.config, config),
      SCHEMA_REGISTRY_URL: ctx.config.SCHEMA_REGISTRY_URL,
      HEARTBEAT_TOPIC: ctx.topics['agent-heartbeats'],
      HEARTBEAT_INTERVAL_MS: String(config.AGENT_HEARTBEAT_INTERVAL_MS),
      LOG_LEVEL: 'warn',
    },
    simulated: { startDelayMs: config.SIMULATED_START_DELAY_MS },
    kubernetes: config.KUBERNETES_NAMESPACE ? { namespace: config.KUBERNETES_NAMESPACE } : {},
  });
  ctx.onShutdown(['allocator driver', () => driver.close()]);

  const policy = createPolicyDecider({
    ...(config.SENTINELNET_URL ? { url: config.SENTINELNET_URL } : {}),
    path: config.SENTINELNET_POLICY_PATH,
    timeoutMs: config.SENTINELNET_TIMEOUT_MS,
    localPolicy: loadLocalPolicyFile(config.POLICY_FILE),
  });

  const timers = createBullmqTimers({
    connection: redis,
    prefix: prefix ? `agent-manager:${prefix}` : 'agent-manager',
    logger,
    onDue: async (agentId, input) => {
      await late.applier?.apply(agentId, input, { actor: 'provisioner/timer' });
    },
  });
  ctx.onShutdown(['timers', () => timers.close()]);
  const built = createLifecycleApplier({
    pool,
    codec: ctx.codec,
    topics: ctx.topics,
    logger,
    driver,
    policy,
    timers,
    retryPolicy,
    restartPolicy: { mode: config.RESTART_POLICY, maxRestarts: config.MAX_RESTARTS },
    metrics: ctx.metrics,
  });
  late.applier = built;

  // A Kafka batch of commands is applied in one transaction (per round; see applyBatch).
  const worker = createBatchWorker<AgentCommand, CommandBatchDeps>(
    {
      service: ctx.service,
      topics: [ctx.topics['agent-commands']],
      groupId: options.groupId ?? `${prefix}agent-manager-provisioner`,
      handler: handleCommandBatch,
      validate: (value) => validateAgentCommand(value),
      deps: { applier: built, producer: ctx.producer, service: ctx.service, maxAttempts: ctx.workerRetry.maxAttempts, metrics: ctx.metrics },
      concurrency: config.PROVISIONER_CONCURRENCY,
      retry: ctx.workerRetry,
      // The raw headers carry each command's traceparent; the raw bytes are what a dead letter keeps.
      rawRecords: true,
    },
    { kafka: ctx.kafka, codec: ctx.codec, producer: ctx.producer, logger, metrics: ctx.metrics },
  );

  // Safe mode is read before the first fetch, so no command (and no due timer) slips through at start-up.
  const SAFE_MODE = 'safe-mode';
  const safeAtStart = (await readSafeMode(pool)).enabled;
  if (safeAtStart) worker.pauseAll(SAFE_MODE);
  const safeMode = watchSafeMode(pool, {
    intervalMs: config.SAFE_MODE_POLL_MS,
    logger,
    onChange: async (state) => {
      ctx.metrics.safeMode.set(state.enabled ? 1 : 0);
      if (state.enabled) {
        worker.pauseAll(SAFE_MODE);
        await timers.pause();
      } else {
        worker.resumeAll(SAFE_MODE);
        timers.resume();
      }
    },
  });
  ctx.onShutdown(['safe mode watcher', async () => safeMode.stop()]);

  const leaseName = `${prefix}provisioner-reconciler`;
  const leaseTiming = { leaseDurationMs: config.LEASE_DURATION_MS, renewIntervalMs: config.LEASE_RENEW_MS };
  const leader =
    config.LEADER_ELECTION === 'kubernetes'
      ? createKubernetesLease({
          namespace: config.KUBERNETES_NAMESPACE ?? 'default',
          name: `agent-manager-${leaseName}`.replace(/[^a-z0-9.-]/g, '-'),
          identity: ctx.config.INSTANCE_ID,
          logger,
          timing: leaseTiming,
          // The term's token goes to Postgres too, where the reconciler's repairs check it.
          fenceLease: leaseName,
          recordTerm: (fence) => recordTerm(pool, fence, ctx.config.INSTANCE_ID, leaseTiming.leaseDurationMs),
        })
      : createPostgresLease({ pool, name: leaseName, identity: ctx.config.INSTANCE_ID, logger, timing: leaseTiming });
  const reconciler = createReconciler({
    pool,
    driver,
    applier: built,
    logger,
    retryPolicy,
    stuckAfterMs: config.RECONCILE_STUCK_AFTER_MS,
    intervalMs: config.RECONCILE_INTERVAL_MS,
    // Repairs are apply operations too: none in safe mode. Each carries the term's fence.
    authority: () => (safeMode.current() ? null : leader.fence()),
  });

  // Cleanup runs in reverse order of registration: stop taking commands, repairs, due timers and
  // driver reports; let the inputs in flight settle; then release the lease, the timers' queue and
  // the driver (agents keep running: the next provisioner adopts them and repairs what was missed).
  ctx.onShutdown(['leader lease', () => leader.stop()]);
  ctx.onShutdown(['lifecycle inputs in flight', () => built.idle()]);
  ctx.onShutdown([
    'timer delivery and driver reports',
    async () => {
      built.close();
      await timers.stopDelivering();
    },
  ]);
  ctx.onShutdown(['reconciler', () => reconciler.stop()]);
  ctx.onShutdown(['agent-commands worker', () => worker.stop()]);
  if (!safeAtStart) timers.start();
  leader.start();
  reconciler.start();
  await worker.start();
  logger.info({ driver: driver.name, policy: config.SENTINELNET_URL ? 'remote' : 'local' }, 'provisioner running');

  return {
    applier: built,
    driver,
    leader,
  };
}

export function loadProvisionerConfig(env: Env): ProvisionerConfig {
  const config = loadConfig(provisionerConfigShape, env);
  const missing = ['AGENT_KAFKA_SSL_CERT_FILE', 'AGENT_KAFKA_SSL_KEY_FILE'].filter((name) => config[name as 'AGENT_KAFKA_SSL_CERT_FILE'] === undefined);
  if (config.PROVISIONER_DRIVER === 'local' && (env.KAFKA_SECURITY_PROTOCOL ?? 'ssl') === 'ssl' && missing.length > 0) {
    throw permanentError('CONFIG_INVALID', `invalid configuration:\n  ${missing.join(', ')}: required with the local driver and KAFKA_SECURITY_PROTOCOL=ssl (the agents' own Kafka certificate and key)`);
  }
  return config;
}

/** How the agents connect to Kafka: the provisioner's protocol and CA, the agents' own certificate. */
function agentKafkaEnv(service: ServiceContext['config'], config: ProvisionerConfig): Record<string, string> {
  if (service.KAFKA_SECURITY_PROTOCOL === 'plaintext') return { KAFKA_SECURITY_PROTOCOL: 'plaintext' };
  const env: Record<string, string> = { KAFKA_SECURITY_PROTOCOL: 'ssl' };
  if (config.AGENT_KAFKA_SSL_CA_FILE) env.KAFKA_SSL_CA_FILE = config.AGENT_KAFKA_SSL_CA_FILE;
  else if (service.KAFKA_SSL_CA) env.KAFKA_SSL_CA = service.KAFKA_SSL_CA;
  if (config.AGENT_KAFKA_SSL_CERT_FILE) env.KAFKA_SSL_CERT_FILE = config.AGENT_KAFKA_SSL_CERT_FILE;
  if (config.AGENT_KAFKA_SSL_KEY_FILE) env.KAFKA_SSL_KEY_FILE = config.AGENT_KAFKA_SSL_KEY_FILE;
  return env;
}
