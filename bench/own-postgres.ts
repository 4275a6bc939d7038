// A temporary Postgres cluster with the server's durable defaults (fsync, synchronous_commit and
// full_page_writes on), for `bench provisioning --durable`: the stack's own server runs with all
// three off (dev/stack/postgres.ts passes them on the command line, which ALTER SYSTEM cannot
// override), so durable figures need a cluster of their own. Same binaries, same disk.
import { spawn, execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
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

export async function startDurablePostgres(): Promise<{ url: string; stop(): Promise<void> }> {
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
  const [cmd, args] = asServerUser(join(bin, 'postgres'), ['-D', data, '-h', '127.0.0.1', '-p', String(port), '-k', '', '-c', 'max_connections=300']);
  const child = spawn(cmd, args, { cwd: dir, stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `postgres://${SERVER_USER}@127.0.0.1:${port}/postgres`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000 });
    try {
      await client.connect();
      const { rows } = await client.query<{ fsync: string; synchronous_commit: string }>('SELECT current_setting($1) AS fsync, current_setting($2) AS synchronous_commit', ['fsync', 'synchronous_commit']);
      console.log(`durable Postgres on port ${port}: fsync ${rows[0]?.fsync}, synchronous_commit ${rows[0]?.synchronous_commit}`);
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
  return {
    url,
    async stop() {
      // SIGINT: the "fast" shutdown (clients are gone by now).
      child.kill('SIGINT');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
