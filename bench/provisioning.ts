// End-to-end provisioning with the simulated driver: requests produced on agent-requests → ingest →
// agent-commands → provisioner → RUNNING consumed from agent-status. Measures the saturation rate
// (a burst of INSTANTIATE requests) and the p50/p95 latency at half that rate, then, in the same run
// and on the same stack, the floor of the design (one transaction per request batch, relay,
// consume) and prints provisioning/ceiling, the ratio of the two saturation rates.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import pg from 'pg';
import { startServices } from '../cli/services.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import type { AgentRequest, AgentStatus } from '../lib/contracts/types.ts';
import { withTransaction } from '../lib/db/pool.ts';
import { enqueueEvents, type OutboxEvent } from '../lib/outbox/outbox.ts';
import { createBatchWorker } from '../lib/runtime/batch-worker.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { kernelTlsFromEnv, KernelClient, StatusWatcher } from '../dev/kernel/client.ts';
import { kafkaTlsOf } from '../lib/config.ts';
import { aclPlan, deleteAcls } from '../lib/contracts/acls.ts';
import { kafkajsSsl } from '../lib/kafka/kafkajs.ts';
import { createLogger } from '../lib/logger.ts';
import { bootstrapFleet } from '../lib/service/bootstrap.ts';
import { createServiceContext, loadServiceConfig, topicNames, type ServiceConfig } from '../lib/service/context.ts';
import { startBenchPostgres, type BenchPostgres } from './own-postgres.ts';
import { localStackEnv, stackCredentials } from '../dev/stack/endpoints.ts';

function request(key: string): AgentRequest {
  return {
    requestId: randomUUID(),
    idempotencyKey: key,
    action: 'INSTANTIATE',
    agentId: null,
    spec: { template: null, image: 'registry.internal/agents/echo:1.0', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } },
    division: 'bench',
    region: 'local',
    labels: {},
    requestedBy: 'kernel',
    createdAt: new Date(),
  };
}

/** `agent-manager run ingest` and `run provisioner` as child processes, each as its own Kafka principal; resolves once both run. */
async function startServiceProcesses(env: Record<string, string | undefined>, cpuProfDir: string | undefined): Promise<{ shutdown(): Promise<string[]> }> {
  const profile = cpuProfDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', cpuProfDir];
  const children = (['ingest', 'provisioner'] as const).map((service) =>
    spawn(process.execPath, [...profile, join(process.cwd(), 'bin', 'agent-manager.js'), 'run', service], {
      env: { ...env, ...stackCredentials(process.cwd(), service), LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve, reject) => {
          let seen = '';
          child.stdout?.on('data', (chunk: Buffer) => {
            seen = (seen + chunk.toString()).slice(-4096);
            if (seen.includes('running; SIGTERM')) resolve();
          });
          child.once('exit', (code) => reject(new Error(`a service exited with ${code} before running`)));
        }),
    ),
  );
  for (const child of children) child.stdout?.resume();
  return {
    async shutdown() {
      await Promise.all(children.map((child) => new Promise((resolve) => child.once('exit', resolve).kill('SIGTERM'))));
      return [];
    },
  };
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Follows a pipeline's `agent-status`: which agent a request made, and when it was first seen RUNNING. */
class Tracker {
  readonly failures: string[] = [];
  readonly runningAt = new Map<string, number>();
  // Indexes the watcher's events by request as they arrive (a scan per request would be quadratic).
  readonly agentOf = new Map<string, string>();

  constructor(status: StatusWatcher) {
    status.onStatus((e) => {
      if (e.requestId) this.agentOf.set(e.requestId, e.agentId);
      if (e.state === 'RUNNING' && !this.runningAt.has(e.agentId)) this.runningAt.set(e.agentId, Date.now());
      if (e.state === 'REJECTED' || e.state === 'FAILED') this.failures.push(`${e.agentId}: ${e.state}: ${e.reason ?? ''}`);
    });
  }

  running(requestId: string): number | undefined {
    const agent = this.agentOf.get(requestId);
    return agent === undefined ? undefined : this.runningAt.get(agent);
  }

  async waitRunning(ids: readonly string[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const done = ids.filter((r) => this.running(r) !== undefined).length;
      if (done === ids.length) return;
      if (this.failures.length > 0) throw new Error(`agents did not start: ${this.failures.slice(0, 3).join('; ')}`);
      if (Date.now() > deadline) throw new Error(`only ${done} of ${ids.length} agents reached RUNNING in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

interface Measured {
  readonly saturation: number;
  readonly burstSeconds: number;
  readonly rate: number;
  readonly latencies: readonly number[];
  readonly burstRequests: readonly AgentRequest[];
  readonly paced: readonly AgentRequest[];
  readonly sentAt: ReadonlyMap<string, number>;
  readonly t0: number;
}

/** Warm-up, a burst (rate = burst / time until the last RUNNING), then latency at `rateOf(saturation)` paced in 50 ms ticks. */
async function measure(kernel: KernelClient, tracker: Tracker, name: string, burst: number, paceSeconds: number, rateOf: (saturation: number) => number): Promise<Measured> {
  // Warm-up: connections, schema caches, JIT.
  const warm = Array.from({ length: 50 }, (_, i) => request(`${name}warm-${i}`));
  await kernel.send(warm);
  await tracker.waitRunning(warm.map((r) => r.requestId), 60_000);

  const burstRequests = Array.from({ length: burst }, (_, i) => request(`${name}burst-${i}`));
  const t0 = Date.now();
  for (let i = 0; i < burstRequests.length; i += 500) await kernel.send(burstRequests.slice(i, i + 500));
  await tracker.waitRunning(burstRequests.map((r) => r.requestId), 600_000);
  const burstSeconds = (Date.now() - t0) / 1000;
  const saturation = burst / burstSeconds;

  const rate = Math.max(1, rateOf(saturation));
  const sentAt = new Map<string, number>();
  const paced: AgentRequest[] = [];
  const start = Date.now();
  let sent = 0;
  while (Date.now() - start < paceSeconds * 1000) {
    const due = Math.floor(((Date.now() - start) / 1000) * rate) - sent;
    if (due > 0) {
      const batch = Array.from({ length: due }, (_, i) => request(`${name}paced-${sent + i}`));
      const now = Date.now();
      for (const r of batch) sentAt.set(r.requestId, now);
      await kernel.send(batch);
      paced.push(...batch);
      sent += due;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await tracker.waitRunning(paced.map((r) => r.requestId), 120_000);
  const latencies = paced
    .map((r) => (tracker.running(r.requestId) ?? NaN) - (sentAt.get(r.requestId) ?? NaN))
    .filter((v) => Number.isFinite(v))
    .sort((a, b) => a - b);
  return { saturation, burstSeconds, rate, latencies, burstRequests, paced, sentAt, t0 };
}

const FLOOR_TABLE = `CREATE TABLE IF NOT EXISTS floor_requests (
  request_id uuid PRIMARY KEY, agent_id uuid NOT NULL, spec jsonb NOT NULL, division text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`;

/**
 * The floor of this design, on the same stack: the batch runtime consumes a batch of requests, ONE
 * transaction inserts one row and one outbox row (a RUNNING status) per request, the relay publishes
 * them, and the watcher consumes them. Everything the real pipeline does beyond that is its cost.
 */
async function startFloor(env: Record<string, string | undefined>, concurrency: number): Promise<{ shutdown(): Promise<string[]> }> {
  const ctx = await createServiceContext({ service: 'floor', config: loadServiceConfig(env), database: true, opsServer: false });
  const pool = ctx.pool;
  if (!pool) throw new Error('the floor needs Postgres');
  await pool.query(FLOOR_TABLE);
  const statusTopic = ctx.topics['agent-status'];
  const worker = createBatchWorker<AgentRequest, undefined>(
    {
      service: 'floor',
      topics: [ctx.topics['agent-requests']],
      groupId: `${ctx.config.TOPIC_PREFIX}floor`,
      deps: undefined,
      concurrency,
      retry: ctx.workerRetry,
      handler: async (batch) => {
        const rows = batch.records.map((r) => ({ request: r.value, agentId: randomUUID() }));
        await withTransaction(pool, async (client) => {
          await client.query(
            'INSERT INTO floor_requests (request_id, agent_id, spec, division) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::jsonb[], $4::text[]) ON CONFLICT DO NOTHING',
            [rows.map((r) => r.request.requestId), rows.map((r) => r.agentId), rows.map((r) => JSON.stringify(r.request.spec)), rows.map((r) => r.request.division ?? 'default')],
          );
          await enqueueEvents(
            client,
            ctx.codec,
            rows.map(({ request: r, agentId }): OutboxEvent => {
              const value: AgentStatus = { eventId: randomUUID(), agentId, state: 'RUNNING', previousState: null, reason: 'floor', requestId: r.requestId, commandId: null, version: 1, time: new Date(), instanceId: null };
              return { topic: statusTopic, key: agentId, value, eventId: value.eventId };
            }),
          );
        });
      },
    },
    { kafka: ctx.kafka, codec: ctx.codec, producer: ctx.producer, logger: ctx.logger, metrics: ctx.metrics },
  );
  ctx.onShutdown(['floor worker', () => worker.stop()]);
  await worker.start();
  return ctx;
}

const USAGE = `usage: npm run bench -- provisioning [--burst N] [--seconds S] [--partitions P] [--concurrency C] [--processes] [--no-floor] [--postgres stack|fast|durable] [--cpu-prof DIR]
  --processes   one process per service (as deployed) instead of all in this process
  --cpu-prof D  with --processes: each service writes a CPU profile to folder D when it stops
  --no-floor    skip the floor pipeline (and the provisioning/ceiling ratio)
  --postgres    stack (default): the stack's server (fsync, synchronous_commit, full_page_writes off);
                fast: a temporary cluster of the bench's own with the same settings; durable: a
                temporary cluster with the server's defaults (all three on). With a cluster of its
                own the bench also prints the commits and statements per request of each pipeline
                and the statements that took the most time (pg_stat_statements).`;

/** Commits and statements per request during `work`, and the statements that took the most time (own cluster only). */
async function counted<T>(postgres: BenchPostgres | undefined, requests: () => number, label: string, work: () => Promise<T>): Promise<T> {
  if (!postgres) return work();
  await postgres.reset();
  const result = await work();
  const { commits, statements, top } = await postgres.stats(6);
  const n = requests();
  console.log(`${label} Postgres: ${(commits / n).toFixed(2)} commits and ${(statements / n).toFixed(1)} statements per request; most time:`);
  for (const s of top) console.log(`  ${s.totalMs.toFixed(0).padStart(7)} ms ${String(s.calls).padStart(7)} calls  ${s.query}`);
  return result;
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      burst: { type: 'string', default: '2000' },
      seconds: { type: 'string', default: '10' },
      partitions: { type: 'string', default: '16' },
      concurrency: { type: 'string', default: '16' },
      processes: { type: 'boolean', default: false },
      'no-floor': { type: 'boolean', default: false },
      postgres: { type: 'string', default: 'stack' },
      'cpu-prof': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const burst = Number(values.burst);
  const paceSeconds = Number(values.seconds);
  const prefix = `bench-prov-${Date.now().toString(36)}.`;
  const schema = prefix.replace(/[^a-z0-9]/g, '_');
  if (!['stack', 'fast', 'durable'].includes(values.postgres)) {
    console.error(USAGE);
    process.exitCode = 2;
    return;
  }
  const own = values.postgres === 'stack' ? undefined : await startBenchPostgres(values.postgres === 'durable');
  const env: Record<string, string | undefined> = {
    ...localStackEnv(),
    ...process.env,
    ...(own ? { DATABASE_URL: own.url } : {}),
    TOPIC_PREFIX: prefix,
    TOPIC_PARTITIONS: values.partitions,
    DATABASE_SCHEMA: schema,
    DATABASE_POOL_MAX: String(Number(values.concurrency) * 2 + 4),
    PROVISIONER_DRIVER: 'simulated',
    PROVISIONER_CONCURRENCY: values.concurrency,
    INGEST_CONCURRENCY: values.concurrency,
    HTTP_PORT: '0',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'error',
  };
  const floorPrefix = `${prefix}floor.`;
  const floorEnv = { ...env, TOPIC_PREFIX: floorPrefix, DATABASE_SCHEMA: `${schema}floor` };
  const config = loadServiceConfig(env);
  const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
  const kernelTls = kernelTlsFromEnv(env);
  const stops: (() => Promise<unknown>)[] = [];
  const stopAll = async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch((error: unknown) => console.error(`cleanup: ${String(error)}`));
  };
  try {
    await bootstrapFleet(process.cwd(), config, env, createLogger('bench', 'error'));
    const topics = topicNames(prefix);
    // In-process (one Node thread for everything) or one process per service, as deployed.
    const fleet = values.processes ? await startServiceProcesses(env, values['cpu-prof']) : await startServices(['ingest', 'provisioner'], env, { opsServer: false });
    stops.push(() => fleet.shutdown());
    const kernel = await KernelClient.connect({ brokers: config.KAFKA_BROKERS, tls: kernelTls, topics, codec });
    stops.push(() => kernel.disconnect());
    const status = await StatusWatcher.start({ brokers: config.KAFKA_BROKERS, tls: kernelTls, topics, codec, groupId: `${prefix}kernel-status` });
    stops.push(() => status.stop());

    const followed = new Tracker(status);
    const agentOf = (requestId: string) => followed.agentOf.get(requestId) ?? '';
    let requests = 0;
    const m = await counted(own, () => requests, 'pipeline', async () => {
      const result = await measure(kernel, followed, prefix, burst, paceSeconds, (saturation) => saturation / 2);
      requests = 50 + burst + result.paced.length;
      return result;
    });
    const times = (pick: (e: { version: number; state: string }) => boolean) =>
      m.burstRequests.map((r) => (status.states.get(agentOf(r.requestId)) ?? []).find(pick)?.time.getTime() ?? NaN).filter(Number.isFinite);
    const lastOf = (list: number[]) => ((Math.max(...list) - m.t0) / 1000).toFixed(1);
    console.log(`burst timeline: last accepted by ingest at ${lastOf(times((e) => e.version === 0))} s · last created by the provisioner at ${lastOf(times((e) => e.version === 1))} s · last RUNNING at ${lastOf(times((e) => e.state === 'RUNNING'))} s`);
    console.log(
      `setup: ${values.partitions} partitions per topic, ${values.concurrency} partitions handled at once per service, simulated driver, ${values.processes ? 'one process per service' : 'one process'}, Postgres ${{ stack: "the stack's (fsync, synchronous_commit, full_page_writes off)", fast: 'a temporary cluster (fsync, synchronous_commit, full_page_writes off)', durable: 'a temporary cluster, durable (fsync, synchronous_commit, full_page_writes on)' }[values.postgres]}`,
    );
    console.log(`saturation: ${burst} requests → RUNNING in ${m.burstSeconds.toFixed(1)} s = ${m.saturation.toFixed(0)} commands/s`);
    console.log(`paced: ${m.paced.length} requests at ${m.rate.toFixed(0)}/s (half of saturation) for ${paceSeconds} s`);
    const p95 = percentile(m.latencies, 95);
    console.log(`latency request produced → RUNNING consumed: p50 = ${percentile(m.latencies, 50).toFixed(0)} ms, p95 = ${p95.toFixed(0)} ms, max = ${(m.latencies.at(-1) ?? NaN).toFixed(0)} ms`);
    // Where the time goes, from the events' own timestamps (one clock: same machine).
    const stages = { ingest: [] as number[], handover: [] as number[], lifecycle: [] as number[] };
    for (const r of m.paced) {
      const events = status.states.get(agentOf(r.requestId)) ?? [];
      const accepted = events.find((e) => e.version === 0)?.time.getTime();
      const created = events.find((e) => e.version === 1)?.time.getTime();
      const running = events.find((e) => e.state === 'RUNNING')?.time.getTime();
      const sent = m.sentAt.get(r.requestId);
      if (accepted === undefined || created === undefined || running === undefined || sent === undefined) continue;
      stages.ingest.push(accepted - sent);
      stages.handover.push(created - accepted);
      stages.lifecycle.push(running - created);
    }
    const median = (list: number[]) => percentile([...list].sort((a, b) => a - b), 50).toFixed(0);
    console.log(`median stages: produced → ingest accepted ${median(stages.ingest)} ms · accepted → provisioner created ${median(stages.handover)} ms · created → RUNNING ${median(stages.lifecycle)} ms`);

    let ratio: number | undefined;
    if (!values['no-floor']) {
      // The services stop first: the floor has the machine to itself, as the pipeline had.
      await stopAll();
      const floorConfig = loadServiceConfig(floorEnv);
      await bootstrapFleet(process.cwd(), floorConfig, floorEnv, createLogger('bench', 'error'));
      const floorTopics = topicNames(floorPrefix);
      const floor = await startFloor(floorEnv, Number(values.concurrency));
      stops.push(() => floor.shutdown());
      const floorKernel = await KernelClient.connect({ brokers: config.KAFKA_BROKERS, tls: kernelTls, topics: floorTopics, codec });
      stops.push(() => floorKernel.disconnect());
      const floorStatus = await StatusWatcher.start({ brokers: config.KAFKA_BROKERS, tls: kernelTls, topics: floorTopics, codec, groupId: `${floorPrefix}kernel-status` });
      stops.push(() => floorStatus.stop());
      // Paced at the same rate as the pipeline, so the latencies compare.
      let floorRequests = 0;
      const f = await counted(own, () => floorRequests, 'floor', async () => {
        const result = await measure(floorKernel, new Tracker(floorStatus), floorPrefix, burst, paceSeconds, () => m.rate);
        floorRequests = 50 + burst + result.paced.length;
        return result;
      });
      ratio = m.saturation / f.saturation;
      console.log(`floor (batch → one transaction: a row and an outbox row per request → relay → consumed): ${burst} requests in ${f.burstSeconds.toFixed(1)} s = ${f.saturation.toFixed(0)} requests/s; at ${f.rate.toFixed(0)}/s p50 = ${percentile(f.latencies, 50).toFixed(0)} ms, p95 = ${percentile(f.latencies, 95).toFixed(0)} ms`);
      console.log(`provisioning/ceiling = ${ratio.toFixed(2)}`);
    }
    console.log(
      `goals: saturation ≥ 2000/s → ${m.saturation >= 2000 ? 'met' : 'NOT met'}; p95 ≤ 100 ms → ${p95 <= 100 ? 'met' : 'NOT met'}${ratio === undefined ? '' : `; provisioning/ceiling ≥ 0.5 → ${ratio >= 0.5 ? 'met' : 'NOT met'}`}`,
    );
  } finally {
    await stopAll();
    await cleanup(config, prefix, [schema, `${schema}floor`]).catch((error: unknown) => console.error(`cleanup: ${String(error)}`));
    await own?.stop();
  }
}

async function cleanup(config: ServiceConfig, prefix: string, schemas: readonly string[]): Promise<void> {
  const client = new pg.Client({ connectionString: config.DATABASE_URL });
  await client.connect();
  for (const schema of schemas) await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await client.end();
  const ssl = kafkajsSsl(kafkaTlsOf(config));
  const admin = new Kafka({ clientId: 'bench-cleanup', brokers: config.KAFKA_BROKERS, ...(ssl ? { ssl } : {}), logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
  if (mine.length > 0) await admin.deleteTopics({ topics: mine });
  await deleteAcls(admin, aclPlan({ prefix })).catch(() => undefined);
  await deleteAcls(admin, aclPlan({ prefix: `${prefix}floor.` })).catch(() => undefined);
  await admin.disconnect();
}
