import { join } from 'node:path';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { registerSchemas } from '../../../../lib/contracts/registry.ts';
import { avroTypeOptions, defaultSchemasDir } from '../../../../lib/contracts/schemas.ts';
import type { AuditEvent } from '../../../../lib/contracts/types.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { kafkajsTopicAdmin } from '../../../../lib/dlq/kafkajs-admin.ts';
import { readDlq, readDlqRecords, type ReadDlqOptions, type TopicAdmin } from '../../../../lib/dlq/reader.ts';
import { matchesFilter, parseSince, REPLAY_HEADER, type DlqRecord } from '../../../../lib/dlq/records.ts';
import { REPLAY_AUDIT_ACTION, replayDlqRecords } from '../../../../lib/dlq/replay.ts';
import { viewValue } from '../../../../lib/dlq/value.ts';
import { isAppError, permanentError } from '../../../../lib/errors.ts';
import { createAvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { createWorker, type Worker } from '../../../../lib/runtime/worker.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';
import { createTestTopic, eventually, rawKafka, readRecords, testRuntimeDeps, type TestEvent } from '../../../support/runtime.ts';

/**
 * The DLQ tooling against the real stack: a real worker dead-letters poison records, then they are
 * listed, shown, and replayed to their topic, where the worker processes the one that is now valid.
 */
describe('DLQ list, show and replay', () => {
  const env = testEnv();
  const registry = new SchemaRegistry({ host: env.SCHEMA_REGISTRY_URL ?? '' });
  const prefix = `${uniqueName('dlq')}.`;
  const schema = uniqueName('dlq').replace(/-/g, '_');
  const auditTopic = `${prefix}audit-events`;
  const codec = createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', avroOptions: avroTypeOptions() });
  let pool: Pool;
  const admin: TopicAdmin = kafkajsTopicAdmin(() => rawKafka().admin());

  beforeAll(async () => {
    await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger: createLogger('test', 'silent') });
    pool = createPool({ connectionString: env.DATABASE_URL ?? '', schema, max: 3 });
    // The audit events are Avro-encoded into the outbox with the subject of this test's prefix.
    await registerSchemas({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', schemasDir: defaultSchemasDir(process.cwd()), subjectPrefix: prefix, topics: ['audit-events'] });
  });

  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await pool.end();
    await fetch(`${env.SCHEMA_REGISTRY_URL}/subjects/${auditTopic}-value`, { method: 'DELETE' }).catch(() => undefined);
  });

  it('lists the dead-lettered records with their reasons, shows one, and replays chosen ones to their topic with an audit event each', async () => {
    const topic = uniqueName('dlq-orders');
    const dlq = `${topic}.dlq`;
    const cleanup = await createTestTopic(topic, 1);
    const deps = testRuntimeDeps('dlq-it');
    let worker: Worker | undefined;
    const read = (): Omit<ReadDlqOptions, 'only'> => ({ kafka: deps.kafka, admin, topic: dlq, groupId: uniqueName(`${prefix}dlq-reader`) });
    try {
      const id = await registry.getLatestSchemaId(`${topic}-value`);
      const agentId = '0b7f3c1e-5d2a-5f4e-9c61-2a7d8e9f0a1b';
      const later = await registry.encode(id, { id: 'later', seq: 3, kind: 'later' });
      const sequence: Array<[string, Buffer]> = [
        ['good-1', await registry.encode(id, { id: 'good-1', seq: 1, kind: 'ok' })],
        ['garbage', Buffer.from('definitely not avro')],
        ['negative', await registry.encode(id, { id: 'negative', seq: -1, kind: 'ok' })],
        [agentId, later],
        ['good-2', await registry.encode(id, { id: 'good-2', seq: 2, kind: 'ok' })],
      ];
      const beforeFailures = new Date();
      const producer = rawKafka().producer();
      await producer.connect();
      await producer.send({ topic, acks: -1, messages: sequence.map(([key, value], i) => ({ key, value, headers: { origin: 'test', 'event-id': `event-${i}` } })) });
      await producer.disconnect();

      // The handler refuses `later` until the bug that refused it is "fixed".
      let fixed = false;
      const processed: string[] = [];
      await deps.producer.connect();
      worker = createWorker(
        {
          service: 'dlq-it',
          topic,
          groupId: uniqueName(`${prefix}worker`),
          deps: {},
          validate: (value: unknown) => {
            const event = value as TestEvent;
            if (event.seq < 0) throw permanentError('VALIDATION_FAILED', `seq must be ≥ 0, got ${event.seq}`);
            return event;
          },
          handler: async (event: TestEvent) => {
            if (event.kind === 'later' && !fixed) throw permanentError('HANDLER_REJECTED', 'kind "later" is not supported yet');
            processed.push(event.id);
          },
        },
        deps,
      );
      await worker.start();
      await eventually(() => processed.length === 2, 30_000, 'the two good records');

      // list: everything up to the end offsets, with the reasons the runtime wrote.
      let all: DlqRecord[] = [];
      await eventually(
        async () => {
          all = [];
          await readDlq(read(), (record) => void all.push(record));
          return all.length === 3;
        },
        30_000,
        'three dead-lettered records',
      );
      const byKey = new Map(all.map((r) => [r.key?.toString(), r]));
      expect(byKey.get('garbage')).toMatchObject({ code: 'DECODE_BAD_FRAMING', partition: 0, source: { topic, partition: 0, offset: '1' }, attempts: 1, service: 'dlq-it' });
      expect(byKey.get('garbage')?.reason).toMatch(/not a Confluent-framed Avro record/);
      expect(byKey.get('negative')).toMatchObject({ code: 'VALIDATION_FAILED', reason: 'seq must be ≥ 0, got -1', source: { offset: '2' } });
      expect(byKey.get(agentId)).toMatchObject({ code: 'HANDLER_REJECTED', source: { offset: '3' } });
      expect(all.map((r) => r.offset)).toEqual(['0', '1', '2']);
      for (const r of all) expect(r.time.getTime()).toBeGreaterThanOrEqual(beforeFailures.getTime() - 1_000);

      // Filters: by code, by time.
      const codes = (filter: Parameters<typeof matchesFilter>[1]) => all.filter((r) => matchesFilter(r, filter)).map((r) => r.code);
      expect(codes({ codes: ['HANDLER_REJECTED', 'DECODE_BAD_FRAMING'] }).sort()).toEqual(['DECODE_BAD_FRAMING', 'HANDLER_REJECTED']);
      expect(codes({ since: parseSince('10m') })).toHaveLength(3);
      expect(codes({ since: new Date(Date.now() + 60_000) })).toEqual([]);

      // show: one record, its value decoded through the registry when it is Avro.
      const shownLater = await readDlqRecords(read(), [{ partition: 0, offset: (byKey.get(agentId) as DlqRecord).offset }]);
      expect(shownLater).toHaveLength(1);
      expect(shownLater[0]?.headers).toMatchObject({ origin: 'test', 'event-id': 'event-3', [DLQ_HEADERS.errorCode]: 'HANDLER_REJECTED' });
      expect(await viewValue(shownLater[0]?.value ?? null, codec)).toMatchObject({ schemaId: id, decoded: { id: 'later', seq: 3, kind: 'later' } });
      const garbageView = await viewValue(byKey.get('garbage')?.value ?? null, codec);
      expect(garbageView).toMatchObject({ text: 'definitely not avro', decodeError: expect.stringMatching(/Confluent-framed/) as unknown });
      const missing = await readDlqRecords(read(), [{ partition: 0, offset: '99' }]).catch((error: unknown) => error);
      expect(isAppError(missing) && missing.code).toBe('DLQ_RECORD_NOT_FOUND');

      // replay: the fixed record and the garbage (which fails again and returns to the DLQ).
      fixed = true;
      const chosen = await readDlqRecords(read(), [
        { partition: 0, offset: (byKey.get(agentId) as DlqRecord).offset },
        { partition: 0, offset: (byKey.get('garbage') as DlqRecord).offset },
      ]);
      const seen: string[] = [];
      const replayed = await replayDlqRecords({ producer: deps.producer, pool, codec, auditTopic }, chosen, { actor: 'alice', reason: 'kind "later" is supported now' }, (r) =>
        seen.push(`${r.partition}/${r.offset}`),
      );
      expect(replayed.map((r) => [r.to, r.key, r.code])).toEqual([
        [topic, agentId, 'HANDLER_REJECTED'],
        [topic, 'garbage', 'DECODE_BAD_FRAMING'],
      ]);
      expect(seen).toEqual(['0/2', '0/0']);

      // On the source topic: the original key, value and headers, plus the marker; no DLQ headers.
      const onTopic = await readRecords(topic, sequence.length + 2, uniqueName(`${prefix}check`));
      const again = onTopic.filter((r) => r.headers[REPLAY_HEADER] !== undefined);
      expect(again.map((r) => r.headers[REPLAY_HEADER])).toEqual([`${dlq}/0/2`, `${dlq}/0/0`]);
      expect(again[0]?.key?.toString()).toBe(agentId);
      expect(again[0]?.value?.equals(later)).toBe(true);
      expect(again[0]?.headers).toEqual({ origin: 'test', 'event-id': 'event-3', [REPLAY_HEADER]: `${dlq}/0/2` });
      expect(again[1]?.value?.toString()).toBe('definitely not avro');

      // The worker processes the now-valid record; the garbage fails again and is back in the DLQ, marked.
      await eventually(() => processed.includes('later'), 30_000, 'the replayed record to be processed');
      let afterReplay: DlqRecord[] = [];
      await eventually(
        async () => {
          afterReplay = [];
          await readDlq(read(), (record) => void afterReplay.push(record));
          return afterReplay.length === 4;
        },
        30_000,
        'the replayed garbage back in the DLQ',
      );
      expect(afterReplay[3]).toMatchObject({ code: 'DECODE_BAD_FRAMING', headers: expect.objectContaining({ [REPLAY_HEADER]: `${dlq}/0/0`, origin: 'test' }) as unknown });
      expect(processed).toEqual(['good-1', 'good-2', 'later']);

      // One audit event per replay, in the outbox: who, which DLQ record, where to, why.
      const { rows } = await pool.query<{ key: string; value: Buffer }>('SELECT key, value FROM outbox WHERE topic = $1 ORDER BY id', [auditTopic]);
      const audits = await Promise.all(rows.map(async (row) => ({ key: row.key, event: (await codec.decode(row.value)) as AuditEvent })));
      expect(audits.map((a) => a.event.eventId)).toEqual(replayed.map((r) => r.auditEventId));
      const [first, second] = audits;
      expect(first?.event).toMatchObject({ actor: 'alice', action: REPLAY_AUDIT_ACTION, agentId });
      expect(first?.key).toBe(agentId);
      expect(JSON.parse(first?.event.payload ?? '{}')).toMatchObject({
        dlq: { topic: dlq, partition: 0, offset: '2' },
        to: topic,
        reason: 'kind "later" is supported now',
        marker: `${dlq}/0/2`,
        failure: { code: 'HANDLER_REJECTED', message: 'kind "later" is not supported yet', attempts: 1, service: 'dlq-it' },
        source: { topic, partition: 0, offset: '3' },
      });
      // A key that is no agentId: the event concerns no agent and is keyed by its own id.
      expect(second?.event.agentId).toBeNull();
      expect(second?.key).toBe(second?.event.eventId);
    } finally {
      await worker?.stop();
      await deps.producer.disconnect();
      await cleanup();
    }
  });

  it('says clearly when the topic does not exist, and reads an empty DLQ without joining a group', async () => {
    const deps = testRuntimeDeps('dlq-it-missing');
    const missing = await readDlq({ kafka: deps.kafka, admin, topic: `${uniqueName('nowhere')}.dlq`, groupId: uniqueName(`${prefix}g`) }, () => undefined).catch((error: unknown) => error);
    expect(isAppError(missing) && missing.code).toBe('DLQ_UNKNOWN_TOPIC');
    expect((missing as Error).message).toMatch(/does not exist/);

    const topic = uniqueName('dlq-empty');
    const cleanup = await createTestTopic(topic, 1);
    try {
      const started = Date.now();
      expect(await readDlq({ kafka: deps.kafka, admin, topic: `${topic}.dlq`, groupId: uniqueName(`${prefix}g`) }, () => undefined)).toMatchObject({ read: 0, partitions: [{ partition: 0, low: '0', high: '0' }] });
      // An empty DLQ ends the read at once instead of waiting out the reader's 30 s no-progress limit.
      expect(Date.now() - started).toBeLessThan(25_000);
    } finally {
      await cleanup();
    }
  });
});
