// End-to-end provisioning with the simulated driver: requests produced on agent-requests → ingest →
// agent-commands → provisioner → RUNNING consumed from agent-status. Measures the saturation rate
// (a burst of INSTANTIATE requests) and the p50/p95 latency at half that rate, in the same run.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import pg from 'pg';
import { startServices } from '../cli/services.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import type { AgentRequest } from '../lib/contracts/types.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { kernelTlsFromEnv, KernelClient, StatusWatcher } from '../dev/kernel/client.ts';
import { kafkaTlsOf } from '../lib/config.ts';
import { aclPlan, deleteAcls } from '../lib/contracts/acls.ts';
import { kafkajsSsl } from '../lib/kafka/kafkajs.ts';
import { createLogger } from '../lib/logger.ts';
import { bootstrapFleet } from '../lib/service/bootstrap.ts';
import { loadServiceConfig, topicNames } from '../lib/service/context.ts';
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
async function startServiceProcesses(env: Record<string, string | undefined>): Promise<{ shutdown(): Promise<string[]> }> {
  const children = (['ingest', 'provisioner'] as const).map((service) =>
    spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'run', service], {
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

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { burst: { type: 'string', default: '2000' }, seconds: { type: 'string', default: '10' }, partitions: { type: 'string', default: '16' }, concurrency: { type: 'string', default: '16' }, processes: { type: 'boolean', default: false } } });
  const burst = Number(values.burst);
  const paceSeconds = Number(values.seconds);
  const prefix = `bench-prov-${Date.now().toString(36)}.`;
  const schema = prefix.replace(/[^a-z0-9]/g, '_');
  const env: Record<string, string | undefined> = {
    ...localStackEnv(),
    ...process.env,
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
  const config = loadServiceConfig(env);
  await bootstrapFleet(process.cwd(), config, env, createLogger('bench', 'error'));
  const topics = topicNames(prefix);
  const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
  // In-process (one Node thread for everything) or one process per service, as deployed.
  const fleet = values.processes ? await startServiceProcesses(env) : await startServices(['ingest', 'provisioner'], env, { opsServer: false });
  const kernelTls = kernelTlsFromEnv(env);
  const kernel = await KernelClient.connect({ brokers: config.KAFKA_BROKERS, tls: kernelTls, topics, codec });
  const status = await StatusWatcher.start({ brokers: config.KAFKA_BROKERS, tls: kernelTls, topics, codec, groupId: `${prefix}kernel-status` });

  const sentAt = new Map<string, number>();
  const failures: string[] = [];
  const agentRunningMs = new Map<string, number>();
  // Indexes the watcher's events by request as they arrive (a scan per request would be quadratic).
  const requestToAgent = new Map<string, string>();
  status.onStatus((e) => {
    if (e.requestId) requestToAgent.set(e.requestId, e.agentId);
    if (e.state === 'RUNNING' && !agentRunningMs.has(e.agentId)) agentRunningMs.set(e.agentId, Date.now());
    if (e.state === 'REJECTED' || e.state === 'FAILED') failures.push(`${e.agentId}: ${e.state}: ${e.reason ?? ''}`);
  });

  async function waitRunning(ids: readonly string[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const done = ids.filter((r) => {
        const agent = requestToAgent.get(r);
        return agent !== undefined && agentRunningMs.has(agent);
      }).length;
      if (done === ids.length) return;
      if (failures.length > 0) throw new Error(`agents did not start: ${failures.slice(0, 3).join('; ')}`);
      if (Date.now() > deadline) throw new Error(`only ${done} of ${ids.length} agents reached RUNNING in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  try {
    // Warm-up: connections, schema caches, JIT.
    const warm = Array.from({ length: 50 }, (_, i) => request(`${prefix}warm-${i}`));
    await kernel.send(warm);
    await waitRunning(warm.map((r) => r.requestId), 60_000);

    // 1. Saturation: one burst, rate = burst / time until the last RUNNING.
    const burstRequests = Array.from({ length: burst }, (_, i) => request(`${prefix}burst-${i}`));
    const t0 = Date.now();
    for (let i = 0; i < burstRequests.length; i += 500) await kernel.send(burstRequests.slice(i, i + 500));
    await waitRunning(burstRequests.map((r) => r.requestId), 600_000);
    const saturation = burst / ((Date.now() - t0) / 1000);
    const times = (pick: (e: { version: number; state: string }) => boolean) =>
      burstRequests.map((r) => (status.states.get(requestToAgent.get(r.requestId) ?? '') ?? []).find(pick)?.time.getTime() ?? NaN).filter(Number.isFinite);
    const lastOf = (list: number[]) => ((Math.max(...list) - t0) / 1000).toFixed(1);
    console.log(`burst timeline: last accepted by ingest at ${lastOf(times((e) => e.version === 0))} s · last created by the provisioner at ${lastOf(times((e) => e.version === 1))} s · last RUNNING at ${lastOf(times((e) => e.state === 'RUNNING'))} s`);
    console.log(`setup: ${values.partitions} partitions per topic, ${values.concurrency} partitions handled at once per service, simulated driver, ${values.processes ? 'one process per service' : 'one process'}`);
    console.log(`saturation: ${burst} requests → RUNNING in ${((Date.now() - t0) / 1000).toFixed(1)} s = ${saturation.toFixed(0)} commands/s`);

    // 2. Latency at half the saturation rate, paced in 50 ms ticks.
    const rate = Math.max(1, saturation / 2);
    const paced: AgentRequest[] = [];
    const start = Date.now();
    let sent = 0;
    while (Date.now() - start < paceSeconds * 1000) {
      const due = Math.floor(((Date.now() - start) / 1000) * rate) - sent;
      if (due > 0) {
        const batch = Array.from({ length: due }, (_, i) => request(`${prefix}paced-${sent + i}`));
        const now = Date.now();
        for (const r of batch) sentAt.set(r.requestId, now);
        await kernel.send(batch);
        paced.push(...batch);
        sent += due;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await waitRunning(paced.map((r) => r.requestId), 120_000);
    const latencies = paced
      .map((r) => (agentRunningMs.get(requestToAgent.get(r.requestId) ?? '') ?? NaN) - (sentAt.get(r.requestId) ?? NaN))
      .filter((v) => Number.isFinite(v))
      .sort((a, b) => a - b);
    console.log(`paced: ${paced.length} requests at ${rate.toFixed(0)}/s (half of saturation) for ${paceSeconds} s`);
    console.log(`latency request produced → RUNNING consumed: p50 = ${percentile(latencies, 50).toFixed(0)} ms, p95 = ${percentile(latencies, 95).toFixed(0)} ms, max = ${(latencies.at(-1) ?? NaN).toFixed(0)} ms`);
    // Where the time goes, from the events' own timestamps (one clock: same machine).
    const stages = { ingest: [] as number[], handover: [] as number[], lifecycle: [] as number[] };
    for (const r of paced) {
      const events = status.states.get(requestToAgent.get(r.requestId) ?? '') ?? [];
      const accepted = events.find((e) => e.version === 0)?.time.getTime();
      const created = events.find((e) => e.version === 1)?.time.getTime();
      const running = events.find((e) => e.state === 'RUNNING')?.time.getTime();
      const sent = sentAt.get(r.requestId);
      if (accepted === undefined || created === undefined || running === undefined || sent === undefined) continue;
      stages.ingest.push(accepted - sent);
      stages.handover.push(created - accepted);
      stages.lifecycle.push(running - created);
    }
    const median = (list: number[]) => percentile([...list].sort((a, b) => a - b), 50).toFixed(0);
    console.log(`median stages: produced → ingest accepted ${median(stages.ingest)} ms · accepted → provisioner created ${median(stages.handover)} ms · created → RUNNING ${median(stages.lifecycle)} ms`);
    console.log(`goals: saturation ≥ 2000/s → ${saturation >= 2000 ? 'met' : 'NOT met'}; p95 ≤ 100 ms → ${percentile(latencies, 95) <= 100 ? 'met' : 'NOT met'}`);
  } finally {
    await status.stop();
    await kernel.disconnect();
    await fleet.shutdown();
    const client = new pg.Client({ connectionString: config.DATABASE_URL });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await client.end();
    const ssl = kafkajsSsl(kafkaTlsOf(config));
    const admin = new Kafka({ clientId: 'bench-cleanup', brokers: config.KAFKA_BROKERS, ...(ssl ? { ssl } : {}), logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
    if (mine.length > 0) await admin.deleteTopics({ topics: mine });
    await deleteAcls(admin, aclPlan({ prefix })).catch(() => undefined);
    await admin.disconnect();
  }
}
