import pg from 'pg';
import type { Pool } from '../db/pool.ts';
import type { Headers, ProducerClient } from '../kafka/types.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { errorMessage } from '../errors.ts';
import { OUTBOX_CHANNEL } from './outbox.ts';

export interface OutboxRelayOptions {
  readonly pool: Pool;
  /** A dedicated connection string for LISTEN and the relay's advisory lock. */
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
}

interface OutboxRow {
  id: string;
  event_id: string;
  topic: string;
  key: string;
  value: Buffer;
  headers: Headers;
}

// One relay at a time publishes (a session advisory lock), which keeps the per-key order of the table.
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
  let listener: pg.Client | undefined;

  async function publishRound(): Promise<number> {
    const { rows } = await options.pool.query<OutboxRow>(
      'SELECT id, event_id, topic, key, value, headers FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1',
      [batchSize],
    );
    if (rows.length === 0) return 0;
    // Consecutive rows of one topic go in one send; topics keep the table's order between them.
    let start = 0;
    while (start < rows.length) {
      const topic = rows[start]?.topic ?? '';
      let end = start;
      while (end < rows.length && rows[end]?.topic === topic) end++;
      const slice = rows.slice(start, end);
      await options.producer.send(topic, slice.map((r) => ({ key: r.key, value: r.value, headers: r.headers })));
      for (const r of slice) options.metrics.outboxPublished.inc({ topic: r.topic });
      start = end;
    }
    await options.afterPublish?.(rows.map((r) => r.event_id));
    await options.pool.query('UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])', [rows.map((r) => r.id)]);
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

  async function run(): Promise<void> {
    while (running) {
      try {
        const published = await publishRound();
        await updateBacklogMetrics();
        if (published < batchSize) await waitForWork();
      } catch (error) {
        log.error({ err: errorMessage(error) }, 'outbox round failed; retrying');
        await waitForWork();
      }
    }
  }

  return {
    drainOnce: publishRound,
    async start() {
      listener = new pg.Client({
        connectionString: options.databaseUrl,
        ...(options.schema ? { options: `-c search_path=${options.schema},public` } : {}),
      });
      await listener.connect();
      // Waits for the lock: a second relay stands by until the first one goes away.
      let locked = false;
      while (!locked) {
        const { rows } = await listener.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [RELAY_LOCK_KEY]);
        locked = rows[0]?.locked === true;
        if (!locked) await new Promise((r) => setTimeout(r, pollIntervalMs));
      }
      listener.on('notification', () => wake?.());
      await listener.query(`LISTEN ${OUTBOX_CHANNEL}`);
      running = true;
      loop = run();
      log.info('outbox relay running');
    },
    async stop() {
      running = false;
      wake?.();
      await loop;
      await listener?.end().catch(() => undefined);
      log.info('outbox relay stopped');
    },
  };
}
