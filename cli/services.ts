import { join } from 'node:path';
import type { Command } from 'commander';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import { readSafeMode, setSafeMode } from '../lib/control/safe-mode.ts';
import { createPool } from '../lib/db/pool.ts';
import { migrateUp } from '../lib/db/migrate.ts';
import { permanentError } from '../lib/errors.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { createLogger } from '../lib/logger.ts';
import { onTerminationSignal } from '../lib/runtime/shutdown.ts';
import { createServiceContext, loadServiceConfig, topicNames, type ServiceContext } from '../lib/service/context.ts';
import { loadServiceEnv } from '../lib/secrets.ts';
import { startTelemetry } from '../lib/telemetry.ts';
import { loadProvisionerConfig, startProvisioner } from '../services/provisioner/main.ts';
import { loadIngestOptions, startIngest } from '../services/ingest/main.ts';
import { loadHeartbeatConfig, startHeartbeat } from '../services/heartbeat/main.ts';
import { loadArchiverConfig, startArchiver } from '../services/archiver/main.ts';

export const SERVICES = ['ingest', 'provisioner', 'heartbeat', 'archiver'] as const;
export type ServiceName = (typeof SERVICES)[number];
/** Services of the architecture that are not built yet; `run` says so instead of failing obscurely. */
const LATER: readonly string[] = [];

/**
 * The process environment with secrets resolved: `<NAME>_FILE` files read, `vault:` references
 * fetched. There are no defaults: against the local stack, `eval "$(npx agent-manager stack env --export)"` first.
 */
export async function resolvedServiceEnv(): Promise<Record<string, string | undefined>> {
  return { ...(await loadServiceEnv(process.env)) };
}

export async function runMigrations(root: string, env: Record<string, string | undefined>): Promise<string[]> {
  const config = loadServiceConfig(env);
  return migrateUp({ databaseUrl: config.DATABASE_URL, dir: join(root, 'migrations'), schema: config.DATABASE_SCHEMA, logger: createLogger('migrate', config.LOG_LEVEL) });
}

/**
 * Starts `services` on one service context (one process): each as its own Kubernetes Deployment
 * would run it, or all together for the demo. Resolves with the context once everything runs.
 */
export async function startServices(services: readonly ServiceName[], env: Record<string, string | undefined>, options: { opsServer?: boolean } = {}): Promise<ServiceContext> {
  const config = loadServiceConfig(env);
  const provisionerConfig = services.includes('provisioner') ? loadProvisionerConfig(env) : undefined;
  const ingestOptions = services.includes('ingest') ? loadIngestOptions(env) : undefined;
  const heartbeatConfig = services.includes('heartbeat') ? loadHeartbeatConfig(env) : undefined;
  const archiverConfig = services.includes('archiver') ? loadArchiverConfig(env) : undefined;
  const name = services.length === 1 ? (services[0] ?? 'agent-manager') : 'agent-manager';
  // Tracing starts first so the clients below are traced; off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
  const telemetry = startTelemetry({ serviceName: `agent-manager-${name}`, ...(config.OTEL_EXPORTER_OTLP_ENDPOINT ? { otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT } : {}), logger: createLogger(name, config.LOG_LEVEL) });
  await telemetry.ready;
  const ctx = await createServiceContext({ service: name, config, database: services.some((s) => s !== 'heartbeat'), redis: services.includes('provisioner') || services.includes('heartbeat'), opsServer: options.opsServer ?? true });
  ctx.onShutdown(['telemetry', () => telemetry.shutdown()]);
  try {
    if (ingestOptions) await startIngest(ctx, ingestOptions);
    if (provisionerConfig) await startProvisioner(ctx, provisionerConfig);
    if (heartbeatConfig) await startHeartbeat(ctx, heartbeatConfig);
    if (archiverConfig) await startArchiver(ctx, archiverConfig);
    await ctx.startOps();
  } catch (error) {
    await ctx.shutdown();
    throw error;
  }
  return ctx;
}

export function registerServiceCommands(program: Command, root: string, setExitCode: (code: number) => void): void {
  program
    .command('migrate')
    .description('Apply pending database migrations (DATABASE_URL, DATABASE_SCHEMA). Safe to run repeatedly and concurrently.')
    .action(async () => {
      const applied = await runMigrations(root, await resolvedServiceEnv());
      console.log(applied.length === 0 ? 'migrate: database is up to date' : `migrate: applied ${applied.join(', ')}`);
      setExitCode(0);
    });

  program
    .command('run')
    .argument('<service>', `${SERVICES.join(' | ')} | all`)
    .description('Run one service (as one Kubernetes Deployment would), or all of them in this process. Stops cleanly on SIGTERM/SIGINT.')
    .action(async (service: string) => {
      if (LATER.includes(service)) throw permanentError('NOT_BUILT', `service "${service}" is part of the architecture but not built yet; run ${SERVICES.join(', ')} or all`);
      const services: readonly ServiceName[] = service === 'all' ? SERVICES : SERVICES.filter((s) => s === service);
      if (services.length === 0) throw permanentError('USAGE', `unknown service "${service}": expected ${SERVICES.join(', ')} or all`);
      const ctx = await startServices(services, await resolvedServiceEnv());
      ctx.logger.info({ services }, 'running; SIGTERM or Ctrl-C to stop');
      await new Promise<void>((resolve) => {
        onTerminationSignal(async () => {
          const failures = await ctx.shutdown();
          setExitCode(failures.length === 0 ? 0 : 1);
          resolve();
        }, ctx.logger);
      });
    });

  program
    .command('safe-mode')
    .argument('<action>', 'on | off | status')
    .option('--reason <text>', 'why (recorded in the audit event)', '')
    .option('--actor <name>', 'who (recorded in the audit event)', process.env.USER ?? 'operator')
    .description('Suspend (on) or resume (off) applying commands and signing fleet-wide; every service sees it within seconds. Reads keep working.')
    .action(async (action: string, options: { reason: string; actor: string }) => {
      if (!['on', 'off', 'status'].includes(action)) throw permanentError('USAGE', `unknown action "${action}": expected on, off or status`);
      const config = loadServiceConfig(await resolvedServiceEnv());
      const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 2 });
      try {
        if (action !== 'status') {
          const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
          await setSafeMode(pool, { enabled: action === 'on', reason: options.reason, actor: options.actor, codec, auditTopic: topicNames(config.TOPIC_PREFIX)['audit-events'] });
        }
        const state = await readSafeMode(pool);
        console.log(`safe mode: ${state.enabled ? 'ON' : 'off'} (set by ${state.updatedBy} at ${state.updatedAt.toISOString()}${state.reason ? `: ${state.reason}` : ''})`);
        setExitCode(0);
      } finally {
        await pool.end();
      }
    });
}
