import { Command, CommanderError } from 'commander';
import { Redis } from 'ioredis';
import { z } from 'zod';
import { databaseConfigShape, loadConfig, redisConfigShape } from '../lib/config.ts';
import { createPool } from '../lib/db/pool.ts';
import { errorMessage, permanentError, retryableError, type AppError } from '../lib/errors.ts';
import { heartbeatKeyPrefix, readLastHeartbeat } from '../lib/heartbeat/last-heartbeat.ts';
import { serviceConfigShape } from '../lib/service/context.ts';
import { AGENT_COLUMNS, agentJson, lastHeartbeatFields, type AgentRow, type LastHeartbeatReader } from '../services/ingest/api.ts';
import { isUuid } from '../services/ingest/idempotency.ts';
import { resolvedServiceEnv } from './services.ts';

/** What `agents show` reads: the agents table and the heartbeat service's Redis (no Kafka). */
const agentsConfigShape = {
  ...databaseConfigShape,
  ...redisConfigShape,
  DATABASE_SCHEMA: serviceConfigShape.DATABASE_SCHEMA,
  TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX,
  /** How long to wait for Redis before printing the agent without its heartbeat. */
  AGENTS_REDIS_TIMEOUT_MS: z.coerce.number().int().positive().default(2_000),
};

/** The agent as `GET /v1/agents/:id` returns it (with its last heartbeat). */
export type AgentView = ReturnType<typeof agentJson> & Awaited<ReturnType<typeof lastHeartbeatFields>>;

/**
 * A reader of last heartbeats for one command: connected once (within `timeoutMs`, no reconnection),
 * or remembering why it could not connect, which each read then reports.
 */
async function connectHeartbeats(url: string, topicPrefix: string, timeoutMs: number): Promise<{ read: LastHeartbeatReader; close: () => void }> {
  const redis = new Redis(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: timeoutMs, connectTimeout: timeoutMs, retryStrategy: () => null });
  // Reported through the read that fails, not as an unhandled 'error' event.
  redis.on('error', () => undefined);
  let unavailable: AppError | undefined;
  try {
    await redis.connect();
  } catch (error) {
    unavailable = retryableError('REDIS_UNAVAILABLE', `Redis at ${redactUrl(url)} is unreachable: ${errorMessage(error)}`, error);
  }
  return {
    async read(agentId) {
      if (unavailable !== undefined) throw unavailable;
      return readLastHeartbeat(redis, heartbeatKeyPrefix(topicPrefix), agentId);
    },
    close: () => redis.disconnect(),
  };
}

/** A URL without its password, for messages. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(an invalid URL)';
  }
}

/** The agent and its last heartbeat, or undefined when there is no such agent. */
export async function readAgentView(env: Record<string, string | undefined>, agentId: string): Promise<AgentView | undefined> {
  const config = loadConfig(agentsConfigShape, env);
  const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 1 });
  try {
    let rows: AgentRow[];
    try {
      rows = (await pool.query<AgentRow>(`SELECT ${AGENT_COLUMNS} FROM agents WHERE id = $1`, [agentId])).rows;
    } catch (error) {
      throw retryableError('DATABASE_UNAVAILABLE', `cannot read the agent from Postgres (schema ${config.DATABASE_SCHEMA}): ${errorMessage(error)}`, error);
    }
    const row = rows[0];
    if (!row) return undefined;
    const heartbeats = await connectHeartbeats(config.REDIS_URL, config.TOPIC_PREFIX, config.AGENTS_REDIS_TIMEOUT_MS);
    try {
      return { ...agentJson(row), ...(await lastHeartbeatFields(heartbeats.read, row.id)) };
    } finally {
      heartbeats.close();
    }
  } finally {
    await pool.end();
  }
}

function ago(iso: string, now: number): string {
  const ms = now - Date.parse(iso);
  if (ms < 0) return 'in the future by the agent\'s clock';
  if (ms < 1_000) return `${ms} ms ago`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s ago`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min ago`;
  return `${(ms / 3_600_000).toFixed(1)} h ago`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** The text `agents show` prints. */
export function formatAgentView(view: AgentView, now = Date.now()): string[] {
  const labels = Object.entries(view.labels).map(([k, v]) => `${k}=${v}`).join(', ');
  const lines: [string, string][] = [
    ['agent', view.agentId],
    ['state', view.reason ? `${view.state} (${view.reason})` : view.state],
    ['division', view.division],
    ['region', view.region ?? '-'],
    ['labels', labels || '-'],
    ['version', String(view.version)],
    ['created', view.createdAt],
    ['updated', view.updatedAt],
  ];
  const out = lines.map(([name, text]) => `${name.padEnd(16)}${text}`);
  const heartbeat = view.lastHeartbeat;
  if (heartbeat === null) {
    out.push(`${'last heartbeat'.padEnd(16)}${view.lastHeartbeatError ? `unavailable (${view.lastHeartbeatError.message})` : 'none recorded'}`);
    return out;
  }
  out.push('last heartbeat');
  const gauges = Object.entries(heartbeat.gauges).map(([k, v]) => `${k}=${v}`).join(', ');
  const rows: [string, string][] = [
    ['time', `${heartbeat.sentAt} (${ago(heartbeat.sentAt, now)}), received ${heartbeat.receivedAt}`],
    ['sequence', String(heartbeat.sequence)],
    ['instance', `${heartbeat.instance}${heartbeat.pid !== null ? ` (pid ${heartbeat.pid})` : ''}`],
    ['interval', `${heartbeat.intervalMs} ms`],
    ['cpu', heartbeat.cpuPercent === null ? '-' : `${heartbeat.cpuPercent} % of one core`],
    ['memory', heartbeat.memoryRssBytes === null ? '-' : `${bytes(heartbeat.memoryRssBytes)} resident`],
    ['gauges', gauges || '-'],
  ];
  for (const [name, text] of rows) out.push(`  ${name.padEnd(14)}${text}`);
  return out;
}

export function registerAgentCommands(program: Command, setExitCode: (code: number) => void): void {
  const agents = program
    .command('agents')
    .summary('show an agent and its last heartbeat')
    .description('Agents as stored: the agents table (DATABASE_URL, DATABASE_SCHEMA) and the heartbeat service\'s Redis (REDIS_URL, TOPIC_PREFIX).')
    .exitOverride((error) => {
      throw error.exitCode === 0 ? error : new CommanderError(2, error.code, error.message);
    });

  agents
    .command('show')
    .argument('<id>', 'the agent id (a uuid)')
    .option('--json', 'the agent as GET /v1/agents/:id returns it')
    .description(
      'The agent (state and reason, division, region, labels, version, times) and its last heartbeat (time, sequence, instance, cpu, memory, custom gauges). ' +
        'When Redis cannot be read the agent is printed anyway, with the heartbeat marked unavailable. Exit 1 when there is no such agent.',
    )
    .action(async (id: string, options: { json?: boolean }, command: Command) => {
      const given: string = id;
      if (!isUuid(id)) return command.error(`error: agent id "${given}" is not a lower-case uuid`, { exitCode: 2, code: 'agent-manager.usage' });
      const view = await readAgentView(await resolvedServiceEnv(), id);
      if (!view) throw permanentError('AGENT_NOT_FOUND', `no agent ${id} (DATABASE_SCHEMA and TOPIC_PREFIX select the fleet)`);
      if (options.json) console.log(JSON.stringify(view, null, 2));
      else for (const line of formatAgentView(view)) console.log(line);
      setExitCode(0);
    });
}
