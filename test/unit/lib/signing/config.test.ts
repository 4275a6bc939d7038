import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../../../lib/config.ts';
import { errorCode } from '../../../../lib/errors.ts';
import { createMetrics } from '../../../../lib/metrics.ts';
import { createSignerFromConfig, signerConfigShape, type SignerConfig } from '../../../../lib/signing/config.ts';

const load = (env: Record<string, string>) => loadConfig(signerConfigShape, env);

function failure(work: () => unknown): { code: string; message: string } {
  try {
    work();
  } catch (error) {
    return { code: errorCode(error), message: (error as Error).message };
  }
  throw new Error('expected an error');
}

describe('signer configuration', () => {
  it('defaults: a local signer, Transit key agent-manager-audit on transit/, rotation every 30 days', () => {
    const config = load({ AUDIT_SIGNING_KEY_FILE: '/keys' });
    expect(config).toMatchObject({
      AUDIT_SIGNER: 'local',
      AUDIT_SIGNING_KEY_ID: 'agent-manager-audit-local',
      AUDIT_TRANSIT_MOUNT: 'transit',
      AUDIT_TRANSIT_KEY: 'agent-manager-audit',
      AUDIT_SIGNING_TIMEOUT_MS: 5000,
      AUDIT_KEY_ROTATION_INTERVAL: 30 * 24 * 3600 * 1000,
    });
    expect(load({ AUDIT_KEY_ROTATION_INTERVAL: '12h' }).AUDIT_KEY_ROTATION_INTERVAL).toBe(12 * 3600 * 1000);
    expect(load({ AUDIT_KEY_ROTATION_INTERVAL: 'off' }).AUDIT_KEY_ROTATION_INTERVAL).toBe(0);
  });

  it('names each bad variable, never echoing a secret', () => {
    const bad = failure(() => load({ AUDIT_SIGNER: 'kms', AUDIT_KEY_ROTATION_INTERVAL: 'monthly', VAULT_ADDR: 'not a url', AUDIT_TRANSIT_KEY: 'a/b' }));
    expect(bad.code).toBe('CONFIG_INVALID');
    expect(bad.message).toMatch(/AUDIT_SIGNER: expected local or vault-transit/);
    expect(bad.message).toMatch(/AUDIT_KEY_ROTATION_INTERVAL: expected a duration/);
    expect(bad.message).toMatch(/VAULT_ADDR: expected a URL/);
    expect(bad.message).toMatch(/AUDIT_TRANSIT_KEY: expected a Transit key name/);
  });

  it('refuses combinations that cannot sign, naming the variable to set', () => {
    const none = failure(() => createSignerFromConfig(load({})));
    expect(none.message).toMatch(/AUDIT_SIGNING_KEY_FILE: required with AUDIT_SIGNER=local/);
    const both = failure(() => createSignerFromConfig(load({ AUDIT_SIGNING_KEY_FILE: '/k', AUDIT_SIGNING_KEY: 'secret-seed-value' })));
    expect(both.message).toMatch(/AUDIT_SIGNING_KEY: set both/);
    expect(both.message).not.toContain('secret-seed-value');
    const transit = failure(() => createSignerFromConfig(load({ AUDIT_SIGNER: 'vault-transit' })));
    expect(transit.code).toBe('CONFIG_INVALID');
    expect(transit.message).toMatch(/VAULT_ADDR: required with AUDIT_SIGNER=vault-transit/);
    expect(transit.message).toMatch(/VAULT_TOKEN: required with AUDIT_SIGNER=vault-transit \(or set VAULT_TOKEN_FILE\)/);
  });

  it('builds the signer named, counting signatures when given metrics', async () => {
    const transit = createSignerFromConfig(load({ AUDIT_SIGNER: 'vault-transit', VAULT_ADDR: 'http://vault:8200', VAULT_TOKEN: 't', AUDIT_TRANSIT_KEY: 'audit-k' }));
    expect([transit.kind, transit.keyId]).toEqual(['vault-transit', 'audit-k']);

    const dir = mkdtempSync(join(tmpdir(), 'am-signer-config-'));
    try {
      const metrics = createMetrics('test', { defaultMetrics: false });
      const config: SignerConfig = load({ AUDIT_SIGNING_KEY_FILE: join(dir, 'keyring'), AUDIT_SIGNING_KEY_ID: 'dev' });
      const signer = createSignerFromConfig(config, { metrics });
      expect([signer.kind, signer.keyId]).toEqual(['local', 'dev']);
      await expect(signer.sign(Buffer.from('x'))).rejects.toMatchObject({ code: 'SIGNING_KEY_MISSING' });
      await signer.rotate();
      await signer.sign(Buffer.from('x'));
      const text = await metrics.registry.metrics();
      expect(text).toMatch(/agent_manager_signing_operations_total\{result="ok",service="test"\} 1/);
      expect(text).toMatch(/agent_manager_signing_operations_total\{result="failed",service="test"\} 1/);
      expect(text).toMatch(/agent_manager_signing_duration_seconds_count\{service="test"\} 2/);
      expect(text).toMatch(/agent_manager_signing_key_last_rotation_timestamp_seconds\{service="test"\} \d+/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
