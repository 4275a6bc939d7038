/**
 * The archiver: every audit event indexed in Postgres within a batch and archived to object-locked
 * S3 exactly once.
 *
 * - One batch worker reads `audit-events` (raw records: the value bytes as produced, ordered
 *   headers); a record that is not an audit event the index can hold goes to `audit-events.dlq`,
 *   record by record. A valid event is never dead-lettered: any failure to index or archive it
 *   holds its partition (retried with backoff, /readyz failing) until it clears.
 * - Per Kafka batch: one idempotent INSERT of the batch's index rows, then the partition's
 *   PartitionArchiver buffers the records and writes every file they complete
 *   (`<prefix>/dt=DAY/p=P/<first>-<last>.avro`, cut by count, size, flush window or day).
 * - Commits follow the archive, not the consumer: the handler returns the first record not in a
 *   durable file as the partition's commit limit, so a crash re-reads exactly what is not archived.
 * - On assignment, each new partition resumes after its highest archived file in S3 (the source of
 *   truth); lower records re-read from the last commit are skipped. Files are cut as a function of
 *   the records alone, so a re-read after a crash or a rebalance makes the same files with the same
 *   bytes, and an upload that finds its object already there is a no-op.
 * - A timer (`ARCHIVE_TICK_MS`) cuts the last file of an idle, caught-up partition and closes its
 *   days by the clock, then commits past the file (`commitUpTo`).
 * - Each file carries the partition's hash chain; with a signer configured (AUDIT_MANIFESTS), closed
 *   days get a signed manifest (./manifests.ts: in day order, one archiver at a time, suspended in
 *   safe mode), and the lease holder among the archivers runs the scheduled key rotation.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { insertAuditIndex } from '../../lib/archive/index-store.ts';
import { createPostgresLease } from '../../lib/leader/postgres-lease.ts';
import { createSignerFromConfig } from '../../lib/signing/config.ts';
import { startKeyRotationSchedule } from '../../lib/signing/rotation.ts';
import type { Signer } from '../../lib/signing/signer.ts';
import { createS3Client } from '../../lib/archive/s3.ts';
import { errorCode, errorMessage, permanentError, unavailableDependency, unavailableError } from '../../lib/errors.ts';
import { createBatchWorker, type BatchResult, type BatchWorker, type DecodedBatch } from '../../lib/runtime/batch-worker.ts';
import type { ServiceContext } from '../../lib/service/context.ts';
import { archiverRotationLimits, loadArchiverConfig, type ArchiverConfig } from './config.ts';
import { indexEntriesOf, validateAuditEvent, type AuditEvent } from './handler.ts';
import { startManifestSigner, type ManifestSigner } from './manifests.ts';
import { PartitionArchiver, type ArchiverRecord, type PartitionArchiverDeps } from './partition.ts';
import { archiveStore, registryWriterSchemas, resumePoint } from './store.ts';

export { loadArchiverConfig, type ArchiverConfig };

export interface ArchiverOptions {
  /** Consumer group; default `<prefix>agent-manager-archiver`. */
  readonly groupId?: string;
  /** An S3 client to use instead of one built from the settings (closed by its owner). */
  readonly s3?: S3Client;
  /** A signer to use instead of the configured one (when AUDIT_MANIFESTS is on). */
  readonly signer?: Signer;
}

export interface RunningArchiver {
  readonly worker: BatchWorker;
  /** The manifest signing loop, when AUDIT_MANIFESTS is on. */
  readonly manifests: ManifestSigner | undefined;
  /** Partitions owned with their archiver ready. */
  owned(): readonly number[];
  /** Stops the tick timer and the worker (also a shutdown step of the context). */
  stop(): Promise<void>;
}

interface Owned {
  /** The partition's archiver, once its resume point is read (retried after a failure). */
  archiver: PartitionArchiver | undefined;
  loading: Promise<PartitionArchiver> | undefined;
  /** Batches and ticks of the partition, one at a time. */
  chain: Promise<unknown>;
  revoked: boolean;
}

/** Wires the archiver into a service context (which must have Postgres): worker, partitions, tick timer. */
export async function startArchiver(ctx: ServiceContext, config: ArchiverConfig, options: ArchiverOptions = {}): Promise<RunningArchiver> {
  const db = ctx.pool;
  if (!db) throw permanentError('SERVICE_WIRING', 'the archiver needs a context with Postgres');
  const { logger, metrics } = ctx;
  const log = logger.child({ component: 'archiver' });
  const topic = ctx.topics['audit-events'];
  const prefix = config.ARCHIVE_PREFIX;
  const bucket = config.ARCHIVE_BUCKET;
  const s3 = options.s3 ?? createS3Client(config);
  const limits = archiverRotationLimits(config);
  const writerSchema = registryWriterSchemas(ctx.config.SCHEMA_REGISTRY_URL);
  const partitions = new Map<number, Owned>();
  let partitionCount: number | undefined;
  /** While a rebalance is under way: what this member owns may be another's, so no clock-driven cut. */
  let rebalancing = false;

  /** The topic's partition count: a day closes when all of them have closed it. */
  async function countPartitions(): Promise<number> {
    if (partitionCount !== undefined) return partitionCount;
    const ends = worker.latestOffsets(topic);
    if (ends === undefined) throw permanentError('SERVICE_WIRING', 'the archiver needs a Kafka client that reads log ends');
    let read: ReadonlyMap<number, bigint>;
    try {
      read = await ends;
    } catch (error) {
      throw unavailableError('kafka', 'KAFKA_METADATA_UNAVAILABLE', `partitions of ${topic}: ${errorMessage(error)}`, error);
    }
    if (read.size === 0) throw unavailableError('kafka', 'KAFKA_METADATA_UNAVAILABLE', `no partitions found for ${topic}`);
    partitionCount = read.size;
    return partitionCount;
  }

  function depsOf(count: number): PartitionArchiverDeps {
    const store = archiveStore({ s3, bucket, db: db as NonNullable<typeof db>, registryUrl: ctx.config.SCHEMA_REGISTRY_URL, partitionCount: count }, writerSchema);
    return {
      ...store,
      async putObject(key, body) {
        const end = metrics.archiverUploadSeconds.startTimer();
        try {
          return await store.putObject(key, body);
        } finally {
          end();
        }
      },
      fileWritten(file) {
        metrics.archiverFiles.inc({ reason: file.reason, outcome: file.outcome });
        metrics.archiverBytes.inc(file.bytes);
        metrics.archiverEventsArchived.inc(file.count);
        log.debug({ key: file.key, reason: file.reason, count: file.count, bytes: file.bytes, outcome: file.outcome }, 'archive file durable');
      },
    };
  }

  function archiverOf(partition: number, owned: Owned): Promise<PartitionArchiver> {
    if (owned.archiver) return Promise.resolve(owned.archiver);
    owned.loading ??= (async () => {
      const count = await countPartitions();
      const resume = await resumePoint(s3, bucket, prefix, db as NonNullable<typeof db>, partition, {
        chainRecomputed: (info) => log.info(info, 'the partition\'s last file has no hash chain (written before it came in): chain recomputed from its files, their rows filled in'),
      });
      const archiver = new PartitionArchiver({ topic, partition, prefix, limits, dayGraceMs: config.ARCHIVE_DAY_GRACE_MS }, depsOf(count), resume);
      owned.archiver = archiver;
      log.info({ partition, nextOffset: resume.nextOffset, lastFileDay: resume.lastFileDay, openDay: resume.openDay }, 'partition resumes after its last archived file');
      return archiver;
    })().finally(() => {
      owned.loading = undefined;
    });
    return owned.loading;
  }

  /** Runs `work` after the partition's earlier batches and ticks. */
  function serially<T>(owned: Owned, work: () => Promise<T>): Promise<T> {
    const run = owned.chain.then(work, work);
    owned.chain = run.catch(() => undefined);
    return run;
  }

  function updateGauges(): void {
    const open = new Set<string>();
    for (const [partition, owned] of partitions) {
      const archiver = owned.archiver;
      if (!archiver) continue;
      if (archiver.openDay !== undefined) open.add(archiver.openDay);
      metrics.archiverBufferedRecords.set({ partition: String(partition) }, archiver.bufferedCount);
    }
    metrics.archiverOpenDays.set(open.size);
  }

  /**
   * A valid event is never dead-lettered: the DLQ is for records that are not audit events. A
   * failure to index or archive one (S3 refusing, an object conflict, a bug) holds the partition as
   * an unavailable dependency until it clears or someone looks (/readyz fails meanwhile).
   */
  async function handle(batch: DecodedBatch<AuditEvent>): Promise<BatchResult> {
    try {
      return await archiveBatch(batch);
    } catch (error) {
      if (unavailableDependency(error) !== undefined) throw error;
      throw unavailableError('archive', errorCode(error), `${topic}[${batch.partition}] from offset ${batch.records[0]?.offset ?? '?'}: ${errorMessage(error)}`, error);
    }
  }

  async function archiveBatch(batch: DecodedBatch<AuditEvent>): Promise<BatchResult> {
    const owned = partitions.get(batch.partition);
    // Assignment comes before a partition's first batch; a batch without it is from a stale fetch.
    if (!owned || owned.revoked) throw unavailableError('kafka', 'ARCHIVER_NOT_ASSIGNED', `${topic}[${batch.partition}] is not assigned to this archiver`);
    const archiver = await archiverOf(batch.partition, owned);
    const end = metrics.archiverIndexSeconds.startTimer();
    const inserted = await insertAuditIndex(db as NonNullable<typeof db>, indexEntriesOf(batch));
    end();
    metrics.archiverEventsIndexed.inc(inserted);
    const records: ArchiverRecord[] = batch.records.map((r) => {
      if (r.raw === undefined) throw permanentError('SERVICE_WIRING', 'the archiver needs raw records');
      return { offset: Number(r.offset), timestamp: Number(r.timestamp), key: r.raw.key, headers: r.raw.headers, value: r.raw.value };
    });
    await serially(owned, () => archiver.add(records));
    updateGauges();
    // Nothing buffered: everything handled may be committed (the high watermark bounds nothing).
    const committable = archiver.committable();
    return { commitLimit: committable === undefined ? BigInt(batch.highWatermark) : BigInt(committable) };
  }

  const worker: BatchWorker = createBatchWorker<AuditEvent, undefined>(
    {
      service: ctx.service,
      topics: [topic],
      groupId: options.groupId ?? `${ctx.config.TOPIC_PREFIX}agent-manager-archiver`,
      deps: undefined,
      handler: handle,
      validate: (value) => validateAuditEvent(value),
      rawRecords: true,
      concurrency: config.ARCHIVER_CONCURRENCY,
      sessionTimeoutMs: config.ARCHIVER_SESSION_TIMEOUT_MS,
      heartbeatIntervalMs: Math.max(100, Math.floor(config.ARCHIVER_SESSION_TIMEOUT_MS / 5)),
      retry: ctx.workerRetry,
      onRebalancing: () => {
        rebalancing = true;
      },
      onAssignment: ({ assigned }) => {
        rebalancing = false;
        const now = assigned[topic] ?? [];
        for (const [partition, owned] of partitions) {
          if (now.includes(partition)) continue;
          // Its buffered records are not committed: the next owner re-reads them.
          owned.revoked = true;
          partitions.delete(partition);
          metrics.archiverBufferedRecords.remove({ partition: String(partition) });
        }
        for (const partition of now) {
          if (partitions.has(partition)) continue;
          const owned: Owned = { archiver: undefined, loading: undefined, chain: Promise.resolve(), revoked: false };
          partitions.set(partition, owned);
          // Read the resume point now; a failure is retried by the partition's first batch or tick.
          archiverOf(partition, owned).catch((error: unknown) => log.warn({ partition, code: errorCode(error), err: errorMessage(error) }, 'reading the resume point failed; retrying'));
        }
        updateGauges();
      },
    },
    { kafka: ctx.kafka, codec: ctx.codec, producer: ctx.producer, logger, metrics },
  );

  let ticking = false;
  async function tick(): Promise<void> {
    if (ticking || rebalancing || worker.state() !== 'RUNNING') return;
    ticking = true;
    try {
      const ends = await (worker.latestOffsets(topic) ?? Promise.resolve(new Map<number, bigint>())).catch((error: unknown) => {
        log.warn({ err: errorMessage(error) }, 'reading the log ends failed; no partition counts as caught up this tick');
        return new Map<number, bigint>();
      });
      const now = Date.now();
      for (const [partition, owned] of [...partitions]) {
        if (rebalancing) break;
        if (owned.revoked) continue;
        try {
          const archiver = await archiverOf(partition, owned);
          const progress = worker.progress(topic, partition);
          const end = ends.get(partition);
          const caughtUp = progress !== undefined && end !== undefined && progress.next >= end;
          await serially(owned, () => archiver.tick(now, caughtUp));
          if (owned.revoked || progress === undefined) continue;
          const committable = archiver.committable();
          await worker.commitUpTo(topic, partition, committable === undefined ? progress.next : BigInt(committable));
        } catch (error) {
          if (errorCode(error) === 'WORKER_NOT_OWNER') continue;
          log.warn({ partition, code: errorCode(error), err: errorMessage(error) }, 'archiver tick failed; retried next tick');
        }
      }
      updateGauges();
    } finally {
      ticking = false;
    }
  }

  await worker.start();
  const timer = setInterval(() => void tick(), config.ARCHIVE_TICK_MS);

  let manifests: ManifestSigner | undefined;
  const stopSigning: (() => Promise<void>)[] = [];
  if (config.AUDIT_MANIFESTS === 'on') {
    const signer = options.signer ?? createSignerFromConfig(config, { metrics });
    manifests = startManifestSigner({
      s3,
      bucket,
      prefix,
      db,
      signer,
      logger,
      metrics,
      intervalMs: config.AUDIT_MANIFEST_INTERVAL_MS,
      retryMinMs: config.AUDIT_MANIFEST_RETRY_MIN_MS,
      retryMaxMs: config.AUDIT_MANIFEST_RETRY_MAX_MS,
    });
    const signing = manifests;
    stopSigning.push(() => signing.stop());
    if (config.AUDIT_KEY_ROTATION_INTERVAL > 0) {
      // One archiver rotates (each would add a version): the holder of a Postgres lease, not in safe mode.
      const lease = createPostgresLease({ pool: db, name: `${ctx.config.TOPIC_PREFIX}archiver-key-rotation`, identity: ctx.config.INSTANCE_ID, logger });
      lease.start();
      const rotation = startKeyRotationSchedule({ signer, intervalMs: config.AUDIT_KEY_ROTATION_INTERVAL, metrics, logger, enabled: () => lease.state().leader && !signing.suspended() });
      stopSigning.push(async () => rotation.stop(), () => lease.stop());
    }
    log.info({ signer: signer.kind, keyId: signer.keyId }, 'signed day manifests on');
  } else {
    log.warn('signed day manifests off (AUDIT_MANIFESTS=off, or no signer configured): closed days get no manifest until a signer is configured, then are signed in order');
  }

  let stopped = false;
  async function stop(): Promise<void> {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    for (const step of stopSigning) await step();
    await worker.stop();
    if (!options.s3) s3.destroy();
  }
  ctx.onShutdown(['archiver', stop]);
  log.info({ topic, bucket, prefix, limits }, 'archiver running');

  return {
    worker,
    manifests,
    owned: () => [...partitions.entries()].filter(([, o]) => o.archiver !== undefined).map(([p]) => p),
    stop,
  };
}
