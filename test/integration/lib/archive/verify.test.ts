import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { initArchiveBucket } from '../../../../lib/archive/bucket.ts';
import { encodeArchiveFile } from '../../../../lib/archive/container.ts';
import { formatArchiveKey } from '../../../../lib/archive/layout.ts';
import { canonicalSignatureBytes, manifestKey, resignKey, signatureKey } from '../../../../lib/archive/manifest.ts';
import { readArchiveRecords } from '../../../../lib/archive/reader.ts';
import { createLocalSigner } from '../../../../lib/signing/local.ts';
import { createTransitSigner } from '../../../../lib/signing/transit.ts';
import type { AuditEvent } from '../../../../lib/contracts/types.ts';
import { LOCAL_VAULT } from '../../../../dev/stack/vault.ts';
import { removeTestBucket, testS3Client } from '../../../support/s3.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { contract, createVerifyWorld, findingsOf, kinds, SCHEMA_ID, type VerifyWorld } from './verify-world.ts';

// `audit verify` against MinIO and Postgres: days written as the archiver writes them (chained files,
// index rows, audit_files, audit_days, a signed manifest), one thing tampered with per test, and the
// finding that names it. Objects are GOVERNANCE-locked here only so the bucket can be removed; a
// tamperer under COMPLIANCE can still add versions and delete markers, which is what these do.
jest.setTimeout(180_000);

describe('audit verify', () => {
  const s3 = testS3Client();
  const bucket = uniqueName('verify');
  const worlds: VerifyWorld[] = [];

  async function world(name: string, signer?: Parameters<typeof createVerifyWorld>[3]): Promise<VerifyWorld> {
    const w = await createVerifyWorld(s3, bucket, name, signer);
    worlds.push(w);
    return w;
  }

  beforeAll(async () => {
    await initArchiveBucket(s3, { bucket, retention: { mode: 'GOVERNANCE', days: 1 } });
  });

  afterAll(async () => {
    for (const w of worlds) await w.teardown();
    await removeTestBucket(s3, bucket);
    s3.destroy();
  });

  it('passes clean closed days: every file, event, chain, manifest, signature and index row', async () => {
    const w = await world('verify-clean');
    await w.writeDay('2026-11-27', { partitions: { 0: [5, 3], 1: [4], 2: [] } });
    await w.writeDay('2026-11-28', { partitions: { 0: [2], 1: [3, 2], 2: [1] } });
    const report = await w.verify('2026-11-27', '2026-11-28');
    expect(report.findings).toEqual([]);
    expect(report.intact).toBe(true);
    expect(report.events).toBe(20);
    expect(report.files).toBe(7);
    expect(report.days.map((d) => [d.day, d.status, d.manifest, d.signedKeyVersion])).toEqual([
      ['2026-11-27', 'closed', 'valid', 1],
      ['2026-11-28', 'closed', 'valid', 1],
    ]);
  });

  it("passes days closed and signed by the archiver's own manifest signer (services/archiver/manifests.ts)", async () => {
    const w = await world('verify-archiver');
    await w.writeDay('2026-11-27', { partitions: { 0: [3, 2], 1: [1] }, close: false });
    await w.closeWithArchiver('2026-11-27', [0, 1, 2]);
    await w.writeDay('2026-11-28', { partitions: { 0: [2], 2: [2] }, close: false });
    await w.closeWithArchiver('2026-11-28', [0, 1, 2]);
    const report = await w.verify('2026-11-27', '2026-11-28');
    expect(report.findings).toEqual([]);
    expect(report.days.map((d) => [d.day, d.status, d.manifest, d.events])).toEqual([
      ['2026-11-27', 'closed', 'valid', 6],
      ['2026-11-28', 'closed', 'valid', 4],
    ]);
    // The later day alone: its start checked against the manifest it links to.
    expect((await w.verify('2026-11-28', '2026-11-28')).findings).toEqual([]);
    // audit_days keeps the manifest's hash: a row that no longer matches it is named.
    await w.pool.query(`UPDATE audit_days SET manifest_sha256 = $1 WHERE day = '2026-11-28'`, ['cd'.repeat(32)]);
    const altered = await w.verify('2026-11-27', '2026-11-28');
    expect(altered.findings).toEqual([expect.objectContaining({ kind: 'index_row_altered', day: '2026-11-28', key: manifestKey(w.root, '2026-11-28') })]);
  });

  it('names one event altered in a new object version: newer_version and file_modified at its offset', async () => {
    const w = await world('verify-payload');
    const [file] = await w.writeDay('2026-11-27', { partitions: { 0: [5] } });
    if (file === undefined) throw new Error('no file written');
    const { records } = await readArchiveRecords<AuditEvent>(await w.read(file.key));
    // The payload changes, its hash stays: what a tamperer without the producer's hash would do.
    const tampered = records.map((r) => ({
      offset: r.offset,
      timestamp: r.timestamp.getTime(),
      key: r.key,
      headers: r.headers,
      event: r.offset === 2 ? contract.toBuffer({ ...r.event, payload: '{"i":999}' }) : r.eventBytes,
    }));
    await w.putVersion(file.key, encodeArchiveFile({ objectKey: file.key, topic: 'audit-events', partition: 0, schemaId: SCHEMA_ID, eventSchema: contract.schemaText, records: tampered }));
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(report.intact).toBe(false);
    expect(kinds(report)).toEqual(['file_modified', 'newer_version']);
    expect(findingsOf(report, 'newer_version')).toEqual([expect.objectContaining({ day: '2026-11-27', partition: 0, key: file.key })]);
    expect(findingsOf(report, 'file_modified')).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ partition: 0, key: file.key, offset: 2, eventId: file.eventIds[2], message: expect.stringMatching(/does not match its hash/) as unknown }),
        expect.objectContaining({ key: file.key, message: expect.stringMatching(/SHA-256/) as unknown }),
      ]),
    );
  });

  it('names a file hidden by a delete marker: file_missing', async () => {
    const w = await world('verify-deleted');
    const [, second] = await w.writeDay('2026-11-27', { partitions: { 0: [3, 3, 2] } });
    if (second === undefined) throw new Error('no file written');
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: second.key }));
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(kinds(report)).toEqual(['file_missing']);
    expect(findingsOf(report, 'file_missing')).toEqual([expect.objectContaining({ day: '2026-11-27', partition: 0, key: second.key, message: expect.stringMatching(/delete marker/) as unknown })]);
  });

  it('names an index row altered and an index row deleted', async () => {
    const w = await world('verify-index');
    const [file] = await w.writeDay('2026-11-27', { partitions: { 0: [4], 1: [2] } });
    await w.pool.query(`UPDATE audit_index SET actor = 'user:mallory' WHERE kafka_partition = 0 AND kafka_offset = 1`);
    await w.pool.query('DELETE FROM audit_index WHERE kafka_partition = 0 AND kafka_offset = 3');
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(kinds(report)).toEqual(['index_row_altered', 'index_row_missing']);
    expect(findingsOf(report, 'index_row_altered')).toEqual([
      expect.objectContaining({ partition: 0, offset: 1, eventId: file?.eventIds[1], message: expect.stringMatching(/actor user:mallory \(archive service:test\)/) as unknown }),
    ]);
    expect(findingsOf(report, 'index_row_missing')).toEqual([expect.objectContaining({ partition: 0, offset: 3, eventId: file?.eventIds[3] })]);
  });

  it('names an index row no archived record holds (index_row_extra) and one replaced by another event (index_row_altered)', async () => {
    const w = await world('verify-index-extra');
    await w.writeDay('2026-11-27', { partitions: { 0: [2, 2] } });
    const insert = (offset: number) =>
      w.pool.query(
        `INSERT INTO audit_index (event_id, event_time, action, actor, kafka_partition, kafka_offset, payload_hash) VALUES (gen_random_uuid(), now(), 'agent.deleted', 'user:mallory', 0, $1, $2)`,
        [offset, 'ab'.repeat(32)],
      );
    // A second row at an archived event's offset: an event that was never archived.
    await insert(1);
    // A row whose event was swapped for another at the same place.
    await w.pool.query('DELETE FROM audit_index WHERE kafka_partition = 0 AND kafka_offset = 2');
    await insert(2);
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(kinds(report)).toEqual(['index_row_altered', 'index_row_extra']);
    expect(findingsOf(report, 'index_row_extra')).toEqual([expect.objectContaining({ partition: 0, offset: 1, message: expect.stringMatching(/second row/) as unknown })]);
    expect(findingsOf(report, 'index_row_altered')).toEqual([expect.objectContaining({ partition: 0, offset: 2, message: expect.stringMatching(/event_id/) as unknown })]);
  });

  it('names an extra file in a closed day: file_extra', async () => {
    const w = await world('verify-extra');
    await w.writeDay('2026-11-27', { partitions: { 0: [3] } });
    const key = formatArchiveKey({ prefix: w.root, day: '2026-11-27', partition: 0, firstOffset: 100, lastOffset: 100 });
    const event = buildAuditEvent({ actor: 'user:mallory', action: 'agent.created', agentId: null, requestId: null, traceId: null, payload: {}, time: new Date('2026-11-27T12:00:00Z') });
    await w.putVersion(
      key,
      encodeArchiveFile({
        objectKey: key,
        topic: 'audit-events',
        partition: 0,
        schemaId: SCHEMA_ID,
        eventSchema: contract.schemaText,
        records: [{ offset: 100, timestamp: Date.parse('2026-11-27T12:00:00Z'), key: null, headers: [], event: contract.toBuffer(event) }],
      }),
    );
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(kinds(report)).toEqual(['file_extra']);
    expect(findingsOf(report, 'file_extra')).toEqual([expect.objectContaining({ day: '2026-11-27', partition: 0, key })]);
  });

  it('names a manifest re-signed with an unknown key: signed_by_unknown_key (and the new version of the signature)', async () => {
    const w = await world('verify-unknown-key');
    await w.writeDay('2026-11-27', { partitions: { 0: [3] } });
    const keyring = mkdtempSync(join(tmpdir(), 'verify-mallory-'));
    try {
      const mallory = createLocalSigner({ keyId: w.signer.keyId, source: { kind: 'directory', path: keyring } });
      await mallory.rotate();
      await mallory.rotate();
      const bytes = await w.read(manifestKey(w.root, '2026-11-27'));
      const envelope = await mallory.sign(bytes);
      await w.putVersion(signatureKey(w.root, '2026-11-27'), canonicalSignatureBytes({ ...envelope, signedAt: new Date().toISOString() }), 'application/json');
    } finally {
      rmSync(keyring, { recursive: true, force: true });
    }
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(kinds(report)).toEqual(['newer_version', 'signed_by_unknown_key']);
    expect(findingsOf(report, 'signed_by_unknown_key')).toEqual([expect.objectContaining({ day: '2026-11-27', key: signatureKey(w.root, '2026-11-27'), message: expect.stringMatching(/v2, which is not among the published keys/) as unknown })]);
    expect(report.days[0]?.manifest).toBe('unknown_key');
  });

  it('names a chain link broken across a day boundary: chain_broken on the later day', async () => {
    const w = await world('verify-boundary');
    await w.writeDay('2026-11-27', { partitions: { 0: [3], 1: [2] } });
    // The next day's partition 0 starts from a chain the previous day never ended with (a record of
    // the previous day removed and both days rebuilt without it would look like this).
    const [file] = await w.writeDay('2026-11-28', { partitions: { 0: [2], 1: [2] }, chainBefore: { 0: 'ab'.repeat(32) } });
    const report = await w.verify('2026-11-27', '2026-11-28');
    expect(kinds(report)).toEqual(['chain_broken']);
    expect(findingsOf(report, 'chain_broken')).toEqual([expect.objectContaining({ day: '2026-11-28', partition: 0, key: file?.key, offset: file?.firstOffset, message: expect.stringMatching(/across the day boundary/) as unknown })]);
    // Verifying the later day alone still checks its start against the manifest it links to.
    expect(kinds(await w.verify('2026-11-28', '2026-11-28'))).toEqual(['chain_broken']);
  });

  it('reports an open day as open, verified as far as it goes, and intact', async () => {
    const w = await world('verify-open');
    await w.writeDay('2026-11-27', { partitions: { 0: [3] } });
    await w.writeDay('2026-11-28', { partitions: { 0: [2, 1] }, close: false });
    const report = await w.verify('2026-11-27', '2026-11-28');
    expect(report.intact).toBe(true);
    expect(report.days.map((d) => [d.day, d.status, d.manifest, d.events])).toEqual([
      ['2026-11-27', 'closed', 'valid', 3],
      ['2026-11-28', 'open', 'none', 3],
    ]);
    expect(report.findings).toEqual([expect.objectContaining({ kind: 'day_open', severity: 'info', day: '2026-11-28' })]);
  });

  it('names a closed day without a manifest: manifest_missing', async () => {
    const w = await world('verify-unsigned');
    await w.writeDay('2026-11-27', { partitions: { 0: [2] }, close: false });
    await w.pool.query(`INSERT INTO audit_days (day, partition_count, file_count, record_count) VALUES ('2026-11-27', 1, 1, 2)`);
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(kinds(report)).toEqual(['manifest_missing']);
  });

  it('names manifests signed by a revoked version until they are counter-signed, then reports them resigned', async () => {
    const w = await world('verify-revoked');
    await w.writeDay('2026-11-27', { partitions: { 0: [3] } });
    const v2 = await w.signer.rotate();
    await w.writeDay('2026-11-28', { partitions: { 0: [2] } });
    await w.pool.query(`INSERT INTO audit_signing_revocations (key_id, key_version, revoked_at, revoked_by, reason) VALUES ($1, 1, now(), 'test', 'compromised')`, [w.signer.keyId]);
    const revoked = await w.verify('2026-11-27', '2026-11-28');
    expect(kinds(revoked)).toEqual(['signed_by_revoked_key']);
    expect(findingsOf(revoked, 'signed_by_revoked_key')).toEqual([expect.objectContaining({ day: '2026-11-27' })]);
    expect(revoked.days.map((d) => [d.manifest, d.signedKeyVersion])).toEqual([
      ['revoked', 1],
      ['valid', v2],
    ]);

    // What `audit resign` writes: a counter-signature by the current version, beside the manifest.
    const bytes = await w.read(manifestKey(w.root, '2026-11-27'));
    const envelope = await w.signer.sign(bytes, v2);
    await w.putVersion(resignKey(w.root, '2026-11-27', v2), canonicalSignatureBytes({ ...envelope, signedAt: new Date().toISOString(), counterSigns: 1 }), 'application/json');
    const resigned = await w.verify('2026-11-27', '2026-11-28');
    expect(resigned.intact).toBe(true);
    expect(resigned.findings).toEqual([expect.objectContaining({ kind: 'resigned', severity: 'info', day: '2026-11-27', key: resignKey(w.root, '2026-11-27', v2) })]);
  });

  it('passes a day signed through Vault Transit (OpenBao), checked with the published public keys alone', async () => {
    const transit = createTransitSigner({ address: `http://${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`, token: LOCAL_VAULT.rootToken, mount: LOCAL_VAULT.transitMount, key: LOCAL_VAULT.signingKey });
    const w = await world('verify-transit', transit);
    await w.writeDay('2026-11-27', { partitions: { 0: [3], 1: [1] } });
    const report = await w.verify('2026-11-27', '2026-11-27');
    expect(report.findings).toEqual([]);
    // The stack's key is shared (other tests may rotate it meanwhile): the version that signed is one it published.
    expect((await transit.publicKeys()).map((k) => k.version)).toContain(report.days[0]?.signedKeyVersion);
  });

  describe('the CLI', () => {
    function cli(args: readonly string[], env: Record<string, string | undefined>): Promise<{ code: number | null; stdout: string; stderr: string }> {
      return new Promise((resolve) => {
        execFile(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'audit', 'verify', ...args], { env: { ...process.env, ...env }, timeout: 120_000 }, (error, stdout, stderr) => {
          resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
        });
      });
    }

    it('exits 0 when intact, 1 with findings, 2 on a usage mistake; --json; --public-keys for an offline auditor', async () => {
      const w = await world('verify-cli');
      const [file] = await w.writeDay('2026-11-27', { partitions: { 0: [3], 1: [2] } });
      const dir = mkdtempSync(join(tmpdir(), 'verify-cli-'));
      try {
        const keysFile = join(dir, 'public-keys.json');
        writeFileSync(keysFile, JSON.stringify(await w.signer.publicKeys()));
        const env = { ...testEnv(), DATABASE_SCHEMA: w.schema, ARCHIVE_BUCKET: bucket, ARCHIVE_PREFIX: w.root, LOG_LEVEL: 'warn' };
        const args = ['--from', '2026-11-27', '--to', '2026-11-27', '--public-keys', keysFile];

        const intact = await cli(args, env);
        expect([intact.code, intact.stderr]).toEqual([0, expect.stringMatching(/^2026-11-27 {2}closed {2}manifest valid \(v1\) {2}2 files {2}5 events {2}ok$/m)]);
        expect(intact.stdout).toMatch(/^INTACT$/m);

        const json = await cli([...args, '--json'], env);
        expect(json.code).toBe(0);
        expect(JSON.parse(json.stdout)).toEqual(expect.objectContaining({ intact: true, events: 5, files: 2, findings: [] }));

        await w.pool.query('DELETE FROM audit_index WHERE kafka_partition = 0 AND kafka_offset = 0');
        const broken = await cli(args, env);
        expect(broken.code).toBe(1);
        expect(broken.stdout).toContain(`FAIL  index_row_missing  2026-11-27  p=0 offset 0 ${file?.key ?? ''}`);
        expect(broken.stdout).toMatch(/^NOT INTACT: 1 finding \(index_row_missing\)$/m);

        expect((await cli(['--from', '2026-11-27', '--to', 'yesterday'], env)).code).toBe(2);
        expect((await cli(['--from', '2026-11-28', '--to', '2026-11-27'], env)).code).toBe(2);
        // Keys that cannot be read: nothing is verified, exit 3.
        writeFileSync(keysFile, 'not json');
        expect((await cli(args, env)).code).toBe(3);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
