import { join } from 'node:path';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { LOCAL_VAULT } from '../../../../dev/stack/vault.ts';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { dayStart } from '../../../../lib/archive/layout.ts';
import type { RotationLimits } from '../../../../lib/archive/rotation.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createLocalSigner } from '../../../../lib/signing/local.ts';
import type { Signer } from '../../../../lib/signing/signer.ts';
import { createTransitSigner } from '../../../../lib/signing/transit.ts';
import { createVaultApi } from '../../../../lib/vault.ts';
import { PartitionArchiver, type ArchiverRecord } from '../../../../services/archiver/partition.ts';
import { archiveStore, resumePoint } from '../../../../services/archiver/store.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

/**
 * An archive without Kafka for the manifest tests: its own bucket (GOVERNANCE Object Lock, so the
 * test can remove it), root and Postgres schema, and a PartitionArchiver per partition fed with
 * audit events of whichever days a test asks for; closing a day = ticking every partition past it.
 */
export const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const SCHEMA_ID = 42;
const limits: RotationLimits = { flushIntervalMs: 3_600_000, maxRecords: 7, maxBytes: 1 << 20, windowGraceMs: 1_000 };
export const DAY_GRACE = 60_000;

export interface DaysWorld {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  readonly schema: string;
  readonly db: Pool;
  readonly partitions: number;
  /** Every record fed, per partition, in offset order. */
  readonly records: Map<number, ArchiverRecord[]>;
  /** Feeds `perPartition` events of `day` to every partition (without closing it). */
  archiveDay(day: string, perPartition: number): Promise<void>;
  /** Ticks every partition past the end of `day` plus the grace: the day (and those before) close. */
  closeDay(day: string): Promise<void>;
  object(key: string): Promise<Buffer | undefined>;
  teardown(): Promise<void>;
}

export async function createDaysWorld(name: string, partitions = 2): Promise<DaysWorld> {
  const env = testEnv();
  const s3 = testS3Client();
  const bucket = uniqueName(name);
  const prefix = uniqueName('root');
  const schema = uniqueName(`${name}_db`).replace(/-/g, '_');
  await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
  const db = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 4 });
  const records = new Map<number, ArchiverRecord[]>();
  const archivers: PartitionArchiver[] = [];
  for (let p = 0; p < partitions; p++) {
    const deps = archiveStore({ s3, bucket, db, registryUrl: 'http://unused', partitionCount: partitions }, () => Promise.resolve(contract.schemaText));
    archivers.push(new PartitionArchiver({ topic: 'audit-events', partition: p, prefix, limits, dayGraceMs: DAY_GRACE }, deps, await resumePoint(s3, bucket, prefix, db, p)));
    records.set(p, []);
  }

  return {
    s3,
    bucket,
    prefix,
    schema,
    db,
    partitions,
    records,
    async archiveDay(day, perPartition) {
      const start = dayStart(day);
      for (let p = 0; p < partitions; p++) {
        const list = records.get(p) ?? [];
        const batch: ArchiverRecord[] = [];
        for (let i = 0; i < perPartition; i++) {
          const timestamp = start + 3_600_000 + i * 1_000;
          const event = buildAuditEvent({ actor: 'service:test', action: 'test.archived', agentId: null, requestId: null, traceId: null, payload: { day, p, i }, time: new Date(timestamp - 5) });
          const body = contract.toBuffer(event);
          const value = Buffer.alloc(5 + body.length);
          value.writeUInt32BE(SCHEMA_ID, 1);
          body.copy(value, 5);
          const offset = (list.at(-1)?.offset ?? -1) + 1 + (i % 5 === 4 ? 1 : 0); // a hole now and then
          const record = { offset, timestamp, key: Buffer.from(event.eventId), headers: [{ key: 'event-id', value: Buffer.from(event.eventId) }], value };
          list.push(record);
          batch.push(record);
        }
        records.set(p, list);
        await archivers[p]?.add(batch);
      }
    },
    async closeDay(day) {
      const now = dayStart(day) + 86_400_000 + DAY_GRACE;
      for (const archiver of archivers) await archiver.tick(now, true);
    },
    async object(key) {
      try {
        const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        return Buffer.from(await (object.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
      } catch (error) {
        if ((error as { name?: string }).name === 'NoSuchKey') return undefined;
        throw error;
      }
    },
    async teardown() {
      await db.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
      await db.end();
      await removeTestBucket(s3, bucket);
      s3.destroy();
    },
  };
}

/** The stack's OpenBao (or the Vault of VAULT_ADDR/VAULT_TOKEN), with a root token. */
export const VAULT = {
  address: process.env.VAULT_ADDR ?? `http://${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`,
  token: process.env.VAULT_TOKEN ?? LOCAL_VAULT.rootToken,
};

/** A Transit key of the test's own (the stack's shared key is never rotated by tests). */
export async function createTransitKey(): Promise<string> {
  const name = uniqueName('am-manifest-test');
  await createVaultApi(VAULT).write(`${LOCAL_VAULT.transitMount}/keys/${name}`, { type: 'ed25519' });
  return name;
}

export async function deleteTransitKey(name: string): Promise<void> {
  const admin = createVaultApi(VAULT);
  await admin.write(`${LOCAL_VAULT.transitMount}/keys/${name}/config`, { deletion_allowed: true });
  await admin.delete(`${LOCAL_VAULT.transitMount}/keys/${name}`);
}

export function transitSigner(key: string): Signer {
  return createTransitSigner({ address: VAULT.address, token: VAULT.token, mount: LOCAL_VAULT.transitMount, key, timeoutMs: 3_000 });
}

/** A local keyring in a temporary directory (created on first use). */
export function localSigner(dir: string): Signer {
  return createLocalSigner({ keyId: 'manifest-test-local', source: { kind: 'directory', path: dir } });
}
