import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_STACK } from './endpoints.ts';
import { ensureMaven, findJava } from './install.ts';
import { httpOk, processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { retryableError } from '../../lib/errors.ts';

const APICURIO_VERSION = '3.3.3';
const { host, port } = LOCAL_STACK.schemaRegistry;
const base = `http://${host}:${port}`;

/**
 * Sets the global compatibility rule to BACKWARD. Storage is in memory, so this runs after every
 * start; without it @kafkajs/confluent-schema-registry's BACKWARD registration fails on Apicurio.
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
    version: `Apicurio Registry ${APICURIO_VERSION} (Confluent-compatible API, in-memory storage)`,
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
      if (await healthy()) {
        await ensureGlobalBackwardRule();
        return 'reused';
      }
      const d = dirs(ctx);
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
