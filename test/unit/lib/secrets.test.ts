import { Writable } from 'node:stream';
import { databaseConfigShape, loadConfig } from '../../../lib/config.ts';
import { createLogger } from '../../../lib/logger.ts';
import { isSecretVariable, parseVaultReference } from '../../../lib/secrets.ts';

describe('Vault references', () => {
  it('parses vault:<mount>/<path>#<key>', () => {
    expect(parseVaultReference('vault:secret/agent-manager/db#url')).toEqual({ mount: 'secret', path: 'agent-manager/db', key: 'url' });
    expect(parseVaultReference(' vault:kv/a#b ')).toEqual({ mount: 'kv', path: 'a', key: 'b' });
  });
  it('rejects what is not one (no key, no path, empty or dot segments)', () => {
    for (const value of ['vault:secret/db', 'vault:secret#key', 'vault:/db#key', 'vault:secret/a//b#k', 'vault:secret/../sys#k', 'secret/db#key', 'vault:secret/db#']) {
      expect(parseVaultReference(value)).toBeUndefined();
    }
  });
});

describe('secrets never echoed', () => {
  it('knows the secret-bearing variables', () => {
    for (const name of ['DATABASE_URL', 'REDIS_URL', 'S3_SECRET_ACCESS_KEY', 'VAULT_TOKEN', 'KAFKA_SASL_PASSWORD', 'SIGNING_PRIVATE_KEY']) expect(isSecretVariable(name)).toBe(true);
    for (const name of ['LOG_LEVEL', 'KAFKA_BROKERS', 'HTTP_PORT']) expect(isSecretVariable(name)).toBe(false);
  });

  it('keeps a bad DATABASE_URL out of the configuration error', () => {
    let message = '';
    try {
      loadConfig({ ...databaseConfigShape }, { DATABASE_URL: 'postgres//app:hunter2@db' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('DATABASE_URL: expected a URL (got "[redacted]")');
    expect(message).not.toContain('hunter2');
  });

  it('redacts common secret fields in logs, at the top level, one level down and in headers', () => {
    const lines: string[] = [];
    const log = createLogger('t', 'info', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
    log.info(
      {
        password: 's1',
        token: 's2',
        config: { DATABASE_URL: 'postgres://u:s3@h/d', VAULT_TOKEN: 's4', S3_SECRET_ACCESS_KEY: 's5' },
        request: { headers: { authorization: 'Bearer s6', 'x-vault-token': 's7', cookie: 's8' } },
        headers: { 'x-vault-token': 's9' },
        err: { apiKey: 's10' },
        agentId: 'agent-1',
      },
      'hello',
    );
    log.child({ connectionString: 'postgres://u:s11@h/d' }).info('child');
    const output = lines.join('');
    for (let i = 1; i <= 11; i++) expect(output).not.toMatch(new RegExp(`s${i}\\b`));
    expect(output).toContain('"agentId":"agent-1"');
    expect(output.match(/\[redacted\]/g)?.length).toBe(11);
  });
});
