import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LOCAL_VAULT } from '../../../dev/stack/vault.ts';
import { createPool } from '../../../lib/db/pool.ts';
import { migrateUp } from '../../../lib/db/migrate.ts';
import { createLogger } from '../../../lib/logger.ts';
import { createLocalSigner } from '../../../lib/signing/local.ts';
import { parsePublicKeysDocument, verifySignature } from '../../../lib/signing/verify.ts';
import { createVaultApi } from '../../../lib/vault.ts';
import { testEnv, uniqueName } from '../../support/stack.ts';
import { runCli } from '../../support/cli.ts';
import { registerUnprefixedSchemas } from '../../support/schemas.ts';

const cli = runCli;

const VAULT = {
  address: process.env.VAULT_ADDR ?? `http://${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`,
  token: process.env.VAULT_TOKEN ?? LOCAL_VAULT.rootToken,
};

describe('agent-manager keys (the CLI)', () => {
  const env = testEnv();
  const schema = uniqueName('keyscli').replace(/-/g, '_');
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'am-keys-cli-'));
    await registerUnprefixedSchemas(['audit-events']);
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
  });
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    const pool = createPool({ connectionString: env.DATABASE_URL ?? '', max: 1 });
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  it('a local keyring: rotate creates versions, revoke records one, list and public mark it; the published keys verify', async () => {
    const keyring = join(dir, 'keyring');
    const cliEnv = { ...env, DATABASE_SCHEMA: schema, LOG_LEVEL: 'warn', AUDIT_SIGNER: 'local', AUDIT_SIGNING_KEY_FILE: keyring, AUDIT_SIGNING_KEY_ID: 'cli-test' };
    for (const version of [1, 2]) {
      const rotated = await cli(['keys', 'rotate'], cliEnv);
      expect(rotated).toMatchObject({ code: 0 });
      expect(rotated.stdout).toContain(`cli-test rotated (local): version ${version} signs from now on`);
    }
    const usage = await cli(['keys', 'revoke', 'one', '--reason', 'x'], cliEnv);
    expect(usage.code).toBe(2);
    const revoked = await cli(['keys', 'revoke', '1', '--reason', 'laptop stolen', '--actor', 'alice'], cliEnv);
    expect(revoked).toMatchObject({ code: 0 });
    expect(revoked.stdout).toMatch(/^keys: cli-test version 1 revoked by alice at /);

    const listed = await cli(['keys', 'list'], cliEnv);
    expect(listed.code).toBe(0);
    const lines = listed.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^KEY\s+VERSION\s+CREATED\s+STATUS\s+PUBLIC KEY/);
    expect(lines[1]).toMatch(/^cli-test\s+1\s+\S+\s+REVOKED \S+: laptop stolen\s+\S{44}$/);
    expect(lines[2]).toMatch(/^cli-test\s+2\s+\S+\s+current\s+\S{44}$/);

    const published = await cli(['keys', 'public', '--json'], cliEnv);
    expect(published.code).toBe(0);
    const keys = parsePublicKeysDocument(published.stdout);
    expect(keys.map((k) => [k.version, k.revoked?.reason])).toEqual([
      [1, 'laptop stolen'],
      [2, undefined],
    ]);
    // What the service signs with verifies with the published file alone.
    const data = Buffer.from('manifest');
    const envelope = await createLocalSigner({ keyId: 'cli-test', source: { kind: 'directory', path: keyring } }).sign(data);
    expect(verifySignature(data, envelope, keys)).toBe(true);
    // Six CLI processes, each a few seconds on a loaded 2-core machine.
  }, 300_000);

  it('Vault Transit: rotate and list a key of the test’s own, never printing the token', async () => {
    const admin = createVaultApi(VAULT);
    const key = uniqueName('am-keys-cli');
    await admin.write(`transit/keys/${key}`, { type: 'ed25519' });
    try {
      // No DATABASE_URL: revocations are not read, and the CLI says so.
      const cliEnv = { ...env, DATABASE_URL: '', LOG_LEVEL: 'warn', AUDIT_SIGNER: 'vault-transit', VAULT_ADDR: VAULT.address, VAULT_TOKEN: VAULT.token, AUDIT_TRANSIT_KEY: key };
      const rotated = await cli(['keys', 'rotate'], cliEnv);
      expect(rotated).toMatchObject({ code: 0 });
      expect(rotated.stdout).toContain(`${key} rotated (vault-transit): version 2`);
      const listed = await cli(['keys', 'list', '--json'], cliEnv);
      expect(listed.code).toBe(0);
      expect(listed.stderr).toContain('revocations not read (DATABASE_URL not set)');
      const document = JSON.parse(listed.stdout) as { keyId: string; signer: string; currentVersion: number; revocationsChecked: boolean; keys: Array<{ version: number; current: boolean }> };
      expect(document).toMatchObject({ keyId: key, signer: 'vault-transit', currentVersion: 2, revocationsChecked: false });
      expect(document.keys.map((k) => [k.version, k.current])).toEqual([
        [1, false],
        [2, true],
      ]);
      for (const run of [rotated, listed]) expect(`${run.stdout}${run.stderr}`).not.toContain(VAULT.token);
    } finally {
      await admin.write(`transit/keys/${key}/config`, { deletion_allowed: true });
      await admin.delete(`transit/keys/${key}`);
    }
  }, 200_000);
});
