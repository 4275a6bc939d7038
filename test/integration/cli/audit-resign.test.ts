import { encodeArchiveFile } from '../../../lib/archive/container.ts';
import { formatArchiveKey } from '../../../lib/archive/layout.ts';
import { manifestKey, parseManifestSignature, resignKey, signatureKey } from '../../../lib/archive/manifest.ts';
import { putArchiveObject } from '../../../lib/archive/objects.ts';
import { verifySignature } from '../../../lib/signing/verify.ts';
import { signNextDay } from '../../../services/archiver/manifests.ts';
import { contract, createDaysWorld, createTransitKey, deleteTransitKey, transitSigner, VAULT, type DaysWorld } from '../services/archiver/days-world.ts';
import { testEnv } from '../../support/stack.ts';
import { runCli } from '../../support/cli.ts';
import { registerUnprefixedSchemas } from '../../support/schemas.ts';

const cli = runCli;

describe('agent-manager audit resign (revoke, rotate, counter-sign), against MinIO, Postgres and OpenBao', () => {
  let w: DaysWorld;
  let key: string;
  beforeAll(async () => {
    w = await createDaysWorld('resign', 1);
    await registerUnprefixedSchemas(['audit-events']);
    key = await createTransitKey();
  });
  afterAll(async () => {
    await w.teardown();
    await deleteTransitKey(key).catch(() => undefined);
  });

  it('counter-signs with the current version the manifests a revoked version signed, only where they match the archive', async () => {
    const signer = transitSigner(key);
    const context = { s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, signer };
    for (const day of ['2026-09-01', '2026-09-02']) {
      await w.archiveDay(day, 8);
      await w.closeDay(day);
      expect(await signNextDay(context)).toMatchObject({ outcome: 'written', day, keyVersion: 1 });
    }
    // A file slipped into 09-02's folder after its manifest: that manifest no longer tells the whole day.
    const records = (w.records.get(0) ?? []).slice(-2);
    const name = { prefix: w.prefix, day: '2026-09-02', partition: 0, firstOffset: 1_000, lastOffset: 1_001 };
    const extra = formatArchiveKey(name);
    const body = encodeArchiveFile({ objectKey: extra, topic: 'audit-events', partition: 0, schemaId: 42, eventSchema: contract.schemaText, records: records.map((r, i) => ({ ...r, offset: 1_000 + i, event: r.value.subarray(5) })) });
    await putArchiveObject(w.s3, { bucket: w.bucket, key: extra, body });

    const env = {
      ...testEnv(),
      DATABASE_SCHEMA: w.schema,
      ARCHIVE_BUCKET: w.bucket,
      ARCHIVE_PREFIX: w.prefix,
      AUDIT_SIGNER: 'vault-transit',
      VAULT_ADDR: VAULT.address,
      VAULT_TOKEN: VAULT.token,
      AUDIT_TRANSIT_KEY: key,
      LOG_LEVEL: 'warn',
    };
    // The runbook: rotate, revoke the compromised version, resign.
    expect(await cli(['keys', 'rotate'], env)).toMatchObject({ code: 0 });
    expect(await cli(['keys', 'revoke', '1', '--reason', 'resign test', '--actor', 'test'], env)).toMatchObject({ code: 0 });

    const run = await cli(['audit', 'resign', '--from', '2026-08-31', '--to', '2026-09-02'], env);
    expect(run.stdout).toContain('2026-08-31  no manifest');
    expect(run.stdout).toContain(`2026-09-01  RESIGNED  v2 counter-signs revoked v1  ${resignKey(w.prefix, '2026-09-01', 2)}`);
    expect(run.stdout).toContain('2026-09-02  REFUSED');
    expect(run.stdout).toContain(`${extra} is in the day's folder but not in the manifest`);
    expect(run.code).toBe(1);
    expect(`${run.stdout}${run.stderr}`).not.toContain(VAULT.token);

    // The counter-signature: the current version over the exact manifest bytes, naming what it stands in for.
    const manifest = await w.object(manifestKey(w.prefix, '2026-09-01'));
    const counter = parseManifestSignature((await w.object(resignKey(w.prefix, '2026-09-01', 2))) ?? '');
    expect(counter).toMatchObject({ keyId: key, keyVersion: 2, counterSigns: 1, algorithm: 'ed25519' });
    expect(verifySignature(manifest ?? Buffer.alloc(0), counter, await signer.publicKeys())).toBe(true);
    // The original signature stays as it was; nothing for the refused day.
    expect(parseManifestSignature((await w.object(signatureKey(w.prefix, '2026-09-01'))) ?? '').keyVersion).toBe(1);
    expect(await w.object(resignKey(w.prefix, '2026-09-02', 2))).toBeUndefined();

    // Audited, through the outbox: one event per counter-signature.
    const { rows } = await w.db.query<{ key: string }>(`SELECT key FROM outbox WHERE key LIKE 'audit-manifest:%' ORDER BY id`);
    expect(rows).toEqual([{ key: 'audit-manifest:2026-09-01' }]);

    // Again: nothing is written twice.
    const again = await cli(['audit', 'resign', '--from', '2026-09-01', '--to', '2026-09-01', '--json'], env);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ resigned: 0, refused: 0, days: [{ day: '2026-09-01', outcome: 'already_resigned', keyVersion: 2 }] });

    // With the current version revoked too, nothing is counter-signed by it.
    expect(await cli(['keys', 'revoke', '2', '--reason', 'resign test', '--actor', 'test'], env)).toMatchObject({ code: 0 });
    const refused = await cli(['audit', 'resign', '--from', '2026-09-01', '--to', '2026-09-01'], env);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain('rotate first');
  });
});
