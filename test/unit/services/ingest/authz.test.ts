import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorCode, errorMessage, isRetryable } from '../../../../lib/errors.ts';
import { authorizeAction, isKnownIdentity, loadIdentitiesConfig, mayRead, parseIdentitiesConfig, readableDivisions } from '../../../../services/ingest/authz.ts';

const shipped = loadIdentitiesConfig(join(process.cwd(), 'config', 'identities.json'));

function caught(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

describe('the shipped config/identities.json', () => {
  it('lets kernel and demo-kernel do every action in every division', () => {
    for (const identity of ['kernel', 'demo-kernel']) {
      for (const action of ['INSTANTIATE', 'START', 'STOP', 'RESTART', 'DESTROY'] as const) {
        expect(authorizeAction(shipped, identity, action, ['research', 'platform'])).toEqual({ allowed: true });
      }
      expect(readableDivisions(shipped, identity)).toBe('*');
    }
  });

  it('lets viewer read everything and act on nothing', () => {
    expect(authorizeAction(shipped, 'viewer', 'STOP', ['research'])).toEqual({
      allowed: false,
      code: 'UNAUTHORIZED',
      reason: 'identity "viewer" may not STOP agents of division "research" (roles: viewer)',
    });
    expect(readableDivisions(shipped, 'viewer')).toBe('*');
    expect(mayRead(shipped, 'viewer', 'anything')).toBe(true);
  });

  it('limits research-bot to INSTANTIATE, STOP and DESTROY in research', () => {
    expect(authorizeAction(shipped, 'research-bot', 'INSTANTIATE', ['research'])).toEqual({ allowed: true });
    expect(authorizeAction(shipped, 'research-bot', 'DESTROY', ['research'])).toEqual({ allowed: true });
    expect(authorizeAction(shipped, 'research-bot', 'RESTART', ['research'])).toMatchObject({ allowed: false, code: 'UNAUTHORIZED' });
    expect(authorizeAction(shipped, 'research-bot', 'INSTANTIATE', ['platform'])).toMatchObject({ allowed: false, code: 'UNAUTHORIZED' });
    // Every division must be allowed: the request's and the agent's.
    expect(authorizeAction(shipped, 'research-bot', 'STOP', ['research', 'platform'])).toMatchObject({ allowed: false });
    expect(readableDivisions(shipped, 'research-bot')).toEqual(['research']);
    expect(mayRead(shipped, 'research-bot', 'platform')).toBe(false);
  });

  it('knows no one else', () => {
    expect(isKnownIdentity(shipped, 'mallory')).toBe(false);
    expect(isKnownIdentity(shipped, 'toString')).toBe(false);
    expect(authorizeAction(shipped, 'mallory', 'STOP', ['research'])).toEqual({ allowed: false, code: 'UNKNOWN_IDENTITY', reason: 'identity "mallory" is not configured: it has no roles' });
    expect(readableDivisions(shipped, 'mallory')).toEqual([]);
  });
});

describe('role semantics', () => {
  const config = parseIdentitiesConfig(
    {
      roles: {
        creator: { actions: ['INSTANTIATE'], divisions: ['research'] },
        destroyer: { actions: ['DESTROY'], divisions: ['*'] },
      },
      identities: { mixed: { roles: ['creator', 'destroyer'] } },
    },
    'inline',
  );

  it('does not mix roles: each permission comes from one role', () => {
    expect(authorizeAction(config, 'mixed', 'INSTANTIATE', ['research'])).toEqual({ allowed: true });
    expect(authorizeAction(config, 'mixed', 'DESTROY', ['platform'])).toEqual({ allowed: true });
    expect(authorizeAction(config, 'mixed', 'INSTANTIATE', ['platform'])).toMatchObject({ allowed: false, code: 'UNAUTHORIZED' });
  });

  it('reads are off unless a role says read: true', () => {
    expect(readableDivisions(config, 'mixed')).toEqual([]);
  });
});

describe('loading and validating the document', () => {
  const dir = mkdtempSync(join(tmpdir(), 'identities-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the file when it cannot be read', () => {
    const file = join(dir, 'missing.json');
    const error = caught(() => loadIdentitiesConfig(file));
    expect(errorCode(error)).toBe('IDENTITIES_CONFIG_INVALID');
    expect(isRetryable(error)).toBe(false);
    expect(errorMessage(error)).toContain(file);
  });

  it('names the file when it is not JSON', () => {
    const file = join(dir, 'broken.json');
    writeFileSync(file, '{ roles: ');
    expect(errorMessage(caught(() => loadIdentitiesConfig(file)))).toMatch(new RegExp(`identities configuration ${file.replace(/[.]/g, '\\.')} is not valid JSON`));
  });

  it('names the file and each problem when the document is invalid', () => {
    const file = join(dir, 'invalid.json');
    writeFileSync(
      file,
      JSON.stringify({
        roles: { op: { actions: ['LAUNCH'], divisions: [] } },
        identities: { kernel: { roles: ['op', 'ghost'] } },
        extra: true,
      }),
    );
    const message = errorMessage(caught(() => loadIdentitiesConfig(file)));
    expect(message).toContain(`identities configuration ${file} is invalid`);
    expect(message).toContain('roles.op.actions.0');
    expect(message).toContain('roles.op.divisions: must list at least one division (or "*")');
    expect(message).toMatch(/extra/);
  });

  it('refuses an identity with an undefined role', () => {
    const message = errorMessage(caught(() => parseIdentitiesConfig({ roles: { op: { actions: ['*'], divisions: ['*'] } }, identities: { kernel: { roles: ['ghost'] } } }, 'inline.json')));
    expect(message).toBe('identities configuration inline.json is invalid: identities.kernel.roles.0: unknown role "ghost" (defined: op)');
  });
});
