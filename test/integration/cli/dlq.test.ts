import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { registerSchemas } from '../../../lib/contracts/registry.ts';
import { avroTypeOptions, defaultSchemasDir } from '../../../lib/contracts/schemas.ts';
import type { AuditEvent } from '../../../lib/contracts/types.ts';
import { createPool, type Pool } from '../../../lib/db/pool.ts';
import { migrateUp } from '../../../lib/db/migrate.ts';
import { REPLAY_HEADER } from '../../../lib/dlq/records.ts';
import { createAvroCodec } from '../../../lib/kafka/avro.ts';
import { createLogger } from '../../../lib/logger.ts';
import { deadLetterRecord } from '../../../lib/runtime/dlq.ts';
import { testEnv, uniqueName } from '../../support/stack.ts';
import { createTestTopic, rawKafka, readRecords } from '../../support/runtime.ts';

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `agent-manager dlq …` as an operator runs it: its own process, configured by the environment. */
function cli(args: readonly string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), ...args], { env: { ...process.env, ...env }, timeout: 90_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : null, stdout, stderr });
    });
  });
}

describe('agent-manager dlq (the CLI)', () => {
  const env = testEnv();
  const prefix = `${uniqueName('dlqcli')}.`;
  const schema = uniqueName('dlqcli').replace(/-/g, '_');
  const topic = `${prefix}orders`;
  const dlq = `${topic}.dlq`;
  const codec = createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', avroOptions: avroTypeOptions() });
  const cliEnv = { ...env, TOPIC_PREFIX: prefix, DATABASE_SCHEMA: schema, LOG_LEVEL: 'warn' };
  let pool: Pool;
  let cleanup: () => Promise<void>;
  let later: Buffer;

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 2 });
    await registerSchemas({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', schemasDir: defaultSchemasDir(process.cwd()), subjectPrefix: prefix, topics: ['audit-events'] });
    cleanup = await createTestTopic(topic, 1);
    const registry = new SchemaRegistry({ host: env.SCHEMA_REGISTRY_URL ?? '' });
    later = await registry.encode(await registry.getLatestSchemaId(`${topic}-value`), { id: 'later', seq: 3, kind: 'later' });
    // Two DLQ records exactly as the runtime writes them (the worker's own path is tested in lib/dlq).
    const failedAt = new Date();
    const original = (offset: string, key: string, value: Buffer) => ({ topic, partition: 0, offset, key: Buffer.from(key), value, headers: { origin: 'cli-test' }, timestamp: String(failedAt.getTime()) });
    const producer = rawKafka().producer({ idempotent: true });
    await producer.connect();
    await producer.send({
      topic: dlq,
      acks: -1,
      messages: [
        deadLetterRecord(original('4', 'garbage', Buffer.from('definitely not avro')), { code: 'DECODE_BAD_FRAMING', message: 'not a Confluent-framed Avro record', attempts: 1, service: 'ingest', failedAt }),
        deadLetterRecord(original('7', 'agent-7', later), { code: 'HANDLER_REJECTED', message: 'kind "later" is not supported yet', attempts: 1, service: 'ingest', failedAt }),
      ].map((r) => ({ key: r.key, value: r.value, headers: r.headers })),
    });
    await producer.disconnect();
  });

  afterAll(async () => {
    await cleanup();
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
    await fetch(`${env.SCHEMA_REGISTRY_URL}/subjects/${prefix}audit-events-value`, { method: 'DELETE' }).catch(() => undefined);
  });

  it('exits 2 on a usage mistake, saying what is wrong', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['dlq'], /Usage: agent-manager dlq/],
      [['dlq', 'list'], /missing required argument 'topic'/],
      [['dlq', 'list', 'orders', '--bogus'], /unknown option '--bogus'/],
      [['dlq', 'list', 'orders', '--since', '15'], /needs a unit/],
      [['dlq', 'show', 'orders'], /--offset <offset>' not specified/],
      [['dlq', 'replay', 'orders'], /choose the records/],
      [['dlq', 'replay', 'orders', '--all', '--offset', '0/0', '--reason', 'r'], /either --offset or --all/],
      [['dlq', 'replay', 'orders', '--offset', '0/0', '--code', 'X', '--reason', 'r'], /narrow --all/],
      [['dlq', 'replay', 'orders', '--offset', '0/0'], /--reason/],
    ];
    const runs = await Promise.all(cases.map(([args]) => cli(args, cliEnv)));
    runs.forEach((run, i) => {
      expect({ args: cases[i]?.[0], code: run.code }).toEqual({ args: cases[i]?.[0], code: 2 });
      expect(run.stderr).toMatch(cases[i]?.[1] as RegExp);
    });
  });

  it('exits 1 with a clear message for a topic or record that does not exist', async () => {
    const [noTopic, noRecord, badPartition] = await Promise.all([
      cli(['dlq', 'list', 'nowhere'], cliEnv),
      cli(['dlq', 'show', 'orders', '--offset', '0/9'], cliEnv),
      cli(['dlq', 'show', 'orders', '--offset', '3/0'], cliEnv),
    ]);
    expect(noTopic.code).toBe(1);
    expect(noTopic.stderr).toContain(`topic "${prefix}nowhere.dlq" does not exist (DLQ topics: `);
    expect(noRecord.code).toBe(1);
    expect(noRecord.stderr).toContain(`${dlq} has no record at 0/9`);
    expect(badPartition.code).toBe(2);
    expect(badPartition.stderr).toMatch(/partition 3 does not exist/);
  });

  it('lists, filters, shows and replays', async () => {
    const list = await cli(['dlq', 'list', 'orders'], cliEnv);
    expect(list).toMatchObject({ code: 0 });
    const lines = list.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^P\/OFFSET\s+TIME\s+CODE\s+KEY\s+REASON$/);
    expect(lines[1]).toMatch(/^0\/0\s+\S+Z\s+DECODE_BAD_FRAMING\s+garbage\s+not a Confluent-framed Avro record$/);
    expect(lines[2]).toMatch(/^0\/1\s+\S+Z\s+HANDLER_REJECTED\s+agent-7\s+kind "later" is not supported yet$/);
    expect(lines[3]).toBe(`2 records in ${dlq}`);

    const [filtered, none, shown, shownJson] = await Promise.all([
      cli(['dlq', 'list', `${dlq}`, '--code', 'handler_rejected', '--since', '1h', '--json'], cliEnv),
      cli(['dlq', 'list', 'orders', '--since', new Date(Date.now() + 60_000).toISOString()], cliEnv),
      cli(['dlq', 'show', 'orders', '--offset', '1'], cliEnv),
      cli(['dlq', 'show', 'orders', '--partition', '0', '--offset', '0', '--json'], cliEnv),
    ]);
    expect(filtered.code).toBe(0);
    const document = JSON.parse(filtered.stdout) as { total: number; matched: number; records: Array<{ offset: string; code: string; key: string; source: unknown }> };
    expect(document).toMatchObject({ total: 2, matched: 1, records: [{ offset: '1', code: 'HANDLER_REJECTED', key: 'agent-7', source: { topic, partition: 0, offset: '7' } }] });
    expect(none.stdout.trim()).toMatch(new RegExp(`^0 records in ${dlq.replace(/\./g, '\\.')} matching since \\S+ \\(of 2\\)$`));
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/^code\s+HANDLER_REJECTED$/m);
    expect(shown.stdout).toMatch(/^ {2}origin: cli-test$/m);
    expect(shown.stdout).toMatch(/Avro \(schema id \d+\)\n\{\n {2}"id": "later",/);
    expect(shownJson.code).toBe(0);
    expect(JSON.parse(shownJson.stdout)).toMatchObject({ offset: '0', code: 'DECODE_BAD_FRAMING', value: { size: 19, text: 'definitely not avro', base64: Buffer.from('definitely not avro').toString('base64') } });

    const dry = await cli(['dlq', 'replay', 'orders', '--all', '--code', 'HANDLER_REJECTED', '--dry-run'], cliEnv);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain(`would replay 0/1 → ${topic}  key agent-7  HANDLER_REJECTED`);
    expect(dry.stdout).toContain(`dry run: 1 record of ${dlq} would be replayed (code HANDLER_REJECTED)`);

    const replay = await cli(['dlq', 'replay', 'orders', '--offset', '0/1', '--reason', 'the handler supports "later" now', '--actor', 'bob'], cliEnv);
    expect(replay.stderr).toBe('');
    expect(replay.code).toBe(0);
    expect(replay.stdout).toMatch(new RegExp(`^replayed 0/1 → ${topic.replace(/\./g, '\\.')}  key agent-7  HANDLER_REJECTED  audit [0-9a-f-]{36}$`, 'm'));
    expect(replay.stdout).toContain(`replayed 1 record of ${dlq} to ${topic} (actor bob)`);

    // Only the chosen record went back (the dry run sent nothing), as it first was, plus the marker.
    const [back] = await readRecords(topic, 1, uniqueName(`${prefix}check`));
    expect(back?.key?.toString()).toBe('agent-7');
    expect(back?.value?.equals(later)).toBe(true);
    expect(back?.headers).toEqual({ origin: 'cli-test', [REPLAY_HEADER]: `${dlq}/0/1` });
    const { rows } = await pool.query<{ value: Buffer }>('SELECT value FROM outbox WHERE topic = $1', [`${prefix}audit-events`]);
    expect(rows).toHaveLength(1);
    const audit = (await codec.decode((rows[0] as { value: Buffer }).value)) as AuditEvent;
    expect(audit).toMatchObject({ actor: 'bob', action: 'dlq.replayed' });
    expect(JSON.parse(audit.payload)).toMatchObject({ dlq: { topic: dlq, partition: 0, offset: '1' }, to: topic, reason: 'the handler supports "later" now' });
  });
});
