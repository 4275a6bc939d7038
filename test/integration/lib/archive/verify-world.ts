import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { GENESIS_CHAIN } from '../../../../lib/archive/chain.ts';
import { encodeChainedArchiveFile } from '../../../../lib/archive/container.ts';
import { closePartitionDay, insertAuditIndex } from '../../../../lib/archive/index-store.ts';
import { formatArchiveKey } from '../../../../lib/archive/layout.ts';
import {
  canonicalManifestBytes,
  canonicalSignatureBytes,
  manifestKey,
  manifestSha256,
  MANIFEST_FORMAT,
  signatureKey,
  type AuditManifest,
  type ManifestFile,
  type ManifestLink,
  type ManifestPartition,
} from '../../../../lib/archive/manifest.ts';
import { putArchiveObject, sha256Base64 } from '../../../../lib/archive/objects.ts';
import { verifyArchive, type VerifyReport } from '../../../../lib/archive/verify-archive.ts';
import { revocationId, type Finding } from '../../../../lib/archive/verify.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createLocalSigner } from '../../../../lib/signing/local.ts';
import { listRevocations } from '../../../../lib/signing/revocations.ts';
import type { Signer } from '../../../../lib/signing/signer.ts';
import { signNextDay } from '../../../../services/archiver/manifests.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

/**
 * A world for `audit verify`: its own root prefix in a shared GOVERNANCE bucket, its own Postgres
 * schema (migrated), and a local signer over a temp keyring; days written as the archiver writes
 * them (chained files, audit_files and audit_index rows, audit_days, a signed manifest), so a test
 * can tamper with one thing and see what verify names.
 */
export const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
export const SCHEMA_ID = 4242;

export interface WrittenFile {
  readonly key: string;
  readonly partition: number;
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly eventIds: readonly string[];
}

export interface DaySpec {
  /** Per partition, the number of events of each file. */
  readonly partitions: Readonly<Record<number, readonly number[]>>;
  /** Close the day (audit_days) and write its signed manifest (default true). */
  readonly close?: boolean;
  /** Start a partition's chain from this instead of where the previous day ended. */
  readonly chainBefore?: Readonly<Record<number, string>>;
}

export interface VerifyWorld {
  readonly root: string;
  readonly schema: string;
  readonly pool: Pool;
  readonly signer: Signer;
  readonly files: WrittenFile[];
  writeDay(day: string, spec: DaySpec): Promise<WrittenFile[]>;
  /** Closes `day` on every one of `partitions` (audit_partition_days, audit_days) and signs what is closed with the archiver's own manifest signer. */
  closeWithArchiver(day: string, partitions: readonly number[]): Promise<void>;
  /** Writes a new version of `key` (Object Lock keeps the old one; readers get the new one). */
  putVersion(key: string, body: Buffer, contentType?: string): Promise<string | undefined>;
  read(key: string): Promise<Buffer>;
  verify(from: string, to: string): Promise<VerifyReport>;
  teardown(): Promise<void>;
}

/** The findings of a kind, or every error finding. */
export function kinds(report: VerifyReport): string[] {
  return [...new Set(report.findings.filter((f) => f.severity === 'error').map((f) => f.kind))].sort();
}

export function findingsOf(report: VerifyReport, kind: Finding['kind']): Finding[] {
  return report.findings.filter((f) => f.kind === kind);
}

export async function createVerifyWorld(s3: S3Client, bucket: string, name: string, signer?: Signer): Promise<VerifyWorld> {
  const env = testEnv();
  const root = uniqueName(name);
  const schema = uniqueName(name).replace(/-/g, '_');
  await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
  const pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 3 });
  const keyring = mkdtempSync(join(tmpdir(), 'verify-keys-'));
  const localSigner = signer ?? createLocalSigner({ keyId: 'test-audit', source: { kind: 'directory', path: keyring } });
  if (signer === undefined) await localSigner.rotate();
  const nextOffset = new Map<number, number>();
  const ends = new Map<number, string>();
  let previous: ManifestLink | null = null;
  const files: WrittenFile[] = [];

  async function put(key: string, body: Buffer, contentType?: string): Promise<string | undefined> {
    return (await putArchiveObject(s3, { bucket, key, body, ...(contentType !== undefined ? { contentType } : {}) })).versionId;
  }

  const self: VerifyWorld = {
    root,
    schema,
    pool,
    signer: localSigner,
    files,

    async writeDay(day, spec) {
      const written: WrittenFile[] = [];
      const partitions: ManifestPartition[] = [];
      let dayFiles = 0;
      let dayRecords = 0;
      const base = Date.parse(`${day}T08:00:00Z`);
      for (const [p, sizes] of Object.entries(spec.partitions)) {
        const partition = Number(p);
        const chainBefore = spec.chainBefore?.[partition] ?? ends.get(partition) ?? GENESIS_CHAIN;
        let chain = chainBefore;
        const manifestFiles: ManifestFile[] = [];
        for (const size of sizes) {
          const first = nextOffset.get(partition) ?? 0;
          const events = Array.from({ length: size }, (_, i) =>
            buildAuditEvent({ actor: 'service:test', action: 'test.verified', agentId: null, requestId: null, traceId: null, payload: { day, partition, i }, time: new Date(base + first + i) }),
          );
          const name = { prefix: root, day, partition, firstOffset: first, lastOffset: first + size - 1 };
          const key = formatArchiveKey(name);
          // As the archiver writes them: the chain in the file's header too.
          const { body, chain: span } = encodeChainedArchiveFile({
            chainBefore: chain,
            objectKey: key,
            topic: 'audit-events',
            partition,
            schemaId: SCHEMA_ID,
            eventSchema: contract.schemaText,
            records: events.map((event, i) => ({ offset: first + i, timestamp: base + first + i, key: Buffer.from(event.eventId), headers: [], event: contract.toBuffer(event) })),
          });
          const versionId = await put(key, body);
          const sha256 = sha256Base64(body);
          await pool.query(
            `INSERT INTO audit_files (object_key, day, kafka_partition, first_offset, last_offset, record_count, bytes, sha256, version_id, first_chain, last_chain)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
            [key, day, partition, first, first + size - 1, size, body.length, sha256, versionId ?? null, span.first, span.last],
          );
          await insertAuditIndex(
            pool,
            events.map((e, i) => ({ eventId: e.eventId, time: e.time, action: e.action, actor: e.actor, agentId: e.agentId, requestId: e.requestId, traceId: e.traceId, partition, offset: first + i, payloadHash: e.hash })),
          );
          manifestFiles.push({ key, versionId: versionId ?? null, sha256, firstOffset: first, lastOffset: first + size - 1, eventCount: size, firstChain: span.first, lastChain: span.last });
          const file = { key, partition, firstOffset: first, lastOffset: first + size - 1, eventIds: events.map((e) => e.eventId) };
          written.push(file);
          files.push(file);
          nextOffset.set(partition, first + size);
          chain = span.last;
          dayFiles += 1;
          dayRecords += size;
        }
        ends.set(partition, chain);
        partitions.push({ partition, eventCount: manifestFiles.reduce((sum, f) => sum + f.eventCount, 0), chainBefore, files: manifestFiles });
      }
      if (spec.close === false) return written;
      await pool.query('INSERT INTO audit_days (day, partition_count, file_count, record_count) VALUES ($1, $2, $3, $4)', [day, partitions.length, dayFiles, dayRecords]);
      const version = await localSigner.currentVersion();
      const manifest: AuditManifest = {
        format: MANIFEST_FORMAT,
        bucket,
        root,
        day,
        partitions: partitions.sort((a, b) => a.partition - b.partition),
        previousManifest: previous,
        signingKey: { keyId: localSigner.keyId, version, algorithm: 'ed25519' },
        createdAt: new Date().toISOString(),
      };
      const bytes = canonicalManifestBytes(manifest);
      const envelope = await localSigner.sign(bytes, version);
      await put(manifestKey(root, day), bytes, 'application/json');
      await put(signatureKey(root, day), canonicalSignatureBytes({ ...envelope, signedAt: new Date().toISOString() }), 'application/json');
      previous = { day, key: manifestKey(root, day), sha256: manifestSha256(bytes) };
      return written;
    },

    async closeWithArchiver(day, partitions) {
      for (const partition of partitions) await closePartitionDay(pool, day, partition, partitions.length);
      for (;;) {
        const step = await signNextDay({ s3, bucket, prefix: root, db: pool, signer: localSigner });
        if (step.outcome === 'idle') return;
        if (step.outcome === 'written') previous = { day: step.day, key: step.key, sha256: step.sha256 };
      }
    },

    async putVersion(key, body, contentType = 'application/octet-stream') {
      const put = await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType, ChecksumSHA256: sha256Base64(body) }));
      return put.VersionId;
    },

    async read(key) {
      const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from((await object.Body?.transformToByteArray()) ?? new Uint8Array());
    },

    async verify(from, to) {
      const revoked = new Set((await listRevocations(pool)).map((r) => revocationId(r.keyId, r.keyVersion)));
      return verifyArchive({ s3, bucket, root, db: pool, from, to, publicKeys: await localSigner.publicKeys(), revoked });
    },

    async teardown() {
      await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
      await pool.end();
      rmSync(keyring, { recursive: true, force: true });
    },
  };
  return self;
}
