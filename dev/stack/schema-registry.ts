import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { LOCAL_STACK } from './endpoints.ts';
import { ensureMaven, findJava } from './install.ts';
import { httpOk, isAlive, processStatus, readPid, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { errorMessage, permanentError, retryableError } from '../../lib/errors.ts';

const APICURIO_VERSION = '3.3.3';
const { host, port } = LOCAL_STACK.schemaRegistry;
const base = `http://${host}:${port}`;
/** The registry's own database on the stack's Postgres (or on the server DATABASE_URL names). */
export const REGISTRY_DATABASE = 'apicurio';

/**
 * Where the registry keeps its schemas. Kafka keeps records with the schema ids they were encoded
 * with, so the ids must outlive a registry restart: in memory, a restarted registry hands the same
 * ids out again in whatever order schemas come back, and old records decode with the wrong schema.
 */
export function registryStorage(env: NodeJS.ProcessEnv): { adminUrl: string; jdbcUrl: string; user: string; password: string } {
  const pgStack = LOCAL_STACK.postgres;
  const server = new URL(env.DATABASE_URL ?? `postgres://${pgStack.user}:${pgStack.password}@${pgStack.host}:${pgStack.port}/${pgStack.database}`);
  const portPart = server.port === '' ? '' : `:${server.port}`;
  return {
    adminUrl: server.toString(),
    jdbcUrl: `jdbc:postgresql://${server.hostname}${portPart}/${REGISTRY_DATABASE}`,
    user: decodeURIComponent(server.username),
    password: decodeURIComponent(server.password),
  };
}

/**
 * Waits for Postgres (`stack up` starts every component at once) and creates the registry's
 * database when it is missing; the registry creates its tables itself (apicurio.sql.init).
 */
async function ensureRegistryDatabase(adminUrl: string, log: string): Promise<void> {
  const connects = async () => {
    const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 2000 });
    try {
      await client.connect();
      return true;
    } finally {
      await client.end().catch(() => undefined);
    }
  };
  await waitUntil('schema-registry (waiting for postgres)', connects, { timeoutMs: 120_000, logFile: log });
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [REGISTRY_DATABASE]);
    if (found.rowCount === 0) {
      await client.query(`CREATE DATABASE ${REGISTRY_DATABASE}`).catch((error: unknown) => {
        // 42P04: created meanwhile by a concurrent `stack up`.
        if ((error as { code?: unknown }).code !== '42P04') throw error;
      });
    }
  } catch (error) {
    throw permanentError('STACK_REGISTRY_DATABASE', `schema-registry: cannot create its database ${REGISTRY_DATABASE}: ${errorMessage(error)}`, error);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The JVM's command line of a running registry, '' when unknown (no /proc). */
function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/**
 * Sets the global compatibility rule to BACKWARD (stored with the schemas; set again after every
 * start so a registry started elsewhere gets it too); without it
 * @kafkajs/confluent-schema-registry's BACKWARD registration fails on Apicurio.
 */
async function ensureGlobalBackwardRule(): Promise<void> {
  const rule = { ruleType: 'COMPATIBILITY', config: 'BACKWARD' };
  const existing = await fetch(`${base}/apis/registry/v3/admin/rules/COMPATIBILITY`);
  const response = existing.ok
    ? await fetch(`${base}/apis/registry/v3/admin/rules/COMPATIBILITY`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(rule) })
    : await fetch(`${base}/apis/registry/v3/admin/rules`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(rule) });
  if (!response.ok) {
    throw retryableError('STACK_REGISTRY_RULE', `schema-registry: setting the global BACKWARD rule failed: HTTP ${response.status} ${await response.text()}`);
  }
}

export function schemaRegistryComponent(): StackComponent {
  const name = 'schema-registry';
  const address = `${base}/apis/ccompat/v7`;
  const dirs = (ctx: StackContext) => {
    const dir = join(ctx.stackDir, 'schema-registry');
    return { dir, dist: join(dir, 'dist'), pid: join(dir, 'pid'), log: join(ctx.stackDir, 'logs', 'schema-registry.log') };
  };
  const healthy = () => httpOk(`${address}/subjects`);

  return {
    name,
    version: `Apicurio Registry ${APICURIO_VERSION} (Confluent-compatible API, SQL storage in Postgres database ${REGISTRY_DATABASE})`,
    address,
    env: () => ({ SCHEMA_REGISTRY_URL: address }),
    async install(ctx) {
      const d = dirs(ctx);
      if (existsSync(join(d.dist, 'quarkus-run.jar'))) return;
      await ensureMaven(ctx, name);
      ctx.progress(`schema-registry: downloading apicurio-registry-app ${APICURIO_VERSION} (the -all Quarkus distribution) from Maven Central`);
      mkdirSync(d.dir, { recursive: true });
      await run('schema-registry: mvn dependency:unpack', 'mvn', ['-q', '-B', 'dependency:unpack', `-Dartifact=io.apicurio:apicurio-registry-app:${APICURIO_VERSION}:tar.gz:all`, `-DoutputDirectory=${d.dist}`], {
        cwd: d.dir,
        logFile: join(ctx.stackDir, 'logs', 'schema-registry-install.log'),
      });
    },
    async start(ctx) {
      const d = dirs(ctx);
      const storage = registryStorage(ctx.env);
      const storageArgs = [
        '-Dapicurio.storage.kind=sql',
        '-Dapicurio.storage.sql.kind=postgresql',
        `-Dapicurio.datasource.url=${storage.jdbcUrl}`,
        `-Dapicurio.datasource.username=${storage.user}`,
        `-Dapicurio.datasource.password=${storage.password}`,
        // The default pool (20 connections held) is sized for production.
        '-Dapicurio.datasource.jdbc.initial-size=2',
        '-Dapicurio.datasource.jdbc.min-size=2',
        '-Dapicurio.datasource.jdbc.max-size=20',
        // Pooled connections die with a Postgres restart: checked before use, so the registry
        // answers again as soon as Postgres is back instead of failing once per dead connection.
        '-Dquarkus.datasource.postgresql.jdbc.validate-on-borrow=true',
      ];
      if (await healthy()) {
        const pid = readPid(d.pid);
        const running = pid !== undefined && isAlive(pid) ? commandLine(pid) : '';
        // A registry this stack started with other storage settings (in memory, before the SQL
        // storage): restarted with these. One started elsewhere is left alone.
        if (running === '' || storageArgs.every((arg) => running.includes(arg))) {
          await ensureGlobalBackwardRule();
          return 'reused';
        }
        ctx.progress(`schema-registry: restarting: it runs with other storage settings than SQL storage in Postgres database ${REGISTRY_DATABASE}`);
        await stopProcessGroup(d.pid, 'SIGTERM', 20_000);
      } else {
        // Ours, alive but not answering yet (starting, or waiting for Postgres): wait for it rather
        // than start a second one that could not bind the port.
        const pid = readPid(d.pid);
        if (pid !== undefined && isAlive(pid) && storageArgs.every((arg) => commandLine(pid).includes(arg))) {
          await waitUntil(name, healthy, { timeoutMs: 120_000, logFile: d.log, pid });
          await ensureGlobalBackwardRule();
          return 'reused';
        }
      }
      await ensureRegistryDatabase(storage.adminUrl, d.log);
      // Apicurio 3.x is compiled for Java 21.
      const java = await findJava(ctx, name, 21);
      ctx.progress(`schema-registry: starting on ${base}`);
      const pid = spawnDetached({
        command: java,
        args: [
          '-Xms128m',
          '-Xmx512m',
          `-Dquarkus.http.host=${host}`,
          `-Dquarkus.http.port=${port}`,
          '-Dapicurio.rules.global.compatibility=BACKWARD',
          ...storageArgs,
          '-jar',
          'quarkus-run.jar',
        ],
        cwd: d.dist,
        logFile: d.log,
        pidFile: d.pid,
      });
      await waitUntil(name, healthy, { timeoutMs: 120_000, logFile: d.log, pid });
      await ensureGlobalBackwardRule();
      return 'started';
    },
    stop: (ctx) => stopProcessGroup(dirs(ctx).pid, 'SIGTERM', 20_000),
    status(ctx) {
      return processStatus(this, dirs(ctx).pid, healthy);
    },
  };
}
