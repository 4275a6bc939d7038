import { setTimeout as sleep } from 'node:timers/promises';
import { localStackEnv, stackComponents, stackContext, stackDown, stackUp, type UpResult } from '../../dev/stack/index.ts';
import type { StackComponent } from '../../dev/stack/types.ts';

/**
 * Stops and restarts one server of the local stack, the way `stack down`/`stack up` do it for that
 * server alone: Postgres by SIGINT (a fast shutdown, as `pg_ctl stop -m fast`: sessions get 57P01),
 * Redis, the schema registry, MinIO (S3) and OpenBao (Vault; dev mode keeps everything in memory: a
 * restart re-creates the shared Transit key with new key material) by SIGTERM. Only for test/outage/, which runs serially: every other
 * test file uses these servers too.
 */
export type OutageTarget = 'postgres' | 'schema-registry' | 'redis' | 's3' | 'vault';

function component(name: OutageTarget): StackComponent {
  const found = stackComponents().find((c) => c.name === name);
  if (!found) throw new Error(`no stack component named ${name}`);
  return found;
}

/**
 * The stack's own servers: with the stack's variables (REDIS_URL, DATABASE_URL…) in the environment,
 * a component would take its server for an external one and refuse to start it.
 */
function context() {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(localStackEnv())) delete env[key];
  return stackContext(process.cwd(), () => undefined, env);
}

export async function stopServer(name: OutageTarget): Promise<void> {
  // A server this checkout's stack did not start (reused from elsewhere) cannot be stopped here: say
  // so now rather than let a test pass or fail on an outage that never happened.
  if (!(await component(name).stop(context()))) {
    throw new Error(`${name} was not started by this checkout's stack (no pid file): test/outage/ needs to own it; stop the other one and run \`npx agent-manager stack up\``);
  }
}

/** Starts it again and waits until it answers (the component's own start-up check). */
export async function startServer(name: OutageTarget): Promise<void> {
  await component(name).start(context());
}

/** Brings back whatever is down (idempotent, like `stack up`): for afterAll/finally. */
export async function restoreStack(): Promise<void> {
  const ctx = context();
  // Not Kafka: nothing here stops it, and its start restarts a broker whose configuration changed.
  for (const name of ['postgres', 'redis', 'schema-registry', 's3', 'vault'] as const) {
    await component(name)
      .start(ctx)
      .catch(() => undefined);
  }
}

/** Stops `name` for `ms`, then restarts it; it is back even when `during` throws. */
export async function outage(name: OutageTarget, ms: number, during?: () => Promise<void>): Promise<void> {
  await stopServer(name);
  const started = Date.now();
  try {
    await during?.();
    const left = ms - (Date.now() - started);
    if (left > 0) await sleep(left);
  } finally {
    await startServer(name);
  }
}

/** `stack down && stack up` of the whole local stack; every component must come back. */
export async function restartWholeStack(): Promise<UpResult[]> {
  const ctx = context();
  await stackDown(ctx);
  const results = await stackUp(ctx);
  const failed = results.filter((r) => r.outcome === 'failed');
  if (failed.length > 0) throw new Error(`stack up after stack down failed: ${failed.map((r) => `${r.component}: ${r.error ?? 'failed'}`).join('; ')}`);
  return results;
}
