import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorCode } from '../../../../lib/errors.ts';
import { createLocalSigner } from '../../../../lib/signing/local.ts';
import { verifySignature } from '../../../../lib/signing/verify.ts';

const SEED_HEX = '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb';
const PUBLIC_B64 = Buffer.from('3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c', 'hex').toString('base64');
const pem = () => generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();

async function codeOf(work: () => Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await work();
  } catch (error) {
    return { code: errorCode(error), message: (error as Error).message };
  }
  throw new Error('expected an error');
}

describe('local Ed25519 signer', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'am-signing-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('a keyring directory: rotate creates v1, v2 (owner-only files); signs with the latest or a named version; each verifies with its own public key', async () => {
    const keyring = join(dir, 'keyring');
    const signer = createLocalSigner({ keyId: 'local-test', source: { kind: 'directory', path: keyring } });
    expect(await signer.publicKeys()).toEqual([]);
    expect((await codeOf(() => signer.sign(Buffer.from('x')))).code).toBe('SIGNING_KEY_MISSING');

    expect(await signer.rotate()).toBe(1);
    const data = Buffer.from('manifest bytes');
    const first = await signer.sign(data);
    expect(first).toMatchObject({ algorithm: 'ed25519', keyId: 'local-test', keyVersion: 1 });
    expect(await signer.rotate()).toBe(2);
    expect(await signer.currentVersion()).toBe(2);
    expect(readdirSync(keyring).sort()).toEqual(['v1.pem', 'v2.pem']);
    expect(statSync(join(keyring, 'v2.pem')).mode & 0o077).toBe(0);

    const second = await signer.sign(data);
    const again = await signer.sign(data, 1);
    expect([second.keyVersion, again.keyVersion]).toEqual([2, 1]);
    const published = await signer.publicKeys();
    expect(published.map((k) => k.version)).toEqual([1, 2]);
    expect(published.every((k) => k.createdAt !== undefined && !Number.isNaN(Date.parse(k.createdAt)))).toBe(true);
    for (const envelope of [first, second, again]) expect(verifySignature(data, envelope, published)).toBe(true);
    // v1's signature does not pass as v2's.
    expect(verifySignature(data, { ...first, keyVersion: 2 }, published)).toBe(false);
    expect((await codeOf(() => signer.sign(data, 3))).code).toBe('SIGNING_KEY_VERSION_UNKNOWN');

    // Another process's rotation is seen at once (the keyring is read on each call).
    await createLocalSigner({ keyId: 'local-test', source: { kind: 'directory', path: keyring } }).rotate();
    expect((await signer.sign(data)).keyVersion).toBe(3);
  });

  it('a PEM keyring file: versions by position; rotate appends one', async () => {
    const file = join(dir, 'keys.pem');
    writeFileSync(file, pem(), { mode: 0o600 });
    const signer = createLocalSigner({ keyId: 'k', source: { kind: 'file', path: file } });
    const before = await signer.sign(Buffer.from('a'));
    expect(before.keyVersion).toBe(1);
    expect(await signer.rotate()).toBe(2);
    expect(readFileSync(file, 'utf8').match(/BEGIN PRIVATE KEY/g)).toHaveLength(2);
    const published = await signer.publicKeys();
    expect(published.map((k) => k.version)).toEqual([1, 2]);
    expect(verifySignature(Buffer.from('a'), before, published)).toBe(true);
    expect((await signer.sign(Buffer.from('a'))).keyVersion).toBe(2);
  });

  it('a raw 32-byte seed file, or a seed or PEM value (a secret): one version that cannot rotate', async () => {
    const seedFile = join(dir, 'seed');
    writeFileSync(seedFile, Buffer.from(SEED_HEX, 'hex'));
    const fromFile = createLocalSigner({ keyId: 'k', source: { kind: 'file', path: seedFile } });
    expect((await fromFile.publicKeys()).map((k) => k.publicKey)).toEqual([PUBLIC_B64]);
    expect((await codeOf(() => fromFile.rotate())).code).toBe('SIGNING_KEY_NOT_ROTATABLE');

    for (const value of [SEED_HEX, Buffer.from(SEED_HEX, 'hex').toString('base64')]) {
      const signer = createLocalSigner({ keyId: 'k', source: { kind: 'value', value, name: 'AUDIT_SIGNING_KEY' } });
      expect((await signer.publicKeys())[0]?.publicKey).toBe(PUBLIC_B64);
      const rotation = await codeOf(() => signer.rotate());
      expect(rotation.code).toBe('SIGNING_KEY_NOT_ROTATABLE');
      expect(rotation.message).toContain('AUDIT_SIGNING_KEY');
    }
    const fromPem = createLocalSigner({ keyId: 'k', source: { kind: 'value', value: pem(), name: 'AUDIT_SIGNING_KEY' } });
    const envelope = await fromPem.sign(Buffer.from('b'));
    expect(verifySignature(Buffer.from('b'), envelope, await fromPem.publicKeys())).toBe(true);
  });

  it('refuses a key that is not Ed25519 or not a key, without quoting it', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const notKey = 'hunter2-not-a-key';
    for (const value of [rsa, notKey]) {
      const failure = await codeOf(() => createLocalSigner({ keyId: 'k', source: { kind: 'value', value, name: 'AUDIT_SIGNING_KEY' } }).sign(Buffer.from('x')));
      expect(failure.code).toBe('SIGNING_KEY_INVALID');
      expect(failure.message).toContain('AUDIT_SIGNING_KEY');
      expect(failure.message).not.toContain(notKey);
      expect(failure.message).not.toContain(rsa.split('\n')[1]);
    }
    const missing = await codeOf(() => createLocalSigner({ keyId: 'k', source: { kind: 'file', path: join(dir, 'absent') } }).sign(Buffer.from('x')));
    expect(missing.code).toBe('SIGNING_KEY_UNREADABLE');
  });
});
