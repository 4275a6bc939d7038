import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

// A deployed image runs `agent-manager run <service>` (and migrate, topics, dlq, safe-mode) without
// the development tooling in dev/ and without devDependencies: none of those commands may load them.
const root = join(__dirname, '..', '..', '..');
const hook = `data:text/javascript,${encodeURIComponent(`import { register } from 'node:module'; register(${JSON.stringify(`file://${join(root, 'test', 'fixtures', 'forbid-dev-modules.mjs')}`)});`)}`;

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, ['--import', hook, join(root, 'bin', 'agent-manager.js'), ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    timeout: 60_000,
  });
}

describe('the CLI as a deployed image runs it', () => {
  it.each([['--help'], ['run', '--help'], ['migrate', '--help'], ['topics', 'create', '--help'], ['dlq', 'list', '--help'], ['safe-mode', '--help']])(
    '%s loads nothing from dev/',
    (...args) => {
      const result = cli(args);
      expect(result.stderr).not.toContain('development-only module');
      expect(result.status).toBe(0);
    },
  );

  it('run without configuration refuses to start, naming the missing variables, and loads nothing from dev/', () => {
    const result = cli(['run', 'ingest']);
    expect(result.stderr).not.toContain('development-only module');
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/KAFKA_BROKERS[\s\S]*not set/);
    expect(result.stderr).toMatch(/DATABASE_URL[\s\S]*not set/);
  });

  it('the hook does catch a command that loads dev/ (stack status)', () => {
    const result = cli(['stack', 'status']);
    expect(result.stderr).toContain('development-only module');
  });
});
