import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { AGENT_COLUMNS, AGENT_JSON_COLUMNS, agentJson, type AgentRow } from '../../../../services/ingest/api.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

jest.setTimeout(60_000);

// The list route sends the JSON Postgres writes (AGENT_JSON_COLUMNS); GET /v1/agents/:id builds it
// in Node (agentJson). Both must say the same of every row.
describe('agents as JSON from Postgres', () => {
  const env = testEnv();
  const schema = uniqueName('list_json').replace(/-/g, '_');
  let pool: Pool;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 });
  });

  afterAll(async () => {
    await pool?.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool?.end();
  });

  it('equals agentJson for rows with microsecond times, nulls, nested JSON and large versions', async () => {
    const spec = { template: null, image: 'registry.internal/agents/echo:1.0', command: ['a "quoted" arg', 'ünïcödé'], environment: [{ name: 'K', value: 'v\n2' }], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } };
    const rows: [string, string, string | null, Record<string, string>, number, string | null, string][] = [
      [randomUUID(), '2026-01-02 03:04:05.123999+00', null, {}, 1, null, '2026-01-02 03:04:05.999999+00'],
      [randomUUID(), '2026-06-30 23:59:59.000001+00', 'eu-west', { team: 'bench', 'a/b': 'c "d"' }, 9_007_199_254_740, randomUUID(), '2026-07-01 00:00:00+00'],
      [randomUUID(), '2025-12-31 12:00:00.5+00', 'local', { emoji: '🚀' }, 0, randomUUID(), '2026-01-01 00:00:00.0005+00'],
    ];
    for (const [id, created, region, labels, version, request, updated] of rows) {
      await pool.query(
        `INSERT INTO agents (id, state, reason, spec, lifecycle, division, region, labels, version, last_request_id, last_command_id, created_at, updated_at)
         VALUES ($1, 'RUNNING', 'up: "fine"', $2, $3, 'research', $4, $5, $6, $7, NULL, $8, $9)`,
        [id, JSON.stringify(spec), JSON.stringify({ generation: 2, afterStop: null, restartPolicy: { mode: 'never', maxRestarts: 0 } }), region, JSON.stringify(labels), version, request, created, updated],
      );
    }
    const built = (await pool.query<AgentRow>(`SELECT ${AGENT_COLUMNS} FROM agents ORDER BY created_at, id`)).rows;
    const written = (await pool.query<{ id: string; cursor_time: string; item: string }>(`SELECT ${AGENT_JSON_COLUMNS} FROM agents ORDER BY created_at, id`)).rows;
    expect(written.map((r) => JSON.parse(r.item) as unknown)).toEqual(built.map(agentJson));
    expect(written.map((r) => r.cursor_time)).toEqual(built.map((r) => r.cursor_time));
  });
});
