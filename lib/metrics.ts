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
    /** Retries of a record because a dependency was down (not counted toward the DLQ budget), by topic and dependency. */
    dependencyWaits: new Counter({ name: 'agent_manager_dependency_waits_total', help: 'Record retries while a dependency was unavailable', labelNames: ['topic', 'dependency'], registers }),
    /** Partitions held because a dependency is down; while any is above 0, /readyz fails. */
    dependencyBlockedPartitions: new Gauge({ name: 'agent_manager_dependency_blocked_partitions', help: 'Partitions waiting for an unavailable dependency', labelNames: ['topic', 'dependency'], registers }),
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
    /** Requests decided by ingest, by source (kafka, api), outcome and rejection code ('' when accepted). */
    requestsDecided: new Counter({ name: 'agent_manager_requests_total', help: 'Requests accepted or rejected by ingest', labelNames: ['source', 'outcome', 'code'], registers }),
    /** Lifecycle transitions applied by the provisioner. */
    lifecycleTransitions: new Counter({ name: 'agent_manager_lifecycle_transitions_total', help: 'Agent state transitions', labelNames: ['from', 'to'], registers }),
    /** Commands and internal events the lifecycle refused, by code. */
    lifecycleRejections: new Counter({ name: 'agent_manager_lifecycle_rejections_total', help: 'Lifecycle inputs refused', labelNames: ['input', 'code'], registers }),
    /** Policy decisions before provisioning, by result and source (local, remote). */
    policyDecisions: new Counter({ name: 'agent_manager_policy_decisions_total', help: 'SentinelNet policy decisions', labelNames: ['allow', 'source'], registers }),
    /** Heartbeats processed by the heartbeat service, by outcome (tracked, resumed, ignored: unknown, stopped or destroyed agents). */
    heartbeatsReceived: new Counter({ name: 'agent_manager_heartbeats_total', help: 'Heartbeats processed', labelNames: ['outcome'], registers }),
    /** Agents declared lapsed (HEARTBEAT_MISSED). */
    heartbeatLapses: new Counter({ name: 'agent_manager_heartbeat_lapses_total', help: 'Heartbeat deadlines lapsed', registers }),
    /** Lapsed agents whose heartbeats came back (HEARTBEAT_RESUMED). */
    heartbeatResumes: new Counter({ name: 'agent_manager_heartbeat_resumes_total', help: 'Lapsed agents heartbeating again', registers }),
    /** Commands the heartbeat service produced, by command. */
    heartbeatCommands: new Counter({ name: 'agent_manager_heartbeat_commands_total', help: 'Commands produced by the heartbeat service', labelNames: ['command'], registers }),
    /** Agents tracked on the partitions this process owns (healthy and lapsed). */
    heartbeatTrackedAgents: new Gauge({ name: 'agent_manager_heartbeat_tracked_agents', help: 'Agents tracked by this heartbeat process', registers }),
    /** Deadline → HEARTBEAT_MISSED produced, seconds. */
    heartbeatDetectionSeconds: new Histogram({
      name: 'agent_manager_heartbeat_detection_seconds',
      help: 'Delay from a missed deadline to HEARTBEAT_MISSED produced',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    /** 1 while the mass-failure guard holds recovers. */
    heartbeatMassFailure: new Gauge({ name: 'agent_manager_heartbeat_mass_failure', help: 'Mass failure detected: recovers held (1 = on)', registers }),
    /** Recovers waiting (held by the guard or the rate limit). */
    heartbeatRecoversHeld: new Gauge({ name: 'agent_manager_heartbeat_recovers_held', help: 'RECOVER commands waiting to be sent', registers }),
    /** Audit events written to the index (new rows; a redelivered event is not counted again). */
    archiverEventsIndexed: new Counter({ name: 'agent_manager_archiver_events_indexed_total', help: 'Audit events added to the index', registers }),
    /** Audit events in archive files made durable by this process (uploaded, or found already there). */
    archiverEventsArchived: new Counter({ name: 'agent_manager_archiver_events_archived_total', help: 'Audit events archived to S3', registers }),
    /** Archive files written, by why they were cut (count, bytes, window, day, idle, day-close) and outcome (uploaded, existing). */
    archiverFiles: new Counter({ name: 'agent_manager_archiver_files_total', help: 'Archive files written', labelNames: ['reason', 'outcome'], registers }),
    /** Bytes of archive files written. */
    archiverBytes: new Counter({ name: 'agent_manager_archiver_bytes_total', help: 'Bytes of archive files written', registers }),
    /** One archive file's upload (PutObject with its checksum), seconds. */
    archiverUploadSeconds: new Histogram({
      name: 'agent_manager_archiver_upload_duration_seconds',
      help: 'Archive file upload latency',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    /** One batch's index insert (one statement), seconds. */
    archiverIndexSeconds: new Histogram({
      name: 'agent_manager_archiver_index_duration_seconds',
      help: 'Audit index insert latency per Kafka batch',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    }),
    /** Days not closed yet on the partitions this process owns (distinct days). */
    archiverOpenDays: new Gauge({ name: 'agent_manager_archiver_open_days', help: 'Archive days still open on owned partitions', registers }),
    /** Records read but not in a durable archive file yet, per partition (the archive's lag behind the consumer). */
    archiverBufferedRecords: new Gauge({ name: 'agent_manager_archiver_buffered_records', help: 'Records read but not archived yet', labelNames: ['partition'], registers }),
    /** Closed archive days without a signed manifest yet (waiting: signing down, safe mode, or the backlog). */
    archiverManifestsPending: new Gauge({ name: 'agent_manager_archiver_manifests_pending', help: 'Closed audit days waiting for their signed manifest', registers }),
    /** Signed daily manifests written by this process. */
    archiverManifestsWritten: new Counter({ name: 'agent_manager_archiver_manifests_written_total', help: 'Signed audit day manifests written', registers }),
    /** Attempts to write a day's manifest that failed (retried with backoff), by error code. */
    archiverManifestFailures: new Counter({ name: 'agent_manager_archiver_manifest_failures_total', help: 'Failed attempts to write a signed audit day manifest', labelNames: ['code'], registers }),
    /** Signatures made (lib/signing), by result (ok, failed). */
    signingOperations: new Counter({ name: 'agent_manager_signing_operations_total', help: 'Signing operations', labelNames: ['result'], registers }),
    /** One signature (local, or a Vault Transit round trip), seconds. */
    signingSeconds: new Histogram({
      name: 'agent_manager_signing_duration_seconds',
      help: 'Signing latency',
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    }),
    /** Scheduled or requested signing key rotations that failed. */
    keyRotationFailures: new Counter({ name: 'agent_manager_key_rotation_failures_total', help: 'Signing key rotations that failed', registers }),
    /** Creation time of the signing key's latest version (its last successful rotation), Unix seconds. */
    signingKeyLastRotation: new Gauge({ name: 'agent_manager_signing_key_last_rotation_timestamp_seconds', help: 'When the signing key was last rotated', registers }),
    /** 1 while safe mode is on, as this process last read it. */
    safeMode: new Gauge({ name: 'agent_manager_safe_mode', help: 'Safe mode (1 = on)', registers }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
