// The ingest HTTPS API's read path over mutual TLS at a fixed request rate: GET /v1/agents/:id on
// seeded agents, a list page and GET /v1/audit pages (seeded audit_index rows, 50 per agent), each against the real buildApi on a migrated Postgres schema. A
// bare Fastify with the same HTTPS+mTLS options, in the same process, serves a trivial route under
// the same load as the baseline, so the figures can be compared across noisy runs.
//
// The load is open-loop and evenly paced (request n is due at start + n/rate), sent with undici from
// a worker thread so it does not share the servers' event loop; each latency counts from the time
// the request was due, so a stall shows up instead of silently lowering the rate. Not autocannon:
// its overallRate is a per-connection quota per second (a counter reset by a 1 s interval), so every
// connection fires back to back at the top of each second and then idles — a burst, not 1,000/s.
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import pg from 'pg';
import { Pool as HttpPool } from 'undici';
import { localStackEnv } from '../dev/stack/endpoints.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import { migrateUp } from '../lib/db/migrate.ts';
import { createPool } from '../lib/db/pool.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { createLogger } from '../lib/logger.ts';
import { topicNames } from '../lib/service/context.ts';
import { buildApi } from '../services/ingest/api.ts';
import { loadIdentitiesConfig } from '../services/ingest/authz.ts';
import { createTestPki } from '../test/support/certs.ts';

const GOAL_P95_MS = 10;

interface Figures {
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly requests: number;
  readonly errors: number;
  readonly rate: number;
  /** Share of the run the servers' event loop (this thread) was busy. */
  readonly busy: number;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

interface LoadJob {
  readonly port: number;
  readonly tls: { readonly ca: string; readonly cert: string; readonly key: string };
  readonly rate: number;
  readonly seconds: number;
  readonly warmupSeconds: number;
  readonly connections: number;
  /** Request n asks for paths[n % paths.length]. */
  readonly paths: readonly string[];
}

interface LoadResult {
  readonly latencies: number[];
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly elapsedMs: number;
}

/** Sends rate × seconds GETs, request n at start + n/rate. */
async function pace(client: HttpPool, job: LoadJob, seconds: number): Promise<LoadResult> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const pending = new Set<Promise<void>>();
  const total = Math.round(job.rate * seconds);
  const start = performance.now();
  const fire = (n: number) => {
    const due = start + (n * 1000) / job.rate;
    const done = client
      .request({ method: 'GET', path: job.paths[n % job.paths.length] ?? '/' })
      .then(async (response) => {
        await response.body.text();
        if (response.statusCode !== 200) throw new Error(`HTTP ${response.statusCode}`);
        latencies.push(performance.now() - due);
      })
      .catch((error: unknown) => {
        errors += 1;
        firstError ??= error instanceof Error ? error.message : String(error);
      })
      .finally(() => pending.delete(done));
    pending.add(done);
  };
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - start) * job.rate) / 1000) + 1);
    while (sent < due) fire(sent++);
    await sleep(1);
  }
  await Promise.all(pending);
  return { latencies, errors, firstError, elapsedMs: performance.now() - start };
}

/** In the worker: a warm-up on the same `connections` keep-alive mTLS connections (handshakes, JIT), then the measured run. */
async function sendLoad(job: LoadJob): Promise<LoadResult> {
  const client = new HttpPool(`https://127.0.0.1:${job.port}`, { connections: job.connections, pipelining: 1, connect: { ...job.tls, servername: 'localhost' } });
  try {
    await pace(client, job, job.warmupSeconds);
    return await pace(client, job, job.seconds);
  } finally {
    await client.close();
  }
}

if (!isMainThread && (workerData as { apiLoad?: LoadJob } | undefined)?.apiLoad) {
  parentPort?.postMessage(await sendLoad((workerData as { apiLoad: LoadJob }).apiLoad));
}

/** One fixed-rate run from a worker thread. */
async function load(job: LoadJob): Promise<Figures> {
  // The worker's warm-up is included: the utilization is over the whole run.
  const before = performance.eventLoopUtilization();
  const result = await new Promise<LoadResult>((resolve, reject) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: { apiLoad: job } });
    worker.once('message', (message: LoadResult) => resolve(message));
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the load worker exited with ${code} before reporting`)));
  });
  const busy = performance.eventLoopUtilization(before).utilization;
  if (result.firstError !== undefined) console.log(`  (first error: ${result.firstError})`);
  const sorted = result.latencies.sort((a, b) => a - b);
  return {
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    requests: sorted.length + result.errors,
    errors: result.errors,
    rate: sorted.length / (result.elapsedMs / 1000),
    busy,
  };
}

const fmt = (ms: number) => ms.toFixed(2);

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { rate: { type: 'string', default: '1000' }, seconds: { type: 'string', default: '10' }, connections: { type: 'string', default: '20' }, agents: { type: 'string', default: '1000' } } });
  const rate = Number(values.rate);
  const seconds = Number(values.seconds);
  const connections = Number(values.connections);
  const agentCount = Number(values.agents);
  const env = { ...localStackEnv(), ...process.env };
  const databaseUrl = env.DATABASE_URL ?? '';
  const prefix = `bench-api-${Date.now().toString(36)}.`;
  const schema = prefix.replace(/[^a-z0-9]/g, '_');
  const logger = createLogger('bench', 'silent');
  await migrateUp({ databaseUrl, dir: join(process.cwd(), 'migrations'), schema, logger });
  const pool = createPool({ connectionString: databaseUrl, schema, max: connections });
  const pki = createTestPki();
  const tls = { key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert };
  // The per-identity limit (1,200/min by default) would refuse most of the load: raised well above it.
  const rateLimitMax = rate * 60 * 10;
  const api = buildApi({
    tls,
    deps: { pool, codec: createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', avroOptions: avroTypeOptions() }), topics: topicNames(prefix), authz: loadIdentitiesConfig(join(process.cwd(), 'config', 'identities.json')), rules: { knownTemplates: ['echo'] } },
    logger,
    limits: { rateLimitMax, rateLimitWindowMs: 60_000 },
  });
  // Same TLS handshake and client-certificate check, no routes' work: what the machine itself costs.
  const bare = Fastify({ https: { ...tls, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, logger: false });
  bare.get('/ping', async () => ({ ok: true }));
  try {
    // Seeded in one SQL statement, as the API's integration test does: the provisioner's path would
    // need Kafka and the whole fleet for rows the read routes treat the same.
    const ids = (
      await pool.query<{ id: string }>(
        `INSERT INTO agents (id, state, reason, spec, lifecycle, division, region, labels, version, created_at, updated_at)
         SELECT gen_random_uuid(), (ARRAY['RUNNING','STOPPED','PENDING'])[1 + n % 3], '', $2::jsonb, '{}', (ARRAY['research','ops'])[1 + n % 2], 'local', '{"team":"bench"}', 2,
                now() - n * interval '1 second', now() - n * interval '1 second'
         FROM generate_series(1, $1::int) AS n RETURNING id`,
        [agentCount, JSON.stringify({ template: 'echo', image: null, command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } })],
      )
    ).rows.map((r) => r.id);
    // 50 audit events per agent, a second apart, across 4 partitions (as the archiver's insert writes them).
    await pool.query(
      `INSERT INTO audit_index (event_id, event_time, action, actor, agent_id, request_id, trace_id, kafka_partition, kafka_offset, payload_hash)
       SELECT gen_random_uuid(), now() - (a.n * 50 + e) * interval '1 second', (ARRAY['REQUEST_ACCEPTED','AGENT_STATE_CHANGED'])[1 + e % 2], 'kernel', a.id, NULL, NULL, (a.n * 50 + e) % 4, a.n * 50 + e, repeat('ab', 32)
       FROM unnest($1::uuid[]) WITH ORDINALITY AS a(id, n), generate_series(0, 49) AS e`,
      [ids],
    );
    await pool.query('ANALYZE audit_index');
    await api.listen({ port: 0, host: '127.0.0.1' });
    await bare.listen({ port: 0, host: '127.0.0.1' });
    const apiPort = (api.server.address() as AddressInfo).port;
    const barePort = (bare.server.address() as AddressInfo).port;
    const clientTls = { ca: pki.ca.cert, cert: pki.clients.kernel.cert, key: pki.clients.kernel.key };
    // Every agent once per pass, in uuid order (random against the table's insertion order), and list pages with each filter.
    const idPaths = ids.sort().map((id) => `/v1/agents/${id}`);
    const listPaths = ['/v1/agents?limit=50', '/v1/agents?division=research&limit=50', '/v1/agents?state=RUNNING&limit=50'];
    // An agent's trail (a page of 50), and a 50-event window of the whole trail (the newest hour).
    const since = new Date(Date.now() - 3_600_000).toISOString();
    const auditPaths = [...idPaths.map((path) => `/v1/audit?agentId=${path.slice('/v1/agents/'.length)}&limit=50`), `/v1/audit?from=${since}&limit=50`, '/v1/audit?action=AGENT_STATE_CHANGED&limit=50'];
    const targets = [
      { name: 'GET /v1/agents/:id', port: apiPort, paths: idPaths },
      { name: 'GET /v1/agents?…&limit=50', port: apiPort, paths: listPaths },
      { name: 'GET /v1/audit?…&limit=50', port: apiPort, paths: auditPaths },
      { name: 'baseline GET /ping (bare Fastify, mTLS)', port: barePort, paths: ['/ping'] },
    ];
    console.log(`setup: ${agentCount} agents and ${agentCount * 50} audit events seeded, ${connections} keep-alive mTLS connections (CN=kernel), Postgres pool ${connections}, per-identity rate limit raised to ${rateLimitMax}/min for the bench, ${seconds} s per endpoint after a 2 s warm-up`);
    const figures = new Map<string, Figures>();
    for (const target of targets) {
      const f = await load({ port: target.port, tls: clientTls, rate, seconds, warmupSeconds: 2, connections, paths: target.paths });
      figures.set(target.name, f);
      console.log(`api: ${target.name} at ${rate}/s: p50 ${fmt(f.p50)} ms, p95 ${fmt(f.p95)} ms, p99 ${fmt(f.p99)} ms, achieved ${f.rate.toFixed(0)}/s (${f.requests} requests, ${f.errors} errors); server event loop ${(f.busy * 100).toFixed(0)}% busy`);
    }
    const baseline = figures.get(targets.at(-1)?.name ?? '');
    for (const target of targets.slice(0, -1)) {
      const f = figures.get(target.name);
      if (!f || !baseline) continue;
      const met = f.p95 < GOAL_P95_MS && f.errors === 0;
      console.log(`api/baseline p95 = ${(f.p95 / baseline.p95).toFixed(2)} for ${target.name}; goal p95 < ${GOAL_P95_MS} ms: ${met ? 'met' : 'NOT met'}`);
    }
  } finally {
    await api.close();
    await bare.close();
    await pool.end();
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await client.end();
  }
}
