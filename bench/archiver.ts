// The audit archiver: one `agent-manager run archiver` process (its own principal) on a fresh topic
// prefix, Postgres schema and object-locked bucket (GOVERNANCE, so the bench can remove it).
// (1) Throughput: a backlog of audit events (Avro through the registry) indexed and archived by the
// process, against raw kafkajs batch consumption that only decodes the same backlog, in the same run
// (the mean of a raw run before and one after). (2) Ingest latency: events produced at a steady rate
// (1,000/s for 20 s) to an archiver restarted with the default 60 s windows, each timed from its send to the moment a poll of the index (every 10 ms, by
// partition and offset) first finds it. Figures are printed; nothing is asserted.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import avsc from 'avsc';
import { Kafka, logLevel, type Producer, type RecordMetadata } from 'kafkajs';
import pg from 'pg';
import { localStackEnv, stackCredentials } from '../dev/stack/endpoints.ts';
import { buildAuditEvent } from '../lib/audit.ts';
import { initArchiveBucket } from '../lib/archive/bucket.ts';
import { kafkaTlsOf } from '../lib/config.ts';
import { aclPlan, deleteAcls } from '../lib/contracts/acls.ts';
import { latestVersion } from '../lib/contracts/registry.ts';
import { avroTypeOptions, TOPICS } from '../lib/contracts/schemas.ts';
import type { AuditEvent } from '../lib/contracts/types.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { kafkajsSsl } from '../lib/kafka/kafkajs.ts';
import { rawDecodeRate } from './raw-decode.ts';
import { createLogger } from '../lib/logger.ts';
import { bootstrapFleet } from '../lib/service/bootstrap.ts';
import { loadServiceConfig, topicNames } from '../lib/service/context.ts';
import { removeTestBucket, testS3Client } from '../test/support/s3.ts';

const METRIC = {
  indexed: 'agent_manager_archiver_events_indexed_total',
  archived: 'agent_manager_archiver_events_archived_total',
  files: 'agent_manager_archiver_files_total',
  indexSum: 'agent_manager_archiver_index_duration_seconds_sum',
  indexCount: 'agent_manager_archiver_index_duration_seconds_count',
  uploadSum: 'agent_manager_archiver_upload_duration_seconds_sum',
  uploadCount: 'agent_manager_archiver_upload_duration_seconds_count',
};

const USAGE = `usage: npm run bench -- archiver [--backlog N] [--partitions P] [--rate R] [--seconds S] [--cpu-prof DIR] [--keep]
  --backlog N     audit events in the throughput backlog (default 100000)
  --partitions P  partitions of every topic (default 4)
  --rate R        events/s of the latency phase (default 1000)
  --seconds S     length of the latency phase (default 20)
  --cpu-prof DIR  run the archiver with node --cpu-prof, writing its profile to DIR
  --keep          keep the topics, schema and bucket (to inspect them)`;

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The sum of a metric's samples in a Prometheus text exposition (0 when absent). */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || (line[name.length] !== ' ' && line[name.length] !== '{')) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}

/** `agent-manager run archiver` as its own process (User:archiver), and its /metrics. */
class ArchiverProcess {
  readonly #child: ChildProcess;
  readonly #port: number;
  readonly #exited: Promise<number | null>;

  private constructor(child: ChildProcess, port: number) {
    this.#child = child;
    this.#port = port;
    this.#exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  static async start(env: Record<string, string | undefined>, cpuProfileDir: string | undefined): Promise<ArchiverProcess> {
    const port = await freePort();
    const nodeArgs = cpuProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfileDir}`] : [];
    const child = spawn(process.execPath, [...nodeArgs, join(process.cwd(), 'bin', 'agent-manager.js'), 'run', 'archiver'], {
      // info: its 'running' line says when it is up.
      env: { ...env, ...stackCredentials(process.cwd(), 'archiver'), HTTP_PORT: String(port), HTTP_HOST: '127.0.0.1', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const service = new ArchiverProcess(child, port);
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      child.stdout?.on('data', (chunk: Buffer) => {
        seen = (seen + chunk.toString()).slice(-8192);
        if (seen.includes('running; SIGTERM')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`the archiver exited with ${code} before running:\n${seen}`)));
    });
    child.stdout?.resume();
    return service;
  }

  async metric(name: string): Promise<number> {
    const response = await fetch(`http://127.0.0.1:${this.#port}/metrics`);
    return metricSum(await response.text(), name);
  }

  /** SIGTERM, then SIGKILL if it has not exited within 30 s (said on the console). */
  async stop(): Promise<void> {
    this.#child.kill('SIGTERM');
    const timer = setTimeout(() => {
      console.log('  the archiver did not stop within 30 s of SIGTERM: SIGKILL');
      this.#child.kill('SIGKILL');
    }, 30_000);
    await this.#exited;
    clearTimeout(timer);
  }
}

/** A synchronous Avro encoder (Confluent framing) with the latest schema registered for `topic`. */
async function encoderOf(registryUrl: string, topic: string): Promise<(value: unknown) => Buffer> {
  const latest = await latestVersion(registryUrl, `${topic}-value`);
  if (!latest) throw new Error(`no schema registered for ${topic}`);
  const type = avsc.Type.forSchema(JSON.parse(latest.schema) as avsc.Schema, avroTypeOptions());
  return (value) => {
    const body = type.toBuffer(value);
    const framed = Buffer.allocUnsafe(5 + body.length);
    framed[0] = 0;
    framed.writeInt32BE(latest.id, 1);
    body.copy(framed, 5);
    return framed;
  };
}

/** An audit event like the services' (a state change of one of 1,000 agents), keyed by its agent as the outbox keys them. */
function eventOf(agents: readonly string[], i: number): AuditEvent {
  const agentId = agents[i % agents.length] ?? null;
  return buildAuditEvent({ actor: 'service:provisioner', action: 'agent.state_changed', agentId, requestId: randomUUID(), traceId: null, payload: { from: 'STARTING', to: 'RUNNING', sequence: i } });
}

/** Sends `count` events in chunks of 5,000, up to 4 chunks in flight. */
async function produceBacklog(producer: Producer, encode: (value: unknown) => Buffer, topic: string, agents: readonly string[], count: number): Promise<void> {
  const chunk = 5_000;
  const inFlight: Promise<unknown>[] = [];
  for (let sent = 0; sent < count; sent += chunk) {
    const n = Math.min(chunk, count - sent);
    const messages = Array.from({ length: n }, (_, i) => {
      const event = eventOf(agents, sent + i);
      return { key: event.agentId, value: encode(event), headers: { 'event-id': event.eventId } };
    });
    if (inFlight.length >= 4) await inFlight.shift();
    inFlight.push(producer.send({ topic, acks: -1, messages }));
  }
  await Promise.all(inFlight);
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      backlog: { type: 'string', default: '100000' },
      partitions: { type: 'string', default: '4' },
      rate: { type: 'string', default: '1000' },
      seconds: { type: 'string', default: '20' },
      'cpu-prof': { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const backlog = Number(values.backlog);
  const rate = Number(values.rate);
  const seconds = Number(values.seconds);
  if (![backlog, rate, seconds, Number(values.partitions)].every((v) => Number.isFinite(v) && v > 0)) {
    console.error(USAGE);
    process.exit(2);
  }
  const stamp = Date.now().toString(36);
  const prefix = `bench-arch-${stamp}.`;
  const schema = prefix.replace(/[^a-z0-9]/g, '_');
  const bucket = `bench-archiver-${stamp}`;
  const env: Record<string, string | undefined> = {
    ...localStackEnv(),
    ...process.env,
    TOPIC_PREFIX: prefix,
    TOPIC_PARTITIONS: values.partitions,
    DATABASE_SCHEMA: schema,
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
    ARCHIVE_BUCKET: bucket,
    // 5 s windows: the backlog's last files are cut at the first tick once caught up, not a minute later.
    ARCHIVE_FLUSH_INTERVAL_MS: '5000',
    ARCHIVE_WINDOW_GRACE_MS: '1000',
    ARCHIVE_TICK_MS: '200',
  };
  const config = loadServiceConfig(env);
  const s3 = testS3Client();
  await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  await bootstrapFleet(process.cwd(), config, env, createLogger('bench', 'error'));
  const topics = topicNames(prefix);
  const topic = topics['audit-events'];
  const ssl = kafkajsSsl(kafkaTlsOf(config));
  const kafka = new Kafka({ clientId: 'bench-archiver', brokers: config.KAFKA_BROKERS, ...(ssl ? { ssl } : {}), logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const db = new pg.Client({ connectionString: config.DATABASE_URL });
  await db.connect();
  const agents = Array.from({ length: 1000 }, () => randomUUID());
  const encode = await encoderOf(config.SCHEMA_REGISTRY_URL, topic);
  let service: ArchiverProcess | undefined;
  console.log(`archiver benchmark: ${backlog} events backlog, ${values.partitions} partitions, one archiver process, prefix ${prefix}, bucket ${bucket}`);
  try {
    // 1. Throughput on a backlog.
    const t0 = Date.now();
    await produceBacklog(producer, encode, topic, agents, backlog);
    console.log(`throughput: ${backlog} audit events produced in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const freshCodec = () => createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
    const rawBefore = await rawDecodeRate(kafka, freshCodec(), topic, backlog);
    console.log(`  raw kafkajs (batch consumption, decode only): ${Math.round(rawBefore)} events/s`);
    service = await ArchiverProcess.start(env, values['cpu-prof']);
    // From the first event indexed to the last archived: the group join and start-up are not in the time.
    let started = 0;
    let told = Date.now();
    const deadline = Date.now() + 600_000;
    for (;;) {
      const [indexed, archived] = [await service.metric(METRIC.indexed), await service.metric(METRIC.archived)];
      if (started === 0 && indexed > 0) started = performance.now();
      if (indexed >= backlog && archived >= backlog) break;
      if (Date.now() > deadline) throw new Error(`the archiver indexed ${indexed} and archived ${archived} of ${backlog} events in 600 s`);
      if (Date.now() - told > 5_000) {
        console.log(`  … ${indexed} indexed, ${archived} archived`);
        told = Date.now();
      }
      await sleep(50);
    }
    const archiverRate = (backlog / (performance.now() - started)) * 1000;
    const elapsed = (performance.now() - started) / 1000;
    const files = await service.metric(METRIC.files);
    const inserts = await service.metric(METRIC.indexCount);
    const indexSeconds = await service.metric(METRIC.indexSum);
    const uploads = await service.metric(METRIC.uploadCount);
    const uploadSeconds = await service.metric(METRIC.uploadSum);
    console.log(`  archiver (index + Avro container files in S3, offsets committed after): ${Math.round(archiverRate)} events/s, ${files} files`);
    // Where its time went (its own histograms): the INSERT per Kafka batch runs on each partition in parallel.
    console.log(
      `  ${inserts} index INSERTs (${Math.round(backlog / inserts)} events each), ${((1000 * indexSeconds) / inserts).toFixed(0)} ms each, ${((100 * indexSeconds) / elapsed).toFixed(0)}% of the run summed over partitions; ` +
        `${uploads} uploads, ${((1000 * uploadSeconds) / Math.max(1, uploads)).toFixed(0)} ms each`,
    );
    const rawAfter = await rawDecodeRate(kafka, freshCodec(), topic, backlog);
    console.log(`  raw kafkajs again: ${Math.round(rawAfter)} events/s`);
    const raw = (rawBefore + rawAfter) / 2;
    console.log(`archived events/s = ${Math.round(archiverRate)}`);
    console.log(`archiver/raw = ${(archiverRate / raw).toFixed(2)} (raw: the mean of the runs before and after)`);

    // 2. Ingest latency at a steady rate: send → found in the index by a poll. A fresh archiver with
    // the default windows (60 s): 5 s ones would cut a file on each partition every 5 s, and a cut
    // (an upload inside the batch handler) holds the consumer's next fetch.
    await service.stop();
    service = await ArchiverProcess.start({ ...env, ARCHIVE_FLUSH_INTERVAL_MS: '60000', ARCHIVE_WINDOW_GRACE_MS: '5000', ARCHIVE_TICK_MS: '1000' }, values['cpu-prof']);
    // Its group joined and every partition's resume point read: warm-up events indexed.
    await produceBacklog(producer, encode, topic, agents, 200);
    for (const until = Date.now() + 120_000; (await service.metric(METRIC.indexed)) < 200; ) {
      if (Date.now() > until) throw new Error('the restarted archiver did not index 200 warm-up events in 120 s');
      await sleep(100);
    }
    const [insertsBefore, indexSecondsBefore] = [await service.metric(METRIC.indexCount), await service.metric(METRIC.indexSum)];
    const sentAt = new Map<string, number>();
    const latencies: number[] = [];
    const high = new Map<number, bigint>();
    const { rows: ends } = await db.query<{ p: number; o: string }>(`SELECT kafka_partition AS p, max(kafka_offset)::text AS o FROM ${schema}.audit_index GROUP BY 1`);
    for (const row of ends) high.set(row.p, BigInt(row.o));
    const partitions = Array.from({ length: Number(values.partitions) }, (_, p) => p);
    let polling = true;
    let lastSend = performance.now();
    const poller = (async () => {
      while (polling || sentAt.size > 0) {
        const { rows } = await db.query<{ event_id: string; p: number; o: string }>(
          `SELECT i.event_id, i.kafka_partition AS p, i.kafka_offset::text AS o FROM unnest($1::int[], $2::bigint[]) AS h(p, o) JOIN ${schema}.audit_index i ON i.kafka_partition = h.p AND i.kafka_offset > h.o`,
          [partitions, partitions.map((p) => String(high.get(p) ?? -1n))],
        );
        const now = performance.now();
        for (const row of rows) {
          const at = sentAt.get(row.event_id);
          if (at !== undefined) {
            latencies.push(now - at);
            sentAt.delete(row.event_id);
          }
          const offset = BigInt(row.o);
          if (offset > (high.get(row.p) ?? -1n)) high.set(row.p, offset);
        }
        if (!polling && now - lastSend > 60_000) break;
        await sleep(10);
      }
    })();
    const total = Math.round(rate * seconds);
    const begin = performance.now();
    const sends = new Set<Promise<RecordMetadata[]>>();
    let sent = 0;
    while (sent < total) {
      const due = Math.min(total, Math.floor(((performance.now() - begin) * rate) / 1000) + 1);
      if (due > sent) {
        const messages = [];
        for (; sent < due; sent++) {
          const event = eventOf(agents, backlog + sent);
          messages.push({ key: event.agentId, value: encode(event), headers: { 'event-id': event.eventId } });
          sentAt.set(event.eventId, performance.now());
        }
        const send = producer.send({ topic, acks: -1, messages });
        sends.add(send);
        void send.finally(() => sends.delete(send));
      }
      lastSend = performance.now();
      await sleep(5);
    }
    await Promise.all(sends);
    polling = false;
    await poller;
    latencies.sort((a, b) => a - b);
    const achieved = total / ((lastSend - begin) / 1000);
    console.log(`latency: ${total} events at ${rate}/s for ${seconds} s (achieved ${Math.round(achieved)}/s); ${latencies.length} found in the index, ${sentAt.size} not within 60 s`);
    console.log(`  send → queryable: p50 = ${percentile(latencies, 50).toFixed(0)} ms, p99 = ${percentile(latencies, 99).toFixed(0)} ms, max = ${(latencies.at(-1) ?? NaN).toFixed(0)} ms`);
    const steadyInserts = (await service.metric(METRIC.indexCount)) - insertsBefore;
    const steadyIndexMs = (1000 * ((await service.metric(METRIC.indexSum)) - indexSecondsBefore)) / Math.max(1, steadyInserts);
    console.log(`  the archiver's index INSERTs meanwhile: ${steadyInserts} (${Math.round(total / Math.max(1, steadyInserts))} events each), ${steadyIndexMs.toFixed(0)} ms each on average`);
    console.log(`audit ingest p95 = ${percentile(latencies, 95).toFixed(0)} ms`);
    const ratio = archiverRate / raw;
    const p95 = percentile(latencies, 95);
    console.log(`goals: archiver/raw ≥ 0.7 → ${ratio >= 0.7 ? 'met' : 'NOT met'}; audit ingest p95 < 250 ms → ${p95 < 250 && sentAt.size === 0 ? 'met' : 'NOT met'}`);
  } finally {
    await service?.stop();
    await producer.disconnect();
    await db.end();
    if (!values.keep) await cleanup(kafka, config.DATABASE_URL, config.SCHEMA_REGISTRY_URL, prefix, schema, bucket);
    s3.destroy();
  }

  async function cleanup(admin: Kafka, databaseUrl: string, registryUrl: string, topicPrefix: string, dbSchema: string, from: string): Promise<void> {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${dbSchema} CASCADE`);
    await client.end();
    const kafkaAdmin = admin.admin();
    await kafkaAdmin.connect();
    const mine = (await kafkaAdmin.listTopics()).filter((t) => t.startsWith(topicPrefix));
    if (mine.length > 0) await kafkaAdmin.deleteTopics({ topics: mine });
    await deleteAcls(kafkaAdmin, aclPlan({ prefix: topicPrefix })).catch(() => undefined);
    await kafkaAdmin.disconnect();
    for (const name of TOPICS) {
      const url = `${registryUrl}/subjects/${encodeURIComponent(`${topicPrefix}${name}-value`)}`;
      await fetch(url, { method: 'DELETE' }).catch(() => undefined);
      await fetch(`${url}?permanent=true`, { method: 'DELETE' }).catch(() => undefined);
    }
    await removeTestBucket(s3, from);
  }
}
