import { Writable } from 'node:stream';
import { LOCAL_VAULT } from '../../dev/stack/vault.ts';
import { manifestKey, manifestSha256, parseManifest, parseManifestSignature, signatureKey } from '../../lib/archive/manifest.ts';
import { createLogger } from '../../lib/logger.ts';
import { createMetrics } from '../../lib/metrics.ts';
import { verifySignature } from '../../lib/signing/verify.ts';
import { startManifestSigner } from '../../services/archiver/manifests.ts';
import { createDaysWorld, transitSigner, VAULT, type DaysWorld } from '../integration/services/archiver/days-world.ts';
import { waitFor } from '../integration/services/archiver/world.ts';
import { restoreStack, startServer, stopServer } from '../support/outage.ts';

// OpenBao down while a day closes: the archiver keeps archiving, the day's manifest waits (signing
// retried with backoff, counted, never a crash), and is written when OpenBao is back, linked to the
// day before. The stack's OpenBao is in dev mode (in memory): its restart re-creates the shared
// Transit key with new key material, which this test only signs with (never rotates).
jest.setTimeout(240_000);

describe('day manifests while OpenBao (Vault Transit) is down', () => {
  let w: DaysWorld;
  beforeAll(async () => {
    w = await createDaysWorld('outage-manifests', 1);
  });
  afterAll(async () => {
    await restoreStack();
    await w.teardown();
  });

  it('retries signing while OpenBao is down and writes the manifest when it returns; nothing lost', async () => {
    const signer = transitSigner(LOCAL_VAULT.signingKey);
    const metrics = createMetrics('archiver-outage-test', { defaultMetrics: false });
    const lines: string[] = [];
    const logger = createLogger('manifests-outage', 'info', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
    const loop = startManifestSigner({ s3: w.s3, bucket: w.bucket, prefix: w.prefix, db: w.db, signer, logger, metrics, intervalMs: 200, retryMinMs: 200, retryMaxMs: 2_000 });
    const failures = async () => (await metrics.archiverManifestFailures.get()).values.reduce((sum, v) => sum + v.value, 0);
    try {
      await w.archiveDay('2026-08-01', 12);
      await w.closeDay('2026-08-01');
      await waitFor(async () => (await w.object(signatureKey(w.prefix, '2026-08-01'))) !== undefined, 60_000, 'the first day signed with OpenBao up');
      const first = await w.object(manifestKey(w.prefix, '2026-08-01'));

      await stopServer('vault');
      try {
        // The archive goes on; the day closes; its manifest cannot be signed.
        await w.archiveDay('2026-08-02', 15);
        await w.closeDay('2026-08-02');
        await waitFor(async () => (await failures()) >= 3, 60_000, 'signing attempts to fail while OpenBao is down');
        expect((await metrics.archiverManifestsPending.get()).values[0]?.value).toBe(1);
        expect(await w.object(manifestKey(w.prefix, '2026-08-02'))).toBeUndefined();
        const { rows } = await w.db.query<{ manifest_key: string | null }>(`SELECT manifest_key FROM audit_days WHERE day = '2026-08-02'`);
        expect(rows).toEqual([{ manifest_key: null }]);
      } finally {
        await startServer('vault');
      }

      await waitFor(async () => (await w.object(signatureKey(w.prefix, '2026-08-02'))) !== undefined, 90_000, 'the manifest once OpenBao is back');
      const bytes = await w.object(manifestKey(w.prefix, '2026-08-02'));
      const signature = parseManifestSignature((await w.object(signatureKey(w.prefix, '2026-08-02'))) ?? '');
      expect(verifySignature(bytes ?? Buffer.alloc(0), signature, await signer.publicKeys())).toBe(true);
      const manifest = parseManifest(bytes ?? '');
      expect(manifest.previousManifest).toEqual({ day: '2026-08-01', key: manifestKey(w.prefix, '2026-08-01'), sha256: manifestSha256(first ?? Buffer.alloc(0)) });
      // Nothing lost: every record of the day is in the manifest, in files continuing the chain.
      expect(manifest.partitions[0]?.eventCount).toBe(15);
      expect(manifest.partitions[0]?.chainBefore).toBe(parseManifest(first ?? '').partitions[0]?.files.at(-1)?.lastChain);
      await waitFor(async () => (await metrics.archiverManifestsPending.get()).values[0]?.value === 0, 30_000, 'nothing pending');
      expect((await metrics.archiverManifestsWritten.get()).values[0]?.value).toBe(2);
      // The failures were logged, without the token.
      const log = lines.join('');
      expect(log).toContain('writing a day manifest failed; retrying with backoff');
      expect(log).not.toContain(VAULT.token);
    } finally {
      await loop.stop();
    }
  });
});
