import { createPrivateKey, generateKeyPairSync, sign } from 'node:crypto';
import { errorCode } from '../../../../lib/errors.ts';
import type { PublicKeyVersion, SignatureEnvelope } from '../../../../lib/signing/signer.ts';
import { ed25519PublicKey, findPublicKey, parsePublicKeysDocument, parseSignatureEnvelope, rawPublicKey, verifySignature } from '../../../../lib/signing/verify.ts';

// RFC 8032, 7.1, TEST 2: an auditor's independent Ed25519 implementation gives the same answer.
const RFC8032 = {
  seed: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
  publicKey: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
  message: '72',
  signature: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
};
const b64 = (hex: string) => Buffer.from(hex, 'hex').toString('base64');

describe('verifySignature (offline, with the published public keys alone)', () => {
  const keys: PublicKeyVersion[] = [{ keyId: 'rfc', version: 1, publicKey: b64(RFC8032.publicKey) }];
  const envelope: SignatureEnvelope = { algorithm: 'ed25519', keyId: 'rfc', keyVersion: 1, signature: b64(RFC8032.signature) };
  const message = Buffer.from(RFC8032.message, 'hex');

  it('accepts RFC 8032’s test vector and nothing else', () => {
    expect(verifySignature(message, envelope, keys)).toBe(true);
    expect(verifySignature(Buffer.from('73', 'hex'), envelope, keys)).toBe(false);
    const flipped = Buffer.from(RFC8032.signature, 'hex');
    flipped[10] = (flipped[10] ?? 0) ^ 1;
    expect(verifySignature(message, { ...envelope, signature: flipped.toString('base64') }, keys)).toBe(false);
  });

  it('needs the key the envelope names: same id and version', () => {
    expect(verifySignature(message, { ...envelope, keyVersion: 2 }, keys)).toBe(false);
    expect(verifySignature(message, { ...envelope, keyId: 'other' }, keys)).toBe(false);
    expect(findPublicKey({ keyId: 'rfc', keyVersion: 1 }, keys)).toBe(keys[0]);
    expect(findPublicKey({ keyId: 'rfc', keyVersion: 2 }, keys)).toBeUndefined();
    // A second version with another key does not verify the first one's signature.
    const other = rawPublicKey(generateKeyPairSync('ed25519').publicKey);
    expect(verifySignature(message, { ...envelope, keyVersion: 2 }, [...keys, { keyId: 'rfc', version: 2, publicKey: other }])).toBe(false);
  });

  it('is false, not an exception, for a malformed key or signature', () => {
    expect(verifySignature(message, { ...envelope, signature: 'AAAA' }, keys)).toBe(false);
    expect(verifySignature(message, envelope, [{ keyId: 'rfc', version: 1, publicKey: 'not-a-key' }])).toBe(false);
    expect(verifySignature(message, envelope, [{ keyId: 'rfc', version: 1, publicKey: Buffer.alloc(31).toString('base64') }])).toBe(false);
    expect(verifySignature(message, { ...envelope, algorithm: 'rsa' as 'ed25519' }, keys)).toBe(false);
  });

  it('converts between raw 32-byte public keys and KeyObjects', () => {
    const privateKey = createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(RFC8032.seed, 'hex')]), format: 'der', type: 'pkcs8' });
    expect(rawPublicKey(privateKey)).toBe(b64(RFC8032.publicKey));
    expect(sign(null, message, privateKey).toString('base64')).toBe(b64(RFC8032.signature));
    expect(ed25519PublicKey(b64(RFC8032.publicKey))?.asymmetricKeyType).toBe('ed25519');
    expect(ed25519PublicKey('!!')).toBeUndefined();
  });
});

describe('parsing envelopes and public key files', () => {
  it('reads a .sig envelope, ignoring extra fields, and refuses a malformed one', () => {
    const parsed = parseSignatureEnvelope({ algorithm: 'ed25519', keyId: 'k', keyVersion: 3, signature: 'c2ln', signedAt: '2026-12-01T00:00:00Z', counterSigns: 2 });
    expect(parsed).toEqual({ algorithm: 'ed25519', keyId: 'k', keyVersion: 3, signature: 'c2ln' });
    let code = '';
    try {
      parseSignatureEnvelope({ algorithm: 'ed25519', keyId: 'k', keyVersion: 0, signature: 'x' });
    } catch (error) {
      code = errorCode(error);
    }
    expect(code).toBe('SIGNATURE_MALFORMED');
  });

  it('reads `keys public --json` and a bare array of versions; refuses anything else', () => {
    const key = { keyId: 'k', version: 1, publicKey: b64(RFC8032.publicKey), createdAt: '2026-12-01T00:00:00Z' };
    const document = { format: 'agent-manager.public-keys/v1', algorithm: 'ed25519', keys: [{ ...key, revoked: { at: '2026-12-02T00:00:00Z', reason: 'leaked' } }] };
    expect(parsePublicKeysDocument(JSON.stringify(document))).toEqual(document.keys);
    expect(parsePublicKeysDocument(JSON.stringify([key]))).toEqual([key]);
    for (const bad of ['nope', '{}', JSON.stringify([{ ...key, publicKey: 'short' }])]) {
      let code = '';
      try {
        parsePublicKeysDocument(bad);
      } catch (error) {
        code = errorCode(error);
      }
      expect(code).toBe('PUBLIC_KEYS_INVALID');
    }
  });
});
