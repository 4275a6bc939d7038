// A temporary Postgres cluster of the bench's own, for `bench provisioning --postgres durable|fast`:
// `durable` has the server's defaults (fsync, synchronous_commit and full_page_writes on), `fast`
// the stack's settings (all three off). The stack's own server runs with all three off (dev/stack/
// postgres.ts passes them on the command line, which ALTER SYSTEM cannot override), so durable
// figures need a cluster of their own; and only a cluster of its own counts the run's statements
// alone (pg_stat_statements, loaded here). Same binaries, same disk.
import { spawn, execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';

const SERVER_USER = 'postgres';
const isRoot = () => process.getuid?.() === 0;
/** Postgres refuses to run as root: as root, the cluster runs as Debian's `postgres` user. */
const asServerUser = (command: string, args: string[]): [string, string[]] => (isRoot() ? ['runuser', ['-u', SERVER_USER, '--', command, ...args]] : [command, args]);

function postgresBin(): string {
  const root = '/usr/lib/postgresql';
  const version = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))[0] : undefined;
  if (version === undefined) throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql');
  return join(root, version, 'bin');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface BenchPostgres {
  readonly url: string;
  /** Clears the statement and transaction counters. */
  reset(): Promise<void>;
  /** Transactions committed and statements run since `reset`, with the statements that took the most time. */
  stats(top: number): Promise<{ commits: number; statements: number; top: { query: string; calls: number; totalMs: number }[] }>;
  stop(): Promise<void>;
}

export async function startBenchPostgres(durable: boolean): Promise<BenchPostgres> {
  const bin = postgresBin();
  // Under /var/tmp: the disk the stack's cluster is on, and a folder the server's user can enter.
  const dir = mkdtempSync('/var/tmp/agent-manager-bench-pg-');
  const data = join(dir, 'data');
  if (isRoot()) {
    const uid = Number(execFileSync('id', ['-u', SERVER_USER]).toString().trim());
    const gid = Number(execFileSync('id', ['-g', SERVER_USER]).toString().trim());
    chownSync(dir, uid, gid);
  }
  const [initdb, initArgs] = asServerUser(join(bin, 'initdb'), ['-D', data, '-U', SERVER_USER, '--auth=trust', '-E', 'UTF8', '--no-locale']);
  execFileSync(initdb, initArgs, { cwd: dir, stdio: 'ignore' });
  const port = await freePort();
  const [cmd, args] = asServerUser(join(bin, 'postgres'), [
    '-D', data, '-h', '127.0.0.1', '-p', String(port), '-k', '',
    '-c', 'max_connections=300',
    '-c', 'shared_preload_libraries=pg_stat_statements',
    ...(durable ? [] : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
  ]);
  const child = spawn(cmd, args, { cwd: dir, stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `postgres://${SERVER_USER}@127.0.0.1:${port}/postgres`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000 });
    try {
      await client.connect();
      const { rows } = await client.query<{ fsync: string; synchronous_commit: string }>('SELECT current_setting($1) AS fsync, current_setting($2) AS synchronous_commit', ['fsync', 'synchronous_commit']);
      await client.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
      console.log(`bench Postgres on port ${port}: fsync ${rows[0]?.fsync}, synchronous_commit ${rows[0]?.synchronous_commit}`);
      break;
    } catch (error) {
      if (Date.now() > deadline || child.exitCode !== null) {
        child.kill('SIGINT');
        rmSync(dir, { recursive: true, force: true });
        throw error;
      }
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  const query = async <Row extends pg.QueryResultRow>(sql: string): Promise<Row[]> => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      return (await client.query<Row>(sql)).rows;
    } finally {
      await client.end();
    }
  };
  return {
    url,
    async reset() {
      await query('SELECT pg_stat_statements_reset(), pg_stat_reset()');
    },
    async stats(top) {
      const [counts] = await query<{ commits: string; statements: string }>(
        `SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())::text AS commits,
                (SELECT sum(calls) FROM pg_stat_statements)::text AS statements`,
      );
      const rows = await query<{ query: string; calls: string; total: number }>(
        `SELECT query, calls::text, total_exec_time AS total FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT ${Math.trunc(top)}`,
      );
      return {
        commits: Number(counts?.commits ?? 0),
        statements: Number(counts?.statements ?? 0),
        top: rows.map((r) => ({ query: r.query.replace(/\s+/g, ' ').slice(0, 110), calls: Number(r.calls), totalMs: r.total })),
      };
    },
    async stop() {
      // SIGINT to the postmaster itself (runuser does not pass it on): the "fast" shutdown.
      const postmaster = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (Number.isInteger(postmaster) && postmaster > 0) process.kill(postmaster, 'SIGINT');
      else child.kill('SIGINT');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
