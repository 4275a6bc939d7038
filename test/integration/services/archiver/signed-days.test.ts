import { GetObjectCommand } from '@aws-sdk/client-s3';
import { dayStart, utcDay } from '../../../../lib/archive/layout.ts';
import { manifestKey, manifestSha256, parseManifest, parseManifestSignature, signatureKey } from '../../../../lib/archive/manifest.ts';
import { verifySignature } from '../../../../lib/signing/verify.ts';
import { createTransitKey, deleteTransitKey, transitSigner, VAULT } from './days-world.ts';
import { createArchiverWorld, waitFor, type ArchiverWorld } from './world.ts';

// The archiver service (`agent-manager run archiver`) with a Vault Transit signer: the days it closes
// get their signed manifests, in order, from the service itself. CreateTime topic, so records can
// carry earlier days' times.
jest.setTimeout(180_000);

describe('archiver service: signed day manifests through Vault Transit', () => {
  let w: ArchiverWorld;
  let key: string;

  beforeAll(async () => {
    key = await createTransitKey();
    w = await createArchiverWorld('archiver-signed', {
      createTime: true,
      env: { ARCHIVE_DAY_GRACE_MS: '1000', AUDIT_SIGNER: 'vault-transit', VAULT_ADDR: VAULT.address, VAULT_TOKEN: VAULT.token, AUDIT_TRANSIT_KEY: key, AUDIT_MANIFEST_INTERVAL_MS: '300', AUDIT_KEY_ROTATION_INTERVAL: 'off' },
    });
  });

  afterAll(async () => {
    await w?.teardown();
    await deleteTransitKey(key).catch(() => undefined);
  });

  async function object(objectKey: string): Promise<Buffer | undefined> {
    try {
      const got = await w.s3.send(new GetObjectCommand({ Bucket: w.bucket, Key: objectKey }));
      return Buffer.from(await (got.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
    } catch {
      return undefined;
    }
  }

  it('writes each closed day\'s manifest and signature, chained, verifiable with the public keys alone', async () => {
    const today = utcDay(Date.now());
    const yesterday = utcDay(dayStart(today) - 1);
    const before = utcDay(dayStart(yesterday) - 1);
    for (let partition = 0; partition < 4; partition++) {
      await w.produceEvents(3, { partition, timestamp: (i) => dayStart(before) + 3_600_000 + i });
      await w.produceEvents(4, { partition, timestamp: (i) => dayStart(yesterday) + 3_600_000 + i });
      await w.produceEvents(1, { partition, timestamp: () => Math.max(dayStart(today), Date.now() - 60_000) });
    }
    w.startArchiver();
    const root = w.topic;
    await waitFor(async () => (await object(signatureKey(root, yesterday))) !== undefined, 90_000, 'yesterday\'s signed manifest');

    const signer = transitSigner(key);
    const publicKeys = await signer.publicKeys();
    const first = await object(manifestKey(root, before));
    const second = await object(manifestKey(root, yesterday));
    for (const [day, bytes] of [[before, first], [yesterday, second]] as const) {
      const signature = parseManifestSignature((await object(signatureKey(root, day))) ?? '');
      expect(verifySignature(bytes ?? Buffer.alloc(0), signature, publicKeys)).toBe(true);
      expect(signature).toMatchObject({ keyId: key, keyVersion: 1 });
    }
    const m1 = parseManifest(first ?? '');
    const m2 = parseManifest(second ?? '');
    expect(m1.partitions.map((p) => p.eventCount)).toEqual([3, 3, 3, 3]);
    expect(m2.partitions.map((p) => p.eventCount)).toEqual([4, 4, 4, 4]);
    expect(m2.previousManifest).toEqual({ day: before, key: manifestKey(root, before), sha256: manifestSha256(first ?? Buffer.alloc(0)) });
    for (let p = 0; p < 4; p++) expect(m2.partitions[p]?.chainBefore).toBe(m1.partitions[p]?.files.at(-1)?.lastChain);

    const schema = w.world.schema;
    const { rows } = await w.db.query<{ day: string; manifest_sha256: string | null; signed_key_version: number | null }>(
      `SELECT to_char(day, 'YYYY-MM-DD') AS day, manifest_sha256, signed_key_version FROM ${schema}.audit_days ORDER BY day`,
    );
    expect(rows).toEqual([
      { day: before, manifest_sha256: manifestSha256(first ?? Buffer.alloc(0)), signed_key_version: 1 },
      { day: yesterday, manifest_sha256: manifestSha256(second ?? Buffer.alloc(0)), signed_key_version: 1 },
    ]);
    // Today is open: no manifest.
    expect(await object(manifestKey(root, today))).toBeUndefined();
  });
});
