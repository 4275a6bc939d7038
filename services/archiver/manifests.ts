/**
 * Signed daily manifests (lib/archive/manifest.ts): once a day is closed on every partition
 * (`audit_days`), its manifest and detached signature are written next to its files, under the
 * bucket's Object Lock retention, and the day's row records them. Days are signed in order, each
 * naming the previous day's manifest hash, by one archiver at a time (a transaction-scoped advisory
 * lock per archive), and retried with backoff while Vault, S3 or Postgres fail: a day waits, nothing
 * is lost. In safe mode signing is suspended and resumes when it is lifted.
 *
 * Crash-safe: the day's row is updated last, in the transaction holding the lock. A manifest (or
 * signature) already in S3 from an attempt that died before that is taken as it is, never written
 * again (a rebuilt manifest would differ in `createdAt`, and nothing is overwritten).
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { GENESIS_CHAIN } from '../../lib/archive/chain.ts';
import { dayFileRows, lastFileRowBefore, type ArchiveFileChainRow } from '../../lib/archive/index-store.ts';
import {
  canonicalManifestBytes, canonicalSignatureBytes, MANIFEST_FORMAT, manifestKey, manifestSha256, parseManifest, parseManifestSignature, signatureKey,
  type AuditManifest, type ManifestLink, type ManifestPartition, type ManifestSignature,
} from '../../lib/archive/manifest.ts';
import { putArchiveObject } from '../../lib/archive/objects.ts';
import { s3ErrorCode, s3Failure, s3HttpStatus } from '../../lib/archive/s3.ts';
import { readSafeMode } from '../../lib/control/safe-mode.ts';
import type { Pool, PoolClient } from '../../lib/db/pool.ts';
import { errorCode, errorMessage, permanentError, retryableError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import type { Metrics } from '../../lib/metrics.ts';
import type { Signer } from '../../lib/signing/signer.ts';
import { backfillPartitionChain } from './chains.ts';

export interface ManifestContext {
  readonly s3: S3Client;
  readonly bucket: string;
  /** The archive's root in the bucket. */
  readonly prefix: string;
  readonly db: Pool;
  readonly signer: Signer;
  readonly now?: () => Date;
}

export type ManifestStep =
  | { readonly outcome: 'written'; readonly day: string; readonly key: string; readonly keyVersion: number; readonly sha256: string }
  /** Nothing closed is left unsigned. */
  | { readonly outcome: 'idle' }
  /** Another archiver holds the archive's signing lock. */
  | { readonly outcome: 'busy' };

/** The advisory lock key of an archive (bucket and root): archives sharing a database do not wait on each other. */
const LOCK_SQL = `SELECT pg_try_advisory_xact_lock(hashtextextended('agent-manager.audit-manifests:' || $1::text, 0)) AS locked`;

async function getObjectBytes(s3: S3Client, bucket: string, key: string): Promise<Buffer | undefined> {
  try {
    const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return Buffer.from(await (object.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
  } catch (error) {
    if (s3ErrorCode(error) === 'NoSuchKey' || s3HttpStatus(error) === 404) return undefined;
    throw s3Failure(`GetObject s3://${bucket}/${key}`, error, { bucket, key });
  }
}

/** A day's partitions (every one that closed it, and any with files), each with its files and the chain before the day. */
async function manifestPartitions(context: ManifestContext, client: PoolClient, day: string): Promise<ManifestPartition[]> {
  const { rows } = await client.query<{ p: number }>('SELECT kafka_partition AS p FROM audit_partition_days WHERE day = $1::date ORDER BY kafka_partition', [day]);
  let files = await dayFileRows(client, day);
  const numbers = [...new Set([...rows.map((r) => r.p), ...files.map((f) => f.partition)])].sort((a, b) => a - b);
  const before = new Map<number, ArchiveFileChainRow | undefined>();
  for (const partition of numbers) before.set(partition, await lastFileRowBefore(client, partition, day));
  // Files from before the chain came in have no chain recorded: recompute the partition's once.
  const unchained = new Set([...files, ...[...before.values()].filter((f) => f !== undefined)].filter((f) => f.firstChain === null || f.lastChain === null).map((f) => f.partition));
  if (unchained.size > 0) {
    for (const partition of unchained) await backfillPartitionChain({ s3: context.s3, bucket: context.bucket, prefix: context.prefix, db: client }, partition);
    files = await dayFileRows(client, day);
    for (const partition of unchained) before.set(partition, await lastFileRowBefore(client, partition, day));
  }
  return numbers.map((partition) => {
    const own = files.filter((f) => f.partition === partition);
    return {
      partition,
      eventCount: own.reduce((sum, f) => sum + f.recordCount, 0),
      chainBefore: before.get(partition)?.lastChain ?? GENESIS_CHAIN,
      files: own.map((f) => {
        if (f.firstChain === null || f.lastChain === null) throw permanentError('ARCHIVE_CHAIN_UNREADABLE', `${f.objectKey}: no chain recorded even after recomputing the partition's chain`);
        return { key: f.objectKey, versionId: f.versionId, sha256: f.sha256, firstOffset: f.firstOffset, lastOffset: f.lastOffset, eventCount: f.recordCount, firstChain: f.firstChain, lastChain: f.lastChain };
      }),
    };
  });
}

/** Builds (or finds, from an attempt that died before recording it) the day's manifest, signs it, writes both objects. */
async function signDay(context: ManifestContext, client: PoolClient, day: string, previous: ManifestLink | null): Promise<{ bytes: Buffer; signature: ManifestSignature }> {
  const { s3, bucket, prefix, signer } = context;
  const key = manifestKey(prefix, day);
  const sigKey = signatureKey(prefix, day);
  let bytes = await getObjectBytes(s3, bucket, key);
  let manifest: AuditManifest;
  if (bytes !== undefined) {
    manifest = parseManifest(bytes);
    if (manifest.day !== day || manifest.root !== prefix || manifest.signingKey.keyId !== signer.keyId) {
      throw permanentError('MANIFEST_CONFLICT', `s3://${bucket}/${key} holds a manifest for ${manifest.root} ${manifest.day} by key ${manifest.signingKey.keyId}, not this archive's ${day} by ${signer.keyId}: find out what wrote it`, undefined, { bucket, key });
    }
  } else {
    const version = await signer.currentVersion();
    manifest = {
      format: MANIFEST_FORMAT,
      bucket,
      root: prefix,
      day,
      partitions: await manifestPartitions(context, client, day),
      previousManifest: previous,
      signingKey: { keyId: signer.keyId, version, algorithm: 'ed25519' },
      createdAt: (context.now?.() ?? new Date()).toISOString(),
    };
    bytes = canonicalManifestBytes(manifest);
  }
  const existingSignature = await getObjectBytes(s3, bucket, sigKey);
  let signature: ManifestSignature;
  if (existingSignature !== undefined) {
    signature = parseManifestSignature(existingSignature);
  } else {
    // Signed before anything is written: with the signer down, nothing lands in S3 and the day is built afresh later.
    const envelope = await signer.sign(bytes, manifest.signingKey.version);
    if (envelope.keyId !== manifest.signingKey.keyId || envelope.keyVersion !== manifest.signingKey.version) {
      throw retryableError('MANIFEST_SIGNED_BY_OTHER_KEY', `the signer signed ${day}'s manifest with ${envelope.keyId} v${envelope.keyVersion}, the manifest names v${manifest.signingKey.version}`);
    }
    signature = { ...envelope, signedAt: (context.now?.() ?? new Date()).toISOString() };
  }
  await putArchiveObject(s3, { bucket, key, body: bytes, contentType: 'application/json' });
  if (existingSignature === undefined) await putArchiveObject(s3, { bucket, key: sigKey, body: canonicalSignatureBytes(signature), contentType: 'application/json' });
  return { bytes, signature };
}

/**
 * Signs the earliest closed day without a manifest, if this process gets the archive's lock. One day
 * per call, in one transaction: the row is updated only once both objects are in S3.
 */
export async function signNextDay(context: ManifestContext): Promise<ManifestStep> {
  let client: PoolClient;
  try {
    client = await context.db.connect();
  } catch (error) {
    throw retryableError('AUDIT_INDEX_FAILED', `manifests: connecting to Postgres: ${errorMessage(error)}`, error);
  }
  let began = false;
  try {
    await client.query('BEGIN');
    began = true;
    const { rows: lock } = await client.query<{ locked: boolean }>(LOCK_SQL, [`${context.bucket}/${context.prefix}`]);
    if (lock[0]?.locked !== true) {
      await client.query('ROLLBACK');
      return { outcome: 'busy' };
    }
    const { rows } = await client.query<{ day: string }>(`SELECT to_char(day, 'YYYY-MM-DD') AS day FROM audit_days WHERE manifest_key IS NULL ORDER BY day LIMIT 1`);
    const day = rows[0]?.day;
    if (day === undefined) {
      await client.query('COMMIT');
      return { outcome: 'idle' };
    }
    const { rows: prev } = await client.query<{ day: string; manifest_key: string; manifest_sha256: string }>(
      `SELECT to_char(day, 'YYYY-MM-DD') AS day, manifest_key, manifest_sha256 FROM audit_days WHERE day < $1::date AND manifest_key IS NOT NULL ORDER BY day DESC LIMIT 1`,
      [day],
    );
    const previous = prev[0] === undefined ? null : { day: prev[0].day, key: prev[0].manifest_key, sha256: prev[0].manifest_sha256 };
    const { bytes, signature } = await signDay(context, client, day, previous);
    const sha256 = manifestSha256(bytes);
    const key = manifestKey(context.prefix, day);
    await client.query('UPDATE audit_days SET manifest_key = $2, manifest_sha256 = $3, signed_key_version = $4, signed_at = $5 WHERE day = $1::date', [day, key, sha256, signature.keyVersion, signature.signedAt]);
    await client.query('COMMIT');
    return { outcome: 'written', day, key, keyVersion: signature.keyVersion, sha256 };
  } catch (error) {
    if (began) await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

/** Closed days without a manifest. */
export async function pendingManifests(db: Pick<Pool, 'query'>): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_days WHERE manifest_key IS NULL');
  return rows[0]?.n ?? 0;
}

export interface ManifestSignerOptions extends ManifestContext {
  readonly logger: Logger;
  readonly metrics: Pick<Metrics, 'archiverManifestsPending' | 'archiverManifestsWritten' | 'archiverManifestFailures'>;
  /** Between passes when all is signed. */
  readonly intervalMs: number;
  /** First retry delay after a failure, doubling up to `retryMaxMs`. */
  readonly retryMinMs: number;
  readonly retryMaxMs: number;
}

export interface ManifestSigner {
  /** Runs a pass now (also what the timer runs); resolves when it ends. Never throws. */
  pass(): Promise<void>;
  /** Whether the last pass found safe mode on. */
  suspended(): boolean;
  stop(): Promise<void>;
}

/** The signing loop: a pass signs every closed day it can, in order; then it waits, longer after failures. */
export function startManifestSigner(options: ManifestSignerOptions): ManifestSigner {
  const log = options.logger.child({ component: 'manifests' });
  const { metrics } = options;
  let failures = 0;
  let suspended = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;

  async function passOnce(): Promise<void> {
    try {
      for (;;) {
        if (stopped) return;
        const safe = (await readSafeMode(options.db)).enabled;
        if (safe !== suspended) log.info({ safeMode: safe }, safe ? 'safe mode: manifest signing suspended (closed days wait)' : 'safe mode lifted: manifest signing resumes');
        suspended = safe;
        metrics.archiverManifestsPending.set(await pendingManifests(options.db));
        if (safe) return;
        const step = await signNextDay(options);
        if (step.outcome !== 'written') return;
        failures = 0;
        metrics.archiverManifestsWritten.inc();
        log.info({ day: step.day, key: step.key, keyVersion: step.keyVersion, sha256: step.sha256 }, 'day manifest signed and written');
      }
    } catch (error) {
      failures += 1;
      const code = errorCode(error);
      metrics.archiverManifestFailures.inc({ code });
      log.warn({ code, err: errorMessage(error), failures }, 'writing a day manifest failed; retrying with backoff');
    }
  }

  function pass(): Promise<void> {
    running ??= passOnce().finally(() => {
      running = undefined;
    });
    return running;
  }

  const loop = async () => {
    await pass();
    if (stopped) return;
    const delay = failures === 0 ? options.intervalMs : Math.min(options.retryMaxMs, options.retryMinMs * 2 ** Math.min(failures - 1, 20));
    timer = setTimeout(() => void loop(), delay);
  };
  void loop();

  return {
    pass,
    suspended: () => suspended,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
