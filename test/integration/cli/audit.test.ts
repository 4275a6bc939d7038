import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { insertAuditIndex, type AuditPage } from '../../../lib/archive/index-store.ts';
import { createPool, type Pool } from '../../../lib/db/pool.ts';
import { migrateUp } from '../../../lib/db/migrate.ts';
import { createLogger } from '../../../lib/logger.ts';
import { testEnv, uniqueName } from '../../support/stack.ts';

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `agent-manager audit …` as an operator runs it: its own process, configured by the environment. */
function cli(args: readonly string[], env: Record<string, string | undefined>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

describe('agent-manager audit query (the CLI)', () => {
  const env = testEnv();
  const schema = uniqueName('auditcli').replace(/-/g, '_');
  const cliEnv = { ...env, DATABASE_SCHEMA: schema, LOG_LEVEL: 'warn' };
  const agentId = randomUUID();
  const eventIds = Array.from({ length: 5 }, () => randomUUID());
  let pool: Pool;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 });
    await insertAuditIndex(
      pool,
      eventIds.map((eventId, i) => ({
        eventId,
        time: new Date(Date.parse('2026-12-01T10:00:00Z') + i * 60_000),
        action: i === 4 ? 'request.rejected' : 'agent.state_changed',
        actor: 'service:provisioner',
        agentId: i === 4 ? null : agentId,
        requestId: null,
        traceId: null,
        partition: 2,
        offset: 40 + i,
        payloadHash: '00'.repeat(32),
      })),
    );
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
  });

  it('prints a table of the matching events and the cursor of the next page', async () => {
    const first = await cli(['audit', 'query', '--agent', agentId, '--limit', '3'], cliEnv);
    expect(first.code).toBe(0);
    const lines = first.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^TIME\s+ACTION\s+ACTOR\s+AGENT\s+REQUEST\s+EVENT\s+PARTITION\/OFFSET\s+ARCHIVED$/);
    expect(lines.slice(1, 4).map((l) => l.split(/\s+/)[5])).toEqual(eventIds.slice(0, 3));
    expect(lines[1]).toMatch(/^2026-12-01T10:00:00.000Z\s+agent.state_changed\s+service:provisioner\s+\S+\s+-\s+\S+\s+2\/40\s+pending$/);
    const cursor = /^more: --cursor (\S+)$/.exec(lines.at(-1) ?? '')?.[1];
    expect(cursor).toBeDefined();

    const second = await cli(['audit', 'query', '--agent', agentId, '--limit', '3', '--cursor', cursor ?? '', '--json'], cliEnv);
    expect(second.code).toBe(0);
    const page = JSON.parse(second.stdout) as AuditPage;
    expect(page.events.map((e) => e.eventId)).toEqual(eventIds.slice(3, 4));
    expect(page.nextCursor).toBeNull();
  });

  it('filters by action and time', async () => {
    const run = await cli(['audit', 'query', '--action', 'request.rejected', '--from', '2026-12-01', '--to', '2026-12-02', '--json'], cliEnv);
    expect(run.code).toBe(0);
    expect((JSON.parse(run.stdout) as AuditPage).events.map((e) => e.eventId)).toEqual([eventIds[4]]);
  });

  it('exits 2 on a usage mistake', async () => {
    for (const args of [['--agent', 'not-a-uuid'], ['--from', 'yesterday'], ['--limit', '0'], ['--cursor', 'nope']]) {
      const run = await cli(['audit', 'query', ...args], cliEnv);
      expect(run.code).toBe(2);
      expect(run.stderr).toMatch(/error: /);
    }
  });
});
