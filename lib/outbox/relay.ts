import pg from 'pg';
import type { Pool } from '../db/pool.ts';
import type { Headers, ProducerClient } from '../kafka/types.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { errorMessage } from '../errors.ts';
import { settlesWithin } from '../runtime/shutdown.ts';
import { OUTBOX_CHANNEL } from './outbox.ts';
import { parseTraceparent } from '../tracing.ts';
import { inSpan, linkTo, SpanKind, telemetryActive } from '../telemetry.ts';
import type { Link } from '@opentelemetry/api';

export interface OutboxRelayOptions {
  /** Housekeeping only (pruning, backlog metrics); rounds run on the lock holder's own connection. */
  readonly pool: Pool;
  /** A dedicated connection string for LISTEN, the relay's advisory lock and every round. */
  readonly databaseUrl: string;
  readonly schema?: string;
  readonly producer: ProducerClient;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Rows published per round. Default 500. */
  readonly batchSize?: number;
  /** Longest wait between rounds when no notification arrives. Default 500 ms. */
  readonly pollIntervalMs?: number;
  /** Test hook: runs after a round is published and before it is marked published. */
  readonly afterPublish?: (eventIds: readonly string[]) => Promise<void>;
  /** Published rows are deleted once older than this (the table stays small). Default 1 hour. */
  readonly retainPublishedMs?: number;
  /** How long `stop()` waits for the round in flight. Default 10 s. */
  readonly stopWaitMs?: number;
}

interface OutboxRow {
  id: string;
  event_id: string;
  topic: string;
  key: string;
  value: Buffer;
  headers: Headers;
}

// One relay at a time publishes each outbox table (a session advisory lock on the pair (this key,
// the table's schema)), which keeps the per-key order of the table; relays of other schemas (other
// deployments or tests sharing the database) do not wait for it.
const RELAY_LOCK_KEY = 0x0a6e_7001;

export interface OutboxRelay {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Publishes what is pending now; resolves with the number of rows published. */
  drainOnce(): Promise<number>;
}

export function createOutboxRelay(options: OutboxRelayOptions): OutboxRelay {
  const log = options.logger.child({ component: 'outbox-relay' });
  const batchSize = options.batchSize ?? 500;
  const pollIntervalMs = options.pollIntervalMs ?? 500;
  let running = false;
  let loop: Promise<void> | undefined;
  let wake: (() => void) | undefined;
  /** The lock holder's connection, while a session lives (a stop that cannot wait ends it). */
  let sessionClient: pg.Client | undefined;
  const stopWaitMs = options.stopWaitMs ?? 10_000;

  /**
   * One round on `db`, the connection that holds the relay lock: select, publish, mark. The lock
   * lives with that session, so a relay whose session ended cannot mark anything (its UPDATE has no
   * connection to run on), and one that noticed the loss (`lost()`) publishes nothing more.
   */
  async function publishRound(db: pg.Client, lost: () => Error | undefined): Promise<number> {
    const { rows } = await db.query<OutboxRow>(
      'SELECT id, event_id, topic, key, value, headers FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1',
      [batchSize],
    );
    if (rows.length === 0) return 0;
    const gone = lost();
    if (gone) throw gone;
    // One send per topic, rows in table order within it: that keeps the order per key (a key's
    // events are ordered within their topic; there is no order across topics to keep).
    const byTopic = new Map<string, OutboxRow[]>();
    for (const row of rows) {
      const list = byTopic.get(row.topic);
      if (list) list.push(row);
      else byTopic.set(row.topic, [row]);
    }
    if (telemetryActive()) {
      for (const [topic, slice] of byTopic) {
        const records = slice.map((r) => ({ key: r.key, value: r.value, headers: r.headers }));
        // One `produce` span per send, linked to the trace of every event it publishes.
        const links: Link[] = [];
        for (const r of slice) {
          const parent = parseTraceparent(r.headers.traceparent);
          if (parent) links.push(linkTo(parent));
        }
        await inSpan(
          'produce',
          { kind: SpanKind.PRODUCER, links, attributes: { 'messaging.system': 'kafka', 'messaging.operation.type': 'send', 'messaging.destination.name': topic, 'messaging.batch.message_count': slice.length } },
          () => options.producer.send(topic, records),
        );
      }
    } else {
      // Every topic of the round in one produce request: one round trip per round.
      await options.producer.sendMany([...byTopic].map(([topic, slice]) => ({ topic, records: slice.map((r) => ({ key: r.key, value: r.value, headers: r.headers })) })));
    }
    for (const [topic, slice] of byTopic) options.metrics.outboxPublished.inc({ topic }, slice.length);
    await options.afterPublish?.(rows.map((r) => r.event_id));
    await db.query('UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])', [rows.map((r) => r.id)]);
    return rows.length;
  }

  async function updateBacklogMetrics(): Promise<void> {
    const { rows } = await options.pool.query<{ backlog: string; oldest: number | null }>(
      'SELECT count(*) AS backlog, extract(epoch FROM now() - min(created_at))::float8 AS oldest FROM outbox WHERE published_at IS NULL',
    );
    options.metrics.outboxBacklog.set(Number(rows[0]?.backlog ?? 0));
    options.metrics.outboxOldestAgeSeconds.set(rows[0]?.oldest ?? 0);
  }

  const waitForWork = () =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, pollIntervalMs);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  const retainPublishedMs = options.retainPublishedMs ?? 3_600_000;
  /** Deletes published rows past retention, a bounded number a minute (they are in Kafka now). */
  async function prunePublished(): Promise<void> {
    const { rowCount } = await options.pool.query(
      `DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at < now() - make_interval(secs => $1 / 1000.0) LIMIT 10000)`,
      [retainPublishedMs],
    );
    if (rowCount) log.debug({ rows: rowCount }, 'published outbox rows pruned');
  }

  const pruneEveryMinute = atMostEvery(60_000, prunePublished);
  const backlogMetricsEverySecond = atMostEvery(1_000, updateBacklogMetrics);

  /** Publishes rounds on `db` while `active()` holds. */
  async function run(db: pg.Client, active: () => boolean, lost: () => Error | undefined): Promise<void> {
    while (active()) {
      try {
        const published = await publishRound(db, lost);
        // Housekeeping on a clock, not per round: rounds come as fast as transactions commit.
        await pruneEveryMinute();
        await backlogMetricsEverySecond();
        if (published < batchSize) await waitForWork();
      } catch (error) {
        log.error({ err: errorMessage(error) }, 'outbox round failed; retrying');
        await waitForWork();
      }
    }
  }

  /**
   * One session: a connection that takes the relay lock (waiting for it in the background, so a
   * second service on the same database stands by without delaying its own start), LISTENs, and
   * publishes for as long as it lives. The lock lives with the connection: if it drops (a Postgres
   * restart), publishing stops at once and a new session takes the lock again.
   */
  async function session(): Promise<void> {
    const client = dedicatedClient();
    sessionClient = client;
    let lost: Error | undefined;
    // A server restart or pg_terminate_backend (57P01) arrives as 'error' on an idle connection (an
    // unhandled 'error' would end the process) or as the failure of the query in flight, then 'end'.
    const onLost = (error: Error) => {
      lost ??= error;
      wake?.();
    };
    client.on('error', onLost);
    client.on('end', () => onLost(new Error('the relay connection ended')));
    const alive = () => running && lost === undefined;
    try {
      await client.connect();
      let locked = false;
      while (alive() && !locked) {
        const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1::int, hashtext(current_schema())) AS locked', [RELAY_LOCK_KEY]);
        locked = rows[0]?.locked === true;
        if (!locked) await waitForWork();
      }
      if (!alive()) return;
      client.on('notification', () => wake?.());
      await client.query(`LISTEN ${OUTBOX_CHANNEL}`);
      log.info('outbox relay publishing (holds the relay lock)');
      await run(client, alive, () => lost);
      if (lost) log.warn({ err: lost.message }, 'outbox relay lost its database connection (and lock); taking it again');
    } finally {
      if (sessionClient === client) sessionClient = undefined;
      await client.end().catch(() => undefined);
    }
  }

  function dedicatedClient(): pg.Client {
    return new pg.Client({
      connectionString: options.databaseUrl,
      // Names the lock holder in pg_stat_activity (and lets tests find it).
      application_name: `outbox-relay:${options.schema ?? 'public'}`.slice(0, 63),
      ...(options.schema ? { options: `-c search_path=${options.schema},public` } : {}),
    });
  }

  /** One round under the lock, on a connection of its own; 0 when another relay holds the lock. */
  async function drainOnce(): Promise<number> {
    const client = dedicatedClient();
    let lost: Error | undefined;
    client.on('error', (error) => (lost ??= error));
    try {
      await client.connect();
      const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1::int, hashtext(current_schema())) AS locked', [RELAY_LOCK_KEY]);
      if (rows[0]?.locked !== true) return 0;
      return await publishRound(client, () => lost);
    } finally {
      // Ending the session releases the lock.
      await client.end().catch(() => undefined);
    }
  }

  return {
    drainOnce,
    async start() {
      running = true;
      loop = (async () => {
        while (running) {
          try {
            await session();
          } catch (error) {
            log.warn({ err: errorMessage(error) }, 'outbox relay session failed; retrying');
          }
          if (running) await waitForWork();
        }
      })();
      log.info('outbox relay running');
    },
    async stop() {
      running = false;
      wake?.();
      // The round in flight finishes (its rows are marked, or published again by the next relay);
      // bounded, since a round waits on Postgres and Kafka.
      if (loop && !(await settlesWithin(loop, stopWaitMs))) {
        log.warn({ waitedMs: stopWaitMs }, 'the outbox round in flight did not finish in time; its rows stay unmarked and are published again (at least once)');
        void sessionClient?.end().catch(() => undefined);
        return;
      }
      log.info('outbox relay stopped');
    },
  };
}

/** `work`, run at most once per `intervalMs` (calls in between do nothing). */
function atMostEvery(intervalMs: number, work: () => Promise<void>): () => Promise<void> {
  let lastRunAt = Number.NEGATIVE_INFINITY;
  return async () => {
    if (Date.now() - lastRunAt < intervalMs) return;
    lastRunAt = Date.now();
    await work();
  };
}
