import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { AgentHeartbeat } from '../../../lib/contracts/types.ts';
import { createPool, type Pool } from '../../../lib/db/pool.ts';
import { migrateUp } from '../../../lib/db/migrate.ts';
import { encodeLastHeartbeat, heartbeatKeyPrefix, lastHeartbeatKey } from '../../../lib/heartbeat/last-heartbeat.ts';
import { createLogger } from '../../../lib/logger.ts';
import { testEnv, uniqueName } from '../../support/stack.ts';
import { runCli } from '../../support/cli.ts';

jest.setTimeout(120_000);

const cli = runCli;

describe('agent-manager agents show (the CLI)', () => {
  const env = testEnv();
  const prefix = `${uniqueName('agentscli')}.`;
  const schema = uniqueName('agentscli').replace(/-/g, '_');
  const cliEnv = { ...env, TOPIC_PREFIX: prefix, DATABASE_SCHEMA: schema, LOG_LEVEL: 'warn' };
  const agentId = randomUUID();
  const quietId = randomUUID();
  let pool: Pool;
  let redis: Redis;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 });
    const spec = JSON.stringify({ template: 'echo', image: null, command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } });
    for (const [id, state, reason] of [
      [agentId, 'RUNNING', 'started'],
      [quietId, 'STARTING', ''],
    ]) {
      await pool.query(
        `INSERT INTO agents (id, state, reason, spec, lifecycle, division, region, labels, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, '{}', 'platform', 'local', '{"team":"nlp"}', 4, '2026-12-01T02:00:00Z', '2026-12-01T02:30:00Z')`,
        [id, state, reason, spec],
      );
    }
    redis = new Redis(env.REDIS_URL ?? '');
    const sentAt = new Date(Date.now() - 1_500);
    const heartbeat: AgentHeartbeat = { agentId, instanceId: 'host-a:4242', pid: 4242, sequence: 17, sentAt, intervalMs: 2_000, stopping: false, metrics: { cpuPercent: 1.25, memoryRssBytes: 52_428_800, custom: { queueDepth: 3 } } };
    // Written as the heartbeat service writes it.
    await redis.set(lastHeartbeatKey(heartbeatKeyPrefix(prefix), agentId), encodeLastHeartbeat(heartbeat, sentAt.getTime() + 40, 2_000));
  });

  afterAll(async () => {
    await redis?.del(lastHeartbeatKey(heartbeatKeyPrefix(prefix), agentId));
    await redis?.quit();
    await pool?.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool?.end();
  });

  it('prints the agent and its last heartbeat (time, sequence, instance, cpu, memory, gauges)', async () => {
    const run = await cli(['agents', 'show', agentId], cliEnv);
    expect(run).toMatchObject({ code: 0, stderr: '' });
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines.slice(0, 8)).toEqual([
      `agent           ${agentId}`,
      'state           RUNNING (started)',
      'division        platform',
      'region          local',
      'labels          team=nlp',
      'version         4',
      'created         2026-12-01T02:00:00.000Z',
      'updated         2026-12-01T02:30:00.000Z',
    ]);
    expect(lines[8]).toBe('last heartbeat');
    expect(lines[9]).toMatch(/^ {2}time {10}\S+Z \(\d\.\d s ago\), received \S+Z$/);
    expect(lines.slice(10)).toEqual([
      '  sequence      17',
      '  instance      host-a:4242 (pid 4242)',
      '  interval      2000 ms',
      '  cpu           1.25 % of one core',
      '  memory        50.0 MiB resident',
      '  gauges        queueDepth=3',
    ]);
  });

  it('--json prints the agent as GET /v1/agents/:id returns it', async () => {
    const run = await cli(['agents', 'show', agentId, '--json'], cliEnv);
    expect(run.code).toBe(0);
    const view = JSON.parse(run.stdout) as Record<string, unknown>;
    expect(view).toMatchObject({
      agentId,
      state: 'RUNNING',
      division: 'platform',
      labels: { team: 'nlp' },
      version: 4,
      lastHeartbeat: { sequence: 17, instance: 'host-a:4242', pid: 4242, intervalMs: 2000, cpuPercent: 1.25, memoryRssBytes: 52_428_800, gauges: { queueDepth: 3 } },
      lastHeartbeatError: null,
    });
  });

  it('says when no heartbeat is recorded, and prints the agent with the heartbeat unavailable when Redis is down', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const [quiet, down, downJson] = await Promise.all([
      cli(['agents', 'show', quietId], cliEnv),
      cli(['agents', 'show', agentId], { ...cliEnv, REDIS_URL: `redis://127.0.0.1:${closedPort}` }),
      cli(['agents', 'show', agentId, '--json'], { ...cliEnv, REDIS_URL: `redis://127.0.0.1:${closedPort}` }),
    ]);
    expect(quiet.code).toBe(0);
    expect(quiet.stdout).toContain('state           STARTING\n');
    expect(quiet.stdout).toContain('last heartbeat  none recorded\n');
    expect(down.code).toBe(0);
    expect(down.stdout).toContain(`agent           ${agentId}\n`);
    expect(down.stdout).toMatch(new RegExp(`last heartbeat {2}unavailable \\(the last heartbeat could not be read: Redis at redis://127\\.0\\.0\\.1:${closedPort} is unreachable: .+\\)`));
    expect(JSON.parse(downJson.stdout)).toMatchObject({ agentId, lastHeartbeat: null, lastHeartbeatError: { code: 'HEARTBEAT_UNAVAILABLE' } });
  });

  it('exits 2 on a usage mistake and 1 for an unknown agent or a missing setting, saying what is wrong', async () => {
    const unknown = randomUUID();
    const [noId, badId, missing, noDatabase] = await Promise.all([
      cli(['agents', 'show'], cliEnv),
      cli(['agents', 'show', 'agent-7'], cliEnv),
      cli(['agents', 'show', unknown], cliEnv),
      cli(['agents', 'show', agentId], { ...cliEnv, DATABASE_URL: undefined }),
    ]);
    expect(noId.code).toBe(2);
    expect(noId.stderr).toMatch(/missing required argument 'id'/);
    expect(badId.code).toBe(2);
    expect(badId.stderr).toContain('agent id "agent-7" is not a lower-case uuid');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`agent-manager: no agent ${unknown}`);
    expect(noDatabase.code).toBe(1);
    expect(noDatabase.stderr).toMatch(/DATABASE_URL/);
  });
});
