import { randomUUID } from 'node:crypto';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { restartWholeStack } from '../support/outage.ts';
import { createAvroCodec } from '../../lib/kafka/avro.ts';
import { createTestTopic, rawKafka, readRecords, TEST_SCHEMA, type TestEvent } from '../support/runtime.ts';
import { testEnv, uniqueName } from '../support/stack.ts';

// Kafka keeps records with the schema ids they were encoded with, so the ids must outlive the
// registry: this runs `stack down && stack up` (the stack's own stackDown/stackUp) with records
// already on a topic. Run serially after the other suites: every server goes away for a while.
jest.setTimeout(240_000);

const registryUrl = testEnv().SCHEMA_REGISTRY_URL ?? '';

async function schemaById(id: number): Promise<unknown> {
  const response = await fetch(`${registryUrl}/schemas/ids/${id}`);
  if (!response.ok) throw new Error(`GET /schemas/ids/${id}: HTTP ${response.status} ${await response.text()}`);
  const body = (await response.json()) as { schema: string };
  return JSON.parse(body.schema) as unknown;
}

describe('schema registry persistence across stack down && stack up', () => {
  const topic = uniqueName('outage-registry');
  const otherSubject = `${uniqueName('outage-registry-other')}-value`;
  let cleanup: (() => Promise<void>) | undefined;

  afterAll(async () => {
    await cleanup?.();
    await fetch(`${registryUrl}/subjects/${encodeURIComponent(otherSubject)}`, { method: 'DELETE' }).catch(() => undefined);
  });

  it('resolves a schema id to the same schema after the stack restarts, and records on a topic still decode', async () => {
    cleanup = await createTestTopic(topic, 1);
    const writer = createAvroCodec({ registryUrl });
    const events: TestEvent[] = Array.from({ length: 5 }, (_, seq) => ({ id: randomUUID(), seq, kind: seq % 2 === 0 ? 'even' : 'odd' }));
    const values = await Promise.all(events.map((event) => writer.encode(`${topic}-value`, event)));
    const id = values[0]?.readInt32BE(1) ?? -1;
    expect(values.every((value) => value.readInt32BE(1) === id)).toBe(true);
    const producer = rawKafka().producer();
    await producer.connect();
    try {
      await producer.send({ topic, messages: values.map((value, i) => ({ key: String(i), value })) });
    } finally {
      await producer.disconnect();
    }
    expect(await schemaById(id)).toEqual(TEST_SCHEMA);

    const restarted = await restartWholeStack();
    // Every server was stopped and started again by the stack (none was merely found running).
    expect(restarted.filter((r) => r.outcome !== 'started')).toEqual([]);

    // A schema registered first after the restart gets a new id (in memory it could take the old one).
    const other = await new SchemaRegistry({ host: registryUrl }).register(
      { type: SchemaType.AVRO, schema: JSON.stringify({ type: 'record', name: 'Other', namespace: 'io.agentmanager.test', fields: [{ name: 'note', type: 'string' }] }) },
      { subject: otherSubject },
    );
    expect(other.id).not.toBe(id);
    expect(await schemaById(id)).toEqual(TEST_SCHEMA);

    // A fresh codec (no cached schemas) decodes the records written before the restart.
    const reader = createAvroCodec({ registryUrl });
    const records = await readRecords(topic, events.length, uniqueName('outage-registry-group'));
    const decoded = await Promise.all(records.map((record) => reader.decode(record.value ?? Buffer.alloc(0))));
    expect(decoded).toEqual(events);
    // The subject and the global BACKWARD rule are still there.
    const versions = (await (await fetch(`${registryUrl}/subjects/${encodeURIComponent(`${topic}-value`)}/versions`)).json()) as number[];
    expect(versions).toEqual([1]);
    const rule = (await (await fetch(registryUrl.replace('/apis/ccompat/v7', '/apis/registry/v3/admin/rules/COMPATIBILITY'))).json()) as { config: string };
    expect(rule.config).toBe('BACKWARD');
  });
});
