import { GENESIS_CHAIN } from '../../../../lib/archive/chain.ts';
import { parseArchiveKey } from '../../../../lib/archive/layout.ts';
import {
  type AuditManifest, canonicalManifestBytes, canonicalSignatureBytes, isManifestObjectKey, MANIFEST_FORMAT, manifestKey, manifestSha256,
  parseManifest, parseManifestSignature, parseResignKey, resignKey, signatureKey,
} from '../../../../lib/archive/manifest.ts';

const codeOf = (fn: () => unknown): unknown => {
  try { fn(); } catch (error) { return (error as { code?: unknown }).code; }
  return undefined;
};

const manifest: AuditManifest = {
  format: MANIFEST_FORMAT,
  bucket: 'audit',
  root: 'audit-events',
  day: '2026-12-01',
  partitions: [
    {
      partition: 0,
      eventCount: 2,
      chainBefore: GENESIS_CHAIN,
      files: [{ key: 'audit-events/dt=2026-12-01/p=0/00000000000000000000-00000000000000000001.avro', versionId: 'v1', sha256: Buffer.alloc(32, 1).toString('base64'), firstOffset: 0, lastOffset: 1, eventCount: 2, firstChain: 'a'.repeat(64), lastChain: 'b'.repeat(64) }],
    },
    { partition: 1, eventCount: 0, chainBefore: GENESIS_CHAIN, files: [] },
  ],
  previousManifest: null,
  signingKey: { keyId: 'agent-manager-audit', version: 1, algorithm: 'ed25519' },
  createdAt: '2026-12-02T00:05:00.000Z',
};

describe('audit manifest', () => {
  it('lives next to the day\'s files, where no archive file key can be', () => {
    expect(manifestKey('audit-events', '2026-12-01')).toBe('audit-events/dt=2026-12-01/manifest.json');
    expect(signatureKey('audit-events', '2026-12-01')).toBe('audit-events/dt=2026-12-01/manifest.json.sig');
    expect(resignKey('audit-events', '2026-12-01', 3)).toBe('audit-events/dt=2026-12-01/manifest.json.resign-v3.sig');
    expect(parseResignKey(resignKey('r', '2026-12-01', 12))).toBe(12);
    expect(parseResignKey(signatureKey('r', '2026-12-01'))).toBeUndefined();
    for (const key of [manifestKey('r', '2026-12-01'), signatureKey('r', '2026-12-01'), resignKey('r', '2026-12-01', 2)]) {
      expect(parseArchiveKey(key)).toBeUndefined();
      expect(isManifestObjectKey(key)).toBe(true);
    }
    expect(isManifestObjectKey(manifest.partitions[0]!.files[0]!.key)).toBe(false);
    expect(codeOf(() => manifestKey('r/', '2026-12-01'))).toBe('ARCHIVE_PREFIX_INVALID');
    expect(codeOf(() => manifestKey('r', '2026-13-01'))).toBe('ARCHIVE_DAY_INVALID');
  });

  it('is RFC 8785 canonical JSON: sorted keys, no whitespace, the same bytes for the same content', () => {
    const bytes = canonicalManifestBytes(manifest);
    const text = bytes.toString('utf8');
    expect(text.startsWith('{"bucket":"audit","createdAt":"2026-12-02T00:05:00.000Z","day":"2026-12-01","format":')).toBe(true);
    expect(text).not.toMatch(/\s/);
    const reordered = JSON.parse(JSON.stringify({ ...manifest, bucket: manifest.bucket })) as AuditManifest;
    expect(canonicalManifestBytes(reordered).equals(bytes)).toBe(true);
    expect(parseManifest(bytes)).toEqual(manifest);
    expect(manifestSha256(bytes)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('refuses what is not a v1 manifest', () => {
    expect(codeOf(() => parseManifest('{'))).toBe('MANIFEST_INVALID');
    expect(codeOf(() => parseManifest(JSON.stringify({ ...manifest, format: 'other' })))).toBe('MANIFEST_INVALID');
    expect(codeOf(() => parseManifest(JSON.stringify({ ...manifest, extra: 1 })))).toBe('MANIFEST_INVALID');
    const badChain = { ...manifest, partitions: [{ ...manifest.partitions[0]!, chainBefore: 'XYZ' }] };
    expect(codeOf(() => parseManifest(JSON.stringify(badChain)))).toBe('MANIFEST_INVALID');
  });

  it('reads signatures and counter-signatures', () => {
    const signature = { algorithm: 'ed25519' as const, keyId: 'k', keyVersion: 2, signature: Buffer.alloc(64, 7).toString('base64'), signedAt: '2026-12-02T00:05:01.000Z' };
    expect(parseManifestSignature(canonicalSignatureBytes(signature))).toEqual(signature);
    const counter = { ...signature, keyVersion: 3, counterSigns: 2 };
    expect(parseManifestSignature(canonicalSignatureBytes(counter))).toEqual(counter);
    expect(canonicalSignatureBytes(signature).toString('utf8')).toBe(
      `{"algorithm":"ed25519","keyId":"k","keyVersion":2,"signature":"${signature.signature}","signedAt":"2026-12-02T00:05:01.000Z"}`,
    );
    expect(codeOf(() => parseManifestSignature(JSON.stringify({ ...signature, signature: 'short' })))).toBe('MANIFEST_INVALID');
  });
});
