import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka } from 'kafkajs';
import { aclPlan, deleteAcls } from '../../lib/contracts/acls.ts';
import pg from 'pg';
import { avroTypeOptions } from '../../lib/contracts/schemas.ts';
import { createAvroCodec, type AvroCodec } from '../../lib/kafka/avro.ts';
import { createLogger } from '../../lib/logger.ts';
import { bootstrapFleet } from '../../lib/service/bootstrap.ts';
import { KernelClient, StatusWatcher } from '../../dev/kernel/client.ts';
import { loadServiceConfig, topicNames, type TopicNames } from '../../lib/service/context.ts';
import { brokers, testEnv, testKafkaConfig, testTls, uniqueName } from './stack.ts';

/**
 * A whole fleet's isolated world for one test file: its own topic prefix (topics, DLQs and schema
 * subjects), Postgres schema, Redis key prefix and agents folder, all removed by `teardown`.
 */
export interface FleetWorld {
  readonly env: Record<string, string>;
  readonly topics: TopicNames;
  readonly codec: AvroCodec;
  readonly stateDir: string;
  readonly schema: string;
  teardown(): Promise<void>;
}

/** Awaits `work`, failing with its name after `ms`: a hung set-up step says which one it was. */
export async function within<T>(what: string, ms: number, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export async function createFleetWorld(name: string, extraEnv: Record<string, string> = {}): Promise<FleetWorld> {
  const prefix = `${uniqueName(name)}.`;
  const schema = uniqueName(name).replace(/[^a-z0-9_]/g, '_');
  const stateDir = mkdtempSync(join(tmpdir(), `${name}-agents-`));
  const env: Record<string, string> = {
    ...testEnv(),
    TOPIC_PREFIX: prefix,
    TOPIC_PARTITIONS: '4',
    DATABASE_SCHEMA: schema,
    HTTP_PORT: '0',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    PROVISIONER_STATE_DIR: stateDir,
    RECONCILE_INTERVAL_MS: '1000',
    RECONCILE_STUCK_AFTER_MS: '3000',
    SAFE_MODE_POLL_MS: '300',
    LEASE_DURATION_MS: '3000',
    LEASE_RENEW_MS: '1000',
    STOP_GRACE_MS: '3000',
    AGENT_HEARTBEAT_INTERVAL_MS: '1000',
    // Dozens of agent processes booting on a loaded 2-core machine can take a while: a slow boot
    // is not what these tests are about, so it must not count as a failed start.
    START_TIMEOUT_MS: '120000',
    AGENT_READY_TIMEOUT_MS: '120000',
    SHUTDOWN_GRACE_MS: '15000',
    ...extraEnv,
  };
  const config = loadServiceConfig(env);
  await within('bootstrap (migrate, topics, schemas)', 150_000, bootstrapFleet(process.cwd(), config, env, createLogger('bootstrap', 'silent')));
  const topics = topicNames(prefix);
  return {
    env,
    topics,
    codec: createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', avroOptions: avroTypeOptions() }),
    stateDir,
    schema,
    async teardown() {
      killAgents(stateDir);
      rmSync(stateDir, { recursive: true, force: true });
      const client = new pg.Client({ connectionString: env.DATABASE_URL });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
      await client.end();
      const admin = new Kafka(testKafkaConfig('fleet-teardown')).admin();
      await admin.connect();
      const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
      if (mine.length > 0) await admin.deleteTopics({ topics: mine }).catch(() => undefined);
      // The bootstrap granted every role its rights on this prefix's topics: take them back.
      await deleteAcls(admin, aclPlan({ prefix })).catch(() => undefined);
      await admin.disconnect();
    },
  };
}

/** Kills every agent process a local driver left in `stateDir` (a failed test must not leak them). */
export function killAgents(stateDir: string): void {
  let entries: string[];
  try {
    entries = readdirSync(stateDir);
  } catch {
    return;
  }
  for (const entry of entries) {
    try {
      const state = JSON.parse(readFileSync(join(stateDir, entry, 'state.json'), 'utf8')) as { pid?: number };
      if (typeof state.pid === 'number') process.kill(-state.pid, 'SIGKILL');
    } catch {
      // not running, or no state file
    }
  }
}

/** The scripted Kernel, as the `kernel` principal (its ACLs on the world's prefix come from the bootstrap). */
export function connectKernel(world: FleetWorld): Promise<KernelClient> {
  return within('kernel producer connect', 30_000, KernelClient.connect({ brokers: brokers(), tls: testTls('kernel'), topics: world.topics, codec: world.codec }));
}

/** Watches the world's `agent-status` as the Kernel (its groups are `<prefix>kernel*`). */
export function watchStatus(world: FleetWorld): Promise<StatusWatcher> {
  const groupId = uniqueName(`${world.env.TOPIC_PREFIX ?? ''}kernel-status`);
  return within('status watcher start', 60_000, StatusWatcher.start({ brokers: brokers(), tls: testTls('kernel'), topics: world.topics, codec: world.codec, groupId }));
}

export type { KernelClient, StatusWatcher };
