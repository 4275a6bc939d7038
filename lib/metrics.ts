import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric of the project, declared once. A process creates one `Metrics` (its own registry),
 * so tests and several runtimes in one process never collide on prom-client's global registry.
 */
export function createMetrics(service: string, options: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    /** Records the handler finished (success), by topic. */
    recordsProcessed: new Counter({ name: 'agent_manager_records_processed_total', help: 'Records handled successfully', labelNames: ['topic'], registers }),
    /** Handler attempts that failed (each retry counts), by topic and error code. */
    recordsFailed: new Counter({ name: 'agent_manager_records_failed_total', help: 'Failed handler attempts', labelNames: ['topic', 'code'], registers }),
    /** Records written to `<topic>.dlq`, by source topic and error code. */
    recordsDeadLettered: new Counter({ name: 'agent_manager_records_dead_lettered_total', help: 'Records sent to the dead-letter topic', labelNames: ['topic', 'code'], registers }),
    /** Handler latency per record, seconds. */
    handlerSeconds: new Histogram({
      name: 'agent_manager_handler_duration_seconds',
      help: 'Handler latency per record',
      labelNames: ['topic'],
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    }),
    /** High watermark minus the next offset to process, per partition (updated each batch). */
    consumerLag: new Gauge({ name: 'agent_manager_consumer_lag', help: 'Records behind the high watermark', labelNames: ['topic', 'partition'], registers }),
    /** Partitions paused (backpressure, retry backoff, safe mode). */
    pausedPartitions: new Gauge({ name: 'agent_manager_paused_partitions', help: 'Partitions currently paused', labelNames: ['topic'], registers }),
    /** Outbox rows not yet published. */
    outboxBacklog: new Gauge({ name: 'agent_manager_outbox_backlog', help: 'Outbox rows waiting to be published', registers }),
    /** Age of the oldest unpublished outbox row, seconds. */
    outboxOldestAgeSeconds: new Gauge({ name: 'agent_manager_outbox_oldest_age_seconds', help: 'Age of the oldest unpublished outbox row', registers }),
    /** Outbox rows published to Kafka. */
    outboxPublished: new Counter({ name: 'agent_manager_outbox_published_total', help: 'Outbox rows published', labelNames: ['topic'], registers }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
