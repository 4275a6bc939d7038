import { createHash } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { LOCAL_STACK } from './endpoints.ts';
import { aptInstall } from './install.ts';
import { processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { permanentError } from '../../lib/errors.ts';

const { host, port, user, password, database } = LOCAL_STACK.postgres;
const SUPERUSER = 'postgres';

async function canConnect(connectionString: string, timeoutMs = 2000): Promise<boolean> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: timeoutMs });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function findPostgresBin(): { bin: string; version: string } | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'postgres')) && existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  const version = versions[0];
  return version === undefined ? undefined : { bin: join(root, version, 'bin'), version };
}

const isRoot = () => process.getuid?.() === 0;

/** Postgres refuses to run as root: as root, the cluster runs as Debian's `postgres` user. */
function asServerUser(command: string, args: string[]): [string, string[]] {
  return isRoot() ? ['runuser', ['-u', SUPERUSER, '--', command, ...args]] : [command, args];
}

/**
 * The cluster lives in `.stack/postgres/data` when the server's user can reach it; a checkout under
 * a private folder (mode 700, as `mktemp -d` makes) cannot be entered by `postgres`, so the data
 * then goes to a per-checkout folder under /var/tmp.
 */
async function dataDir(ctx: StackContext): Promise<string> {
  const inProject = join(ctx.stackDir, 'postgres');
  mkdirSync(inProject, { recursive: true });
  if (!isRoot()) return join(inProject, 'data');
  try {
    await run('postgres: check folder access', 'runuser', ['-u', SUPERUSER, '--', 'test', '-x', inProject]);
    return join(inProject, 'data');
  } catch {
    const key = createHash('sha256').update(ctx.root).digest('hex').slice(0, 12);
    return join('/var/tmp/agent-manager', key, 'postgres-data');
  }
}

export function postgresComponent(): StackComponent {
  const name = 'postgres';
  const address = `${host}:${port}`;
  const localUrl = `postgres://${user}:${password}@${host}:${port}/${database}`;
  const superUrl = `postgres://${SUPERUSER}@${host}:${port}/postgres`;
  const files = (ctx: StackContext) => ({ pid: join(ctx.stackDir, 'postgres', 'pid'), log: join(ctx.stackDir, 'logs', 'postgres.log') });
  const external = (ctx: StackContext) => ctx.env.DATABASE_URL;

  async function ensureDatabase(): Promise<void> {
    const client = new pg.Client({ connectionString: superUrl });
    await client.connect();
    try {
      const role = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [user]);
      if (role.rowCount === 0) await client.query(`CREATE ROLE ${user} LOGIN PASSWORD '${password}' CREATEDB`);
      const db = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
      if (db.rowCount === 0) await client.query(`CREATE DATABASE ${database} OWNER ${user}`);
    } finally {
      await client.end();
    }
  }

  return {
    name,
    version: `PostgreSQL ${findPostgresBin()?.version ?? '(Debian package)'}`,
    address,
    env: () => ({ DATABASE_URL: localUrl }),
    async install(ctx) {
      if (external(ctx) || findPostgresBin()) return;
      await aptInstall(ctx, name, ['postgresql']);
    },
    async start(ctx) {
      const configured = external(ctx);
      if (configured) {
        if (await canConnect(configured)) return 'external';
        throw permanentError('STACK_EXTERNAL_UNREACHABLE', `postgres: DATABASE_URL is set but that server does not answer; unset it to use the stack's own`);
      }
      if (await canConnect(localUrl)) return 'reused';
      const f = files(ctx);
      const found = findPostgresBin();
      if (!found) throw permanentError('STACK_MISSING', 'postgres: no PostgreSQL server binaries under /usr/lib/postgresql after install');
      const data = await dataDir(ctx);
      mkdirSync(dirname(data), { recursive: true, mode: 0o755 });
      mkdirSync(data, { recursive: true, mode: 0o700 });
      if (isRoot()) {
        const { stdout } = await run('postgres: id', 'id', ['-u', SUPERUSER]);
        const { stdout: gid } = await run('postgres: id', 'id', ['-g', SUPERUSER]);
        chownSync(data, Number(stdout.trim()), Number(gid.trim()));
      }
      if (!existsSync(join(data, 'PG_VERSION'))) {
        ctx.progress(`postgres: creating a cluster in ${data}`);
        const [cmd, args] = asServerUser(join(found.bin, 'initdb'), ['-D', data, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8', '--no-locale']);
        // cwd: a folder the server's user can enter (the checkout may be private to root).
        await run('postgres: initdb', cmd, args, { logFile: f.log, cwd: dirname(data) });
      }
      ctx.progress(`postgres: starting on ${address}`);
      const [cmd, args] = asServerUser(join(found.bin, 'postgres'), [
        '-D', data,
        '-h', host,
        '-p', String(port),
        '-k', '',
        // A development stack: durability of the dev database itself is traded for speed.
        '-c', 'fsync=off',
        '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
        '-c', 'max_connections=300',
      ]);
      const pid = spawnDetached({ command: cmd, args, cwd: dirname(data), logFile: f.log, pidFile: f.pid });
      await waitUntil(name, () => canConnect(superUrl), { timeoutMs: 60_000, logFile: f.log, pid });
      await ensureDatabase();
      return 'started';
    },
    // SIGINT is Postgres' "fast" shutdown: it does not wait for clients to disconnect.
    stop: (ctx) => stopProcessGroup(files(ctx).pid, 'SIGINT', 30_000),
    status(ctx) {
      const configured = external(ctx);
      return processStatus({ ...this, address: configured ? 'DATABASE_URL' : address }, files(ctx).pid, () => canConnect(configured ?? localUrl));
    },
  };
}
