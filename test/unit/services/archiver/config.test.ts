import { loadArchiverConfig } from '../../../../services/archiver/config.ts';

const base = { S3_REGION: 'us-east-1', ARCHIVE_BUCKET: 'agent-manager-audit' };

function failure(f: () => unknown): string {
  try {
    f();
  } catch (error) {
    return (error as Error).message;
  }
  return '';
}

describe('archiver settings: signed day manifests', () => {
  it('are off without a signer, on with one (auto), and can be forced either way', () => {
    expect(loadArchiverConfig(base)).toMatchObject({ AUDIT_MANIFESTS: 'off', AUDIT_MANIFEST_INTERVAL_MS: 10_000, AUDIT_MANIFEST_RETRY_MIN_MS: 1_000, AUDIT_MANIFEST_RETRY_MAX_MS: 60_000 });
    expect(loadArchiverConfig({ ...base, AUDIT_SIGNING_KEY_FILE: '/keys' })).toMatchObject({ AUDIT_MANIFESTS: 'on', AUDIT_SIGNER: 'local' });
    expect(loadArchiverConfig({ ...base, AUDIT_SIGNER: 'vault-transit', VAULT_ADDR: 'http://127.0.0.1:8200', VAULT_TOKEN: 't' })).toMatchObject({ AUDIT_MANIFESTS: 'on', AUDIT_TRANSIT_KEY: 'agent-manager-audit' });
    expect(loadArchiverConfig({ ...base, AUDIT_MANIFESTS: 'off', AUDIT_SIGNER: 'vault-transit' })).toMatchObject({ AUDIT_MANIFESTS: 'off' });
  });

  it('name every missing signer setting when manifests are on', () => {
    expect(failure(() => loadArchiverConfig({ ...base, AUDIT_MANIFESTS: 'on' }))).toMatch(/AUDIT_SIGNING_KEY_FILE: required/);
    const message = failure(() => loadArchiverConfig({ ...base, AUDIT_SIGNER: 'vault-transit' }));
    expect(message).toMatch(/VAULT_ADDR: required/);
    expect(message).toMatch(/VAULT_TOKEN: required/);
    expect(failure(() => loadArchiverConfig({ ...base, AUDIT_MANIFESTS: 'sometimes' }))).toMatch(/AUDIT_MANIFESTS/);
  });
});
