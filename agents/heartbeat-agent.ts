/**
 * The reference agent: does nothing but heartbeat. It is what the `local` allocator driver runs by
 * default (`node agents/heartbeat-agent.ts`, Node 24) and what a template-less agent image runs.
 *
 * Environment (validated at start-up; a bad value exits 2 with one JSON line naming it):
 *   AGENT_ID               required
 *   AGENT_INSTANCE_ID      default `<hostname>:<pid>`
 *   AGENT_GENERATION, AGENT_ATTEMPT   the start fence, logged only
 *   KAFKA_BROKERS, SCHEMA_REGISTRY_URL   required (the provisioner passes its own)
 *   KAFKA_SECURITY_PROTOCOL (default ssl), KAFKA_SSL_CA(_FILE), KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE
 *                          the agent's own credentials (the provisioner passes the agents' principal,
 *                          which may only write heartbeats); `vault:` references need VAULT_ADDR/TOKEN
 *   HEARTBEAT_TOPIC        default `agent-heartbeats`
 *   HEARTBEAT_INTERVAL_MS  default 2000
 *   AGENT_EXIT_AFTER_MS    tests: exit with code 1 after this long (a crash)
 *   AGENT_IGNORE_SIGTERM   tests: `true` to ignore SIGTERM (only SIGKILL ends it)
 *   LOG_LEVEL              default info
 *
 * Once heartbeat #0 is acknowledged it tells its supervisor (when started with an IPC channel):
 * `{ type: 'ready', instanceId }`, then closes the channel so nothing ties it to its parent. If the
 * channel closes before that (the supervisor died), it exits 1. SIGTERM or SIGINT stop the
 * heartbeater (its last heartbeat says `stopping`) and exit 0. Logs: one JSON line per event on stdout.
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { createAgentHeartbeater, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TOPIC } from '../lib/agent-sdk/index.ts';
import { configFields, kafkaConfigShape, kafkaTlsOf, loadConfig, type Env, type KafkaTls } from '../lib/config.ts';
import { loadServiceEnv } from '../lib/secrets.ts';
import { errorCode, errorMessage } from '../lib/errors.ts';
import { createLogger } from '../lib/logger.ts';

const SHUTDOWN_TIMEOUT_MS = 10_000;

function loadAgentConfig(env: Env) {
  return loadConfig(
    {
      AGENT_ID: z.string().min(1, 'expected the agent id'),
      AGENT_INSTANCE_ID: z.string().min(1).default(`${hostname()}:${process.pid}`),
      AGENT_GENERATION: z.coerce.number().int().min(0).optional(),
      AGENT_ATTEMPT: z.coerce.number().int().min(0).optional(),
      ...kafkaConfigShape,
      SCHEMA_REGISTRY_URL: configFields.url(),
      HEARTBEAT_TOPIC: z.string().min(1).default(DEFAULT_HEARTBEAT_TOPIC),
      HEARTBEAT_INTERVAL_MS: configFields.positiveInt(DEFAULT_HEARTBEAT_INTERVAL_MS),
      AGENT_EXIT_AFTER_MS: z.coerce.number().int('expected an integer').positive('expected a positive number of ms').optional(),
      AGENT_IGNORE_SIGTERM: configFields.boolean(false),
      LOG_LEVEL: configFields.logLevel,
    },
    env,
  );
}

let config: ReturnType<typeof loadAgentConfig>;
let tls: KafkaTls | undefined;
try {
  // Credentials from files (`<NAME>_FILE`) or Vault, like a service's.
  config = loadAgentConfig(await loadServiceEnv(process.env));
  tls = kafkaTlsOf(config);
} catch (error) {
  createLogger('heartbeat-agent').fatal({ code: errorCode(error), err: errorMessage(error) }, 'invalid configuration');
  process.exit(2);
}

const log = createLogger('heartbeat-agent', config.LOG_LEVEL).child({
  agentId: config.AGENT_ID,
  instanceId: config.AGENT_INSTANCE_ID,
  generation: config.AGENT_GENERATION ?? null,
  attempt: config.AGENT_ATTEMPT ?? null,
});

// kafkajs warns on every start that its default partitioner changed in 2.0; keys hash the same for us.
process.env.KAFKAJS_NO_PARTITIONER_WARNING ??= '1';

const heartbeater = createAgentHeartbeater({
  agentId: config.AGENT_ID,
  instanceId: config.AGENT_INSTANCE_ID,
  brokers: config.KAFKA_BROKERS,
  tls,
  registryUrl: config.SCHEMA_REGISTRY_URL,
  topic: config.HEARTBEAT_TOPIC,
  intervalMs: config.HEARTBEAT_INTERVAL_MS,
  logger: log,
});

let stopping = false;
async function shutdown(signal: NodeJS.Signals): Promise<void> {
  if (config.AGENT_IGNORE_SIGTERM && signal === 'SIGTERM') {
    log.warn({ signal }, 'ignoring SIGTERM (AGENT_IGNORE_SIGTERM)');
    return;
  }
  if (stopping) {
    log.warn({ signal }, 'second signal: exiting without flushing');
    process.exit(130);
  }
  stopping = true;
  log.info({ signal }, 'stopping');
  const timeout = setTimeout(() => {
    log.error({ timeoutMs: SHUTDOWN_TIMEOUT_MS }, 'heartbeater did not stop in time; exiting');
    process.exit(1);
  }, SHUTDOWN_TIMEOUT_MS);
  timeout.unref();
  await heartbeater.stop();
  log.info({ sequence: heartbeater.sequence }, 'stopped');
  process.exit(0);
}
process.on('SIGTERM', (signal) => void shutdown(signal));
process.on('SIGINT', (signal) => void shutdown(signal));

if (config.AGENT_EXIT_AFTER_MS !== undefined) {
  const exitAfter = config.AGENT_EXIT_AFTER_MS;
  setTimeout(() => {
    log.error({ afterMs: exitAfter }, 'simulated crash (AGENT_EXIT_AFTER_MS): exiting with code 1');
    process.exit(1);
  }, exitAfter).unref();
}

// Started by a supervisor (the local driver) that dies before we said ready: it may not have
// recorded us, and no other can ever hear our ready (the channel is the only way), so we would run
// unknown beside the instance the next provisioner starts. Exit instead.
let ready = false;
if (process.send !== undefined) {
  process.once('disconnect', () => {
    if (ready || stopping) return;
    log.error('the supervisor went away before this agent was ready; exiting');
    process.exit(1);
  });
}

log.info({ topic: config.HEARTBEAT_TOPIC, intervalMs: config.HEARTBEAT_INTERVAL_MS }, 'starting');
try {
  await heartbeater.start();
} catch (error) {
  // Only a stop before the first acknowledgement gets here; shutdown() exits.
  log.info({ code: errorCode(error), err: errorMessage(error) }, 'start abandoned');
}

if (!stopping) {
  ready = true;
  log.info({ sequence: heartbeater.sequence }, 'ready: first heartbeat acknowledged');
  if (process.send !== undefined && process.connected) {
    // Close the channel once the message is written: the agent must not stay tied to its parent.
    process.send({ type: 'ready', instanceId: config.AGENT_INSTANCE_ID }, undefined, {}, (error) => {
      if (error) log.warn({ err: errorMessage(error) }, 'could not tell the parent it is ready');
      if (process.connected) process.disconnect();
    });
  }
}
