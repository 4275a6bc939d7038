import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, HeadObjectCommand, ListObjectVersionsCommand } from '@aws-sdk/client-s3';
import { chainOf, GENESIS_CHAIN } from '../../../../lib/archive/chain.ts';
import { encodeArchiveFile } from '../../../../lib/archive/container.ts';
import { closePartitionDay, recordArchiveFile } from '../../../../lib/archive/index-store.ts';
import { formatArchiveKey, listDayFiles } from '../../../../lib/archive/layout.ts';
import { manifestKey, manifestSha256, parseManifest, parseManifestSignature, signatureKey, type AuditManifest } from '../../../../lib/archive/manifest.ts';
import { putArchiveObject } from '../../../../lib/archive/objects.ts';
import { readArchiveRecords } from '../../../../lib/archive/reader.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createMetrics } from '../../../../lib/metrics.ts';
import type { Signer } from '../../../../lib/signing/signer.ts';
import { verifySignature } from '../../../../lib/signing/verify.ts';
import { signNextDay, startManifestSigner } from '../../../../services/archiver/manifests.ts';
import { reindexArchive } from '../../../../services/archiver/reindex.ts';
import { resumePoint } from '../../../../services/archiver/store.ts';
import { waitFor } from './world.ts';
import { contract, createDaysWorld, createTransitKey, deleteTransitKey, localSigner, transitSigner, type DaysWorld } from './days-world.ts';

/** The manifest and signature of `day`, checked offline against the signer's published public keys. */
async function signedManifest(w: DaysWorld, signer: Signer, day: string): Promise<{ manifest: AuditManifest; bytes: Buffer; keyVersion: number }> {
  const bytes = await w.object(manifestKey(w.prefix, day));
  const sig = await w.object(signatureKey(w.prefix, day));
  if (bytes === undefined || sig === undefined) throw new Error(`no manifest or signature for ${day}`);
  const signature = parseManifestSignature(sig);
  // What an auditor does: the published public keys alone, no Vault.
  const publicKeys = await signer.publicKeys();
  expect(verifySignature(bytes, signature, publicKeys)).toBe(true);
  expect(verifySignature(Buffer.concat([bytes, Buffer.from(' ')]), signature, publicKeys)).toBe(false);
  const manifest = parseManifest(bytes);
  expect([manifest.signingKey.keyId, manifest.signingKey.version]).toEqual([signature.keyId, signature.keyVersion]);
  return { manifest, bytes, keyVersion: signature.keyVersion };
}

/** The manifest's files and chains are the archive's: recomputed from the files' records. */
async function expectManifestMatchesArchive(w: DaysWorld, manifest: AuditManifest): Promise<void> {
  for (const partition of manifest.partitions) {
    let chain = partition.chainBefore;
    let count = 0;
    for (const file of partition.files) {
      const body = await w.object(file.key);
      if (body === undefined) throw new Error(`missing ${file.key}`);
      const { header, records } = await readArchiveRecords<{ hash: string }>(body);
      const span = chainOf(chain, records.map((r) => r.event.hash));
      expect([file.firstChain, file.lastChain]).toEqual([span.first, span.last]);
      expect([header.firstChain, header.lastChain]).toEqual([span.first, span.last]);
      expect([file.firstOffset, file.lastOffset, file.eventCount]).toEqual([records[0]?.offset, records.at(-1)?.offset, records.length]);
      chain = span.last;
      count += records.length;
    }
    expect(partition.eventCount).toBe(count);
  }
}

describe('signed day manifests, against MinIO, Postgres and OpenBao', () => {
  const worlds: DaysWorld[] = [];
  const keys: string[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const w of worlds) await w.teardown();
    for (const key of keys) await deleteTransitKey(key).catch(() => undefined);
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  async function world(name: string, partitions = 2): Promise<DaysWorld> {
    const w = await createDaysWorld(name, partitions);
    worlds.push(w);
    return w;
  }

  it('signs closed days through Transit in order, chained to each other, with a key rotation mid-stream', async () => {
    const w = await world('manifests-transit');
    const key = await createTransitKey();
    keys.push(key);
    const signer = transitSigner(key);
    const context = { s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, signer };

    await w.archiveDay('2026-11-10', 20);
    expect(await signNextDay(context)).toEqual({ outcome: 'idle' }); // open: nothing to sign
    await w.archiveDay('2026-11-11', 9);
    await w.closeDay('2026-11-10');
    const first = await signNextDay(context);
    expect(first).toMatchObject({ outcome: 'written', day: '2026-11-10', keyVersion: 1 });
    expect(await signNextDay(context)).toEqual({ outcome: 'idle' });

    // Rotation mid-stream: the next day names (and is signed by) version 2; the first keeps version 1.
    expect(await signer.rotate()).toBe(2);
    await w.closeDay('2026-11-11');
    expect(await signNextDay(context)).toMatchObject({ outcome: 'written', day: '2026-11-11', keyVersion: 2 });

    const day1 = await signedManifest(w, signer, '2026-11-10');
    const day2 = await signedManifest(w, signer, '2026-11-11');
    expect([day1.keyVersion, day2.keyVersion]).toEqual([1, 2]);
    expect(day1.manifest).toMatchObject({ bucket: w.bucket, root: w.prefix, day: '2026-11-10', previousManifest: null, signingKey: { keyId: key, version: 1, algorithm: 'ed25519' } });
    expect(day2.manifest.previousManifest).toEqual({ day: '2026-11-10', key: manifestKey(w.prefix, '2026-11-10'), sha256: manifestSha256(day1.bytes) });
    expect(day1.manifest.partitions.map((p) => [p.partition, p.eventCount, p.chainBefore])).toEqual([[0, 20, GENESIS_CHAIN], [1, 20, GENESIS_CHAIN]]);
    // The chains continue across the day boundary, per partition.
    for (const p of [0, 1]) expect(day2.manifest.partitions[p]?.chainBefore).toBe(day1.manifest.partitions[p]?.files.at(-1)?.lastChain);
    await expectManifestMatchesArchive(w, day1.manifest);
    await expectManifestMatchesArchive(w, day2.manifest);

    // Every archive file of the day is in the manifest, with the version id and checksum S3 has.
    const listed = (await listDayFiles(w.s3, w.bucket, w.prefix, '2026-11-10')).map(formatArchiveKey);
    expect(day1.manifest.partitions.flatMap((p) => p.files.map((f) => f.key))).toEqual(listed);
    for (const file of day1.manifest.partitions.flatMap((p) => p.files)) {
      const head = await w.s3.send(new HeadObjectCommand({ Bucket: w.bucket, Key: file.key, ChecksumMode: 'ENABLED' }));
      expect([head.VersionId, head.ChecksumSHA256]).toEqual([file.versionId, file.sha256]);
    }
    // Both objects under the bucket's Object Lock retention.
    for (const objectKey of [manifestKey(w.prefix, '2026-11-10'), signatureKey(w.prefix, '2026-11-10')]) {
      const head = await w.s3.send(new HeadObjectCommand({ Bucket: w.bucket, Key: objectKey }));
      expect(head.ObjectLockMode).toBe('GOVERNANCE');
      expect(head.ObjectLockRetainUntilDate?.getTime()).toBeGreaterThan(Date.now());
    }
    const { rows } = await w.db.query<{ day: string; manifest_key: string; manifest_sha256: string; signed_key_version: number; signed_at: Date | null }>(
      `SELECT to_char(day, 'YYYY-MM-DD') AS day, manifest_key, manifest_sha256, signed_key_version, signed_at FROM audit_days ORDER BY day`,
    );
    expect(rows.map((r) => [r.day, r.manifest_key, r.manifest_sha256, r.signed_key_version, r.signed_at !== null])).toEqual([
      ['2026-11-10', manifestKey(w.prefix, '2026-11-10'), manifestSha256(day1.bytes), 1, true],
      ['2026-11-11', manifestKey(w.prefix, '2026-11-11'), manifestSha256(day2.bytes), 2, true],
    ]);

    // The reader's listing, reindex and replay skip the manifest objects at the dt= level; reindex
    // restores the chain columns from the files' headers.
    const before = (await w.db.query<{ object_key: string; first_chain: string; last_chain: string }>('SELECT object_key, first_chain, last_chain FROM audit_files ORDER BY object_key')).rows;
    await w.db.query('DELETE FROM audit_files');
    const summary = await reindexArchive({ s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, from: '2026-11-10', to: '2026-11-11' });
    expect(summary).toMatchObject({ days: 2, files: before.length, records: 58, invalid: 0 });
    const after = (await w.db.query<{ object_key: string; first_chain: string; last_chain: string }>('SELECT object_key, first_chain, last_chain FROM audit_files ORDER BY object_key')).rows;
    expect(after).toEqual(before);
    expect(after.every((r) => /^[0-9a-f]{64}$/.test(r.first_chain) && /^[0-9a-f]{64}$/.test(r.last_chain))).toBe(true);
  });

  it('recomputes the chain of files written before it (no chain in their header or row), and continues it', async () => {
    const w = await world('manifests-legacy', 1);
    const dir = mkdtempSync(join(tmpdir(), 'manifest-keys-'));
    dirs.push(dir);
    const signer = localSigner(dir);
    await signer.rotate();
    // Two files from before the change: no chain anywhere; then a day closed on them.
    const events = await (async () => {
      await w.archiveDay('2026-10-01', 10); // makes records (offsets, hashes); their files are replaced below
      return w.records.get(0) ?? [];
    })();
    // Replace what the archiver wrote by files of another root, written the old way.
    const legacy = `${w.prefix}-legacy`;
    const halves = [events.slice(0, 6), events.slice(6)];
    for (const half of halves) {
      const name = { prefix: legacy, day: '2026-10-01', partition: 0, firstOffset: half[0]?.offset ?? 0, lastOffset: half.at(-1)?.offset ?? 0 };
      const key = formatArchiveKey(name);
      const body = encodeArchiveFile({ objectKey: key, topic: 'audit-events', partition: 0, schemaId: 42, eventSchema: contract.schemaText, records: half.map((r) => ({ ...r, event: r.value.subarray(5) })) });
      const put = await putArchiveObject(w.s3, { bucket: w.bucket, key, body });
      await recordArchiveFile(w.db, { objectKey: key, day: '2026-10-01', partition: 0, firstOffset: name.firstOffset, lastOffset: name.lastOffset, recordCount: half.length, bytes: body.length, sha256: put.checksumSha256, versionId: put.versionId });
    }
    await w.db.query(`DELETE FROM audit_files WHERE object_key NOT LIKE $1`, [`${legacy}/%`]);
    await w.db.query('DELETE FROM audit_partition_days');
    await closePartitionDay(w.db, '2026-10-01', 0, 1);

    const hashes = events.map((r) => contract.fromBuffer(r.value.subarray(5)).hash);
    const expected = chainOf(GENESIS_CHAIN, hashes);
    // Resuming recomputes the chain from the partition's files and fills in their rows.
    const recomputed: unknown[] = [];
    const resume = await resumePoint(w.s3, w.bucket, legacy, w.db, 0, { chainRecomputed: (info) => recomputed.push(info) });
    expect(resume.chain).toBe(expected.last);
    expect(recomputed).toEqual([{ partition: 0, files: 2, recomputed: 2 }]);
    // The manifest names the recomputed chain values.
    expect(await signNextDay({ s3: w.s3, bucket: w.bucket, prefix: legacy, db: w.db, signer })).toMatchObject({ outcome: 'written', day: '2026-10-01', keyVersion: 1 });
    const bytes = await w.object(manifestKey(legacy, '2026-10-01'));
    const manifest = parseManifest(bytes ?? '');
    const files = manifest.partitions[0]?.files ?? [];
    expect([files[0]?.firstChain, files[1]?.lastChain]).toEqual([expected.first, expected.last]);
    expect(files[1]?.firstChain).toBe(chainOf(files[0]?.lastChain ?? '', hashes.slice(6)).first);
  });

  it('takes over a manifest (and signature) left by an attempt that died before recording it, never writing another', async () => {
    const w = await world('manifests-crash', 1);
    const dir = mkdtempSync(join(tmpdir(), 'manifest-keys-'));
    dirs.push(dir);
    const signer = localSigner(dir);
    await signer.rotate();
    const context = { s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, signer };
    await w.archiveDay('2026-10-05', 6);
    await w.closeDay('2026-10-05');
    const first = await signNextDay(context);
    expect(first).toMatchObject({ outcome: 'written', day: '2026-10-05' });
    const bytes = await w.object(manifestKey(w.prefix, '2026-10-05'));
    const forget = () => w.db.query(`UPDATE audit_days SET manifest_key = NULL, manifest_sha256 = NULL, signed_key_version = NULL, signed_at = NULL`);

    // Died after both objects were written: both are taken as they are.
    await forget();
    expect(await signNextDay(context)).toEqual(first);
    // Died between the manifest and its signature: the manifest is signed as it is.
    await forget();
    await w.s3.send(new DeleteObjectCommand({ Bucket: w.bucket, Key: signatureKey(w.prefix, '2026-10-05'), BypassGovernanceRetention: true }));
    const versions = await w.s3.send(new ListObjectVersionsCommand({ Bucket: w.bucket, Prefix: signatureKey(w.prefix, '2026-10-05') }));
    for (const v of [...(versions.Versions ?? []), ...(versions.DeleteMarkers ?? [])]) {
      await w.s3.send(new DeleteObjectCommand({ Bucket: w.bucket, Key: v.Key, VersionId: v.VersionId, BypassGovernanceRetention: true }));
    }
    expect(await w.object(signatureKey(w.prefix, '2026-10-05'))).toBeUndefined();
    expect(await signNextDay(context)).toEqual(first);
    expect((await w.object(manifestKey(w.prefix, '2026-10-05')))?.equals(bytes ?? Buffer.alloc(0))).toBe(true);
    await signedManifest(w, signer, '2026-10-05');
  });

  it('suspends signing in safe mode and resumes when it is lifted; one archiver signs at a time', async () => {
    const w = await world('manifests-safe', 1);
    const dir = mkdtempSync(join(tmpdir(), 'manifest-keys-'));
    dirs.push(dir);
    const signer = localSigner(dir);
    await signer.rotate();
    const metrics = createMetrics('archiver-test', { defaultMetrics: false });
    const setSafe = (enabled: boolean) =>
      w.db.query(
        `INSERT INTO control (key, value, updated_by, updated_at) VALUES ('safe_mode', $1, 'test', now())
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()`,
        [JSON.stringify({ enabled, reason: 'manifest test' })],
      );
    await setSafe(true);
    const loop = startManifestSigner({ s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, signer, logger: createLogger('manifests-test', 'silent'), metrics, intervalMs: 200, retryMinMs: 100, retryMaxMs: 1_000 });
    try {
      await w.archiveDay('2026-10-20', 5);
      await w.closeDay('2026-10-20');
      await waitFor(async () => (await metrics.archiverManifestsPending.get()).values[0]?.value === 1, 30_000, 'the closed day to be seen as pending');
      await loop.pass();
      await loop.pass();
      expect(loop.suspended()).toBe(true);
      expect(await w.object(manifestKey(w.prefix, '2026-10-20'))).toBeUndefined();

      // Another archiver holding the archive's lock: this one waits its turn.
      const other = await w.db.connect();
      try {
        await other.query('BEGIN');
        await other.query(`SELECT pg_advisory_xact_lock(hashtextextended('agent-manager.audit-manifests:' || $1::text, 0))`, [`${w.bucket}/${w.prefix}`]);
        await setSafe(false);
        expect(await signNextDay({ s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, signer })).toEqual({ outcome: 'busy' });
        await loop.pass();
        expect(await w.object(manifestKey(w.prefix, '2026-10-20'))).toBeUndefined();
      } finally {
        await other.query('ROLLBACK');
        other.release();
      }
      await waitFor(async () => (await w.object(manifestKey(w.prefix, '2026-10-20'))) !== undefined, 30_000, 'the manifest once safe mode is lifted');
      expect(loop.suspended()).toBe(false);
      await signedManifest(w, signer, '2026-10-20');
      await waitFor(async () => (await metrics.archiverManifestsPending.get()).values[0]?.value === 0, 30_000, 'nothing pending');
      expect((await metrics.archiverManifestsWritten.get()).values[0]?.value).toBe(1);
    } finally {
      await loop.stop();
    }
  });
});
