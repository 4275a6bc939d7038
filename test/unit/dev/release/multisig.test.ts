import { generateKeyPairSync } from 'node:crypto';
import { isAppError } from '../../../../lib/errors.ts';
import {
  breakGlassPolicyProblems,
  breakGlassRecord,
  buildManifest,
  canonicalManifest,
  generateKey,
  loadKeySet,
  manifestDigest,
  parseManifest,
  signManifest,
  verifyRelease,
  type GeneratedKey,
  type KeySet,
  type ReleaseManifest,
  type ReleaseSignature,
} from '../../../../dev/release/multisig.ts';

const hex = (c: string) => c.repeat(64);
const manifest: ReleaseManifest = buildManifest({
  commit: 'a'.repeat(40),
  ref: 'refs/tags/v1.4.0',
  imageRepository: 'ghcr.io/acme/agent-manager',
  imageDigest: `sha256:${hex('1')}`,
  chartRepository: 'oci://ghcr.io/acme/charts/agent-manager',
  chartVersion: '1.4.0',
  chartDigest: `sha256:${hex('2')}`,
});

const maintainers: Record<string, GeneratedKey> = { alice: generateKey(), bob: generateKey(), carol: generateKey() };
const outsider = generateKey();
const keys: KeySet = loadKeySet(Object.entries(maintainers).map(([name, key]) => ({ name, pem: key.publicPem })));

const sign = (name: string, key: GeneratedKey = maintainers[name] as GeneratedKey, m: ReleaseManifest = manifest) => signManifest(m, key.privatePem, name);
const file = (name: string, signature: ReleaseSignature | string) => ({ file: `${name}.sig.json`, text: typeof signature === 'string' ? signature : JSON.stringify(signature) });
const verify = (signatures: { file: string; text: string }[], threshold = 2, expect?: Parameters<typeof verifyRelease>[0]['expect']) =>
  verifyRelease({ manifest, signatures, keys, threshold, ...(expect ? { expect } : {}) });
const codes = (result: ReturnType<typeof verifyRelease>) => result.problems.map((p) => p.code);

function thrownCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return isAppError(error) ? error.code : 'NOT_AN_APP_ERROR';
  }
  return undefined;
}

describe('the release manifest', () => {
  it('is canonical JSON: the same manifest from a file with another key order and whitespace has the same digest', () => {
    const reordered = JSON.stringify({ image: manifest.image, schema: manifest.schema, chart: manifest.chart, ref: manifest.ref, commit: manifest.commit }, null, 2);
    const parsed = parseManifest(reordered);
    expect(canonicalManifest(parsed)).toBe(canonicalManifest(manifest));
    expect(manifestDigest(parsed)).toBe(manifestDigest(manifest));
    expect(canonicalManifest(manifest)).toMatch(/^\{"chart":\{"digest":/);
  });

  it('refuses a digest that is not sha256:<64 hex>, a short commit, an unknown field and non-JSON', () => {
    const base = { commit: 'a'.repeat(40), imageRepository: 'r', imageDigest: `sha256:${hex('1')}`, chartRepository: 'c', chartVersion: '1', chartDigest: `sha256:${hex('2')}` };
    expect(thrownCode(() => buildManifest({ ...base, imageDigest: 'sha256:abc' }))).toBe('RELEASE_MANIFEST_INVALID');
    expect(thrownCode(() => buildManifest({ ...base, commit: 'abc123' }))).toBe('RELEASE_MANIFEST_INVALID');
    expect(thrownCode(() => parseManifest(JSON.stringify({ ...manifest, extra: 1 })))).toBe('RELEASE_MANIFEST_INVALID');
    expect(thrownCode(() => parseManifest('{"schema":'))).toBe('RELEASE_MANIFEST_INVALID');
  });
});

describe('release verify', () => {
  it('accepts 2 valid signatures of 3 trusted keys with threshold 2, and the expected digests and commit', () => {
    const result = verify([file('alice', sign('alice')), file('bob', sign('bob'))], 2, {
      imageDigest: manifest.image.digest,
      chartDigest: manifest.chart.digest,
      commit: manifest.commit,
    });
    expect(result.problems).toEqual([]);
    expect(result.ok).toBe(true);
    expect(result.accepted.map((s) => s.name).sort()).toEqual(['alice', 'bob']);
  });

  it('too few: 1 valid signature with threshold 2', () => {
    const result = verify([file('alice', sign('alice'))]);
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_TOO_FEW_SIGNATURES']);
    expect(result.problems[0]?.message).toMatch(/1 valid signature.*alice.*2 of 3 are required/);
  });

  it('no signatures at all', () => {
    expect(codes(verify([]))).toEqual(['RELEASE_TOO_FEW_SIGNATURES']);
  });

  it('duplicate: the same key twice counts once and fails the set', () => {
    const result = verify([file('alice', sign('alice')), file('alice-again', sign('alice'))]);
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_DUPLICATE_SIGNATURE', 'RELEASE_TOO_FEW_SIGNATURES']);
    expect(result.problems[0]?.message).toMatch(/alice signed 2 times \(alice\.sig\.json, alice-again\.sig\.json\)/);
  });

  it('duplicate: fails even when the threshold is met by other keys', () => {
    const result = verify([file('alice', sign('alice')), file('bob', sign('bob')), file('bob2', sign('bob'))]);
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_DUPLICATE_SIGNATURE']);
  });

  it('unknown key: a valid signature by a key that is not trusted, whatever name it claims', () => {
    const result = verify([file('alice', sign('alice')), file('bob', sign('bob', outsider)), file('mallory', sign('mallory', outsider))]);
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_UNKNOWN_KEY', 'RELEASE_UNKNOWN_KEY', 'RELEASE_TOO_FEW_SIGNATURES']);
    expect(result.problems[0]?.message).toMatch(/signed by "bob" with key sha256:[0-9a-f]{64}, which is not one of the 3 trusted keys/);
  });

  it('forged: a signature made with another key but claiming a trusted keyId', () => {
    const forged = { ...sign('mallory', outsider), signer: 'bob', keyId: sign('bob').keyId };
    const result = verify([file('alice', sign('alice')), file('bob', forged)]);
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_FORGED_SIGNATURE', 'RELEASE_TOO_FEW_SIGNATURES']);
    expect(result.problems[0]?.message).toMatch(/does not verify with bob's key/);
  });

  it('forged: one flipped bit in a signature', () => {
    const good = sign('bob');
    const bytes = Buffer.from(good.signature, 'base64');
    bytes[0] = (bytes[0] ?? 0) ^ 1;
    expect(codes(verify([file('alice', sign('alice')), file('bob', { ...good, signature: bytes.toString('base64') })]))).toEqual([
      'RELEASE_FORGED_SIGNATURE',
      'RELEASE_TOO_FEW_SIGNATURES',
    ]);
  });

  it('forged: a signature over another manifest relabelled with this manifest\'s digest', () => {
    const other = { ...manifest, image: { ...manifest.image, digest: `sha256:${hex('9')}` } };
    const relabelled = { ...sign('bob', maintainers.bob, other), manifestDigest: manifestDigest(manifest) };
    expect(codes(verify([file('alice', sign('alice')), file('bob', relabelled)]))).toEqual(['RELEASE_FORGED_SIGNATURE', 'RELEASE_TOO_FEW_SIGNATURES']);
  });

  it('fails closed: one forged signature fails a set that otherwise meets the threshold', () => {
    const forged = { ...sign('mallory', outsider), keyId: sign('carol').keyId };
    const result = verify([file('alice', sign('alice')), file('bob', sign('bob')), file('carol', forged)]);
    expect(result.accepted).toHaveLength(2);
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_FORGED_SIGNATURE']);
  });

  it('a manifest edited after signing: every signature is over another manifest', () => {
    const edited = { ...manifest, image: { ...manifest.image, digest: `sha256:${hex('f')}` } };
    const result = verifyRelease({ manifest: edited, signatures: [file('alice', sign('alice')), file('bob', sign('bob'))], keys, threshold: 2 });
    expect(codes(result)).toEqual(['RELEASE_SIGNATURE_OTHER_MANIFEST', 'RELEASE_SIGNATURE_OTHER_MANIFEST', 'RELEASE_TOO_FEW_SIGNATURES']);
    expect(result.problems[0]?.message).toMatch(/the manifest changed after signing/);
  });

  it('a manifest that differs from what is released: image digest, chart digest and commit each named', () => {
    const result = verify([file('alice', sign('alice')), file('bob', sign('bob'))], 2, {
      imageDigest: `sha256:${hex('3')}`,
      chartDigest: `sha256:${hex('4')}`,
      commit: 'b'.repeat(40),
    });
    expect(result.ok).toBe(false);
    expect(codes(result)).toEqual(['RELEASE_MANIFEST_MISMATCH', 'RELEASE_MANIFEST_MISMATCH', 'RELEASE_MANIFEST_MISMATCH']);
    expect(result.problems.map((p) => p.message).join('\n')).toMatch(/image digest[\s\S]*chart digest[\s\S]*commit/);
  });

  it('a malformed signature file is named, not skipped', () => {
    const { signature: _dropped, ...unsigned } = sign('bob');
    const result = verify([file('alice', sign('alice')), file('bob', JSON.stringify(unsigned)), file('carol', 'not json')]);
    expect(codes(result)).toEqual(['RELEASE_SIGNATURE_INVALID', 'RELEASE_SIGNATURE_INVALID', 'RELEASE_TOO_FEW_SIGNATURES']);
  });

  it('refuses a threshold below 1 or above the number of keys', () => {
    expect(thrownCode(() => verify([], 0))).toBe('RELEASE_THRESHOLD_INVALID');
    expect(thrownCode(() => verify([], 4))).toBe('RELEASE_THRESHOLD_INVALID');
  });
});

describe('trusted keys', () => {
  it('one key under two names would count twice: refused', () => {
    const alice = maintainers.alice as GeneratedKey;
    expect(thrownCode(() => loadKeySet([{ name: 'alice', pem: alice.publicPem }, { name: 'alice2', pem: alice.publicPem }]))).toBe('RELEASE_DUPLICATE_KEY');
  });

  it('only Ed25519 public keys', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(thrownCode(() => loadKeySet([{ name: 'rsa', pem: rsa }]))).toBe('RELEASE_KEY_INVALID');
    expect(thrownCode(() => loadKeySet([{ name: 'junk', pem: 'junk' }]))).toBe('RELEASE_KEY_INVALID');
    expect(thrownCode(() => signManifest(manifest, 'junk', 'x'))).toBe('RELEASE_KEY_INVALID');
  });
});

describe('break-glass', () => {
  const emergency: Record<string, GeneratedKey> = { dan: generateKey(), erin: generateKey(), fay: generateKey(), gus: generateKey() };
  const emergencyKeys = loadKeySet(Object.entries(emergency).map(([name, key]) => ({ name, pem: key.publicPem })));

  it('a separate key set with a higher threshold passes the policy', () => {
    expect(breakGlassPolicyProblems({ keys: emergencyKeys, threshold: 3 }, { keys, threshold: 2 })).toEqual([]);
  });

  it('refuses a key set that shares a key with the maintainers, and a threshold not above theirs', () => {
    const alice = maintainers.alice as GeneratedKey;
    const mixed = loadKeySet([...Object.entries(emergency).map(([name, key]) => ({ name, pem: key.publicPem })), { name: 'alice-bg', pem: alice.publicPem }]);
    const problems = breakGlassPolicyProblems({ keys: mixed, threshold: 2 }, { keys, threshold: 2 });
    expect(problems.map((p) => p.code)).toEqual(['RELEASE_BREAK_GLASS_KEYS_NOT_SEPARATE', 'RELEASE_BREAK_GLASS_THRESHOLD_TOO_LOW']);
    expect(problems[0]?.message).toMatch(/alice-bg/);
  });

  it('the audit record says who, why, what and the outcome, refused ones included', () => {
    const signatures = ['dan', 'erin', 'fay'].map((name) => file(name, signManifest(manifest, (emergency[name] as GeneratedKey).privatePem, name)));
    const accepted = verifyRelease({ manifest, signatures, keys: emergencyKeys, threshold: 3 });
    const time = new Date('2026-12-01T06:00:00Z');
    const record = breakGlassRecord(accepted, manifest, { actor: 'oncall', reason: 'CVE hotfix', time });
    expect(record).toMatchObject({ time: '2026-12-01T06:00:00.000Z', action: 'release.break_glass', outcome: 'accepted', actor: 'oncall', reason: 'CVE hotfix', threshold: 3 });
    expect(record.manifestDigest).toBe(manifestDigest(manifest));
    expect(record.signers.map((s) => s.name).sort()).toEqual(['dan', 'erin', 'fay']);

    const refused = verifyRelease({ manifest, signatures: signatures.slice(0, 2), keys: emergencyKeys, threshold: 3 });
    expect(breakGlassRecord(refused, manifest, { actor: 'oncall', reason: 'CVE hotfix', time })).toMatchObject({
      outcome: 'refused',
      problems: [expect.objectContaining({ code: 'RELEASE_TOO_FEW_SIGNATURES' })],
    });
  });
});
