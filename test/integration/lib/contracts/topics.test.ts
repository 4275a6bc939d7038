import kafkajs, { Kafka, type Admin } from 'kafkajs';
import { createTopics, createTopicsAndWait, topicPlan, topicSettingsFromEnv } from '../../../../lib/contracts/topics.ts';
import { testKafkaConfig, uniqueName } from '../../../support/stack.ts';

const DAY_MS = 24 * 60 * 60 * 1000;

describe('createTopics against the real Kafka broker', () => {
  const kafka = new Kafka(testKafkaConfig('it-contracts-topics'));
  const prefix = `${uniqueName('it-topics')}.`;
  const settings = topicSettingsFromEnv({ TOPIC_PARTITIONS: '3', AUDIT_RETENTION_DAYS: '10' });
  const names = topicPlan(settings, { prefix }).map((p) => p.topic);
  let admin: Admin;

  beforeAll(async () => {
    admin = kafka.admin();
    await admin.connect();
  });

  afterAll(async () => {
    const existing = new Set(await admin.listTopics());
    const mine = names.filter((n) => existing.has(n));
    if (mine.length > 0) await admin.deleteTopics({ topics: mine });
    await admin.disconnect();
  });

  it('creates every topic and its .dlq with partitions, min.insync.replicas and retention', async () => {
    const results = await createTopics(admin, settings, { prefix });
    expect(results.map((r) => [r.topic, r.status])).toEqual(names.map((n) => [n, 'created']));

    const metadata = await admin.fetchTopicMetadata({ topics: names });
    for (const name of names) expect({ name, partitions: metadata.topics.find((t) => t.name === name)?.partitions.length }).toEqual({ name, partitions: 3 });

    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: names.map((name) => ({ type: kafkajs.ConfigResourceTypes.TOPIC, name, configNames: ['min.insync.replicas', 'retention.ms', 'cleanup.policy'] })),
    });
    const config = (name: string, key: string) =>
      described.resources.find((r) => r.resourceName === name)?.configEntries.find((e) => e.configName === key)?.configValue;
    for (const name of names) {
      expect(config(name, 'min.insync.replicas')).toBe('1');
      expect(config(name, 'cleanup.policy')).toBe('delete');
    }
    expect(config(`${prefix}agent-requests`, 'retention.ms')).toBe(String(7 * DAY_MS));
    expect(config(`${prefix}audit-events`, 'retention.ms')).toBe(String(10 * DAY_MS));
    expect(config(`${prefix}agent-requests.dlq`, 'retention.ms')).toBe(String(30 * DAY_MS));
  });

  it('is idempotent: a second run reports every topic as existing, unchanged', async () => {
    const results = await createTopics(admin, settings, { prefix });
    expect(results.map((r) => [r.topic, r.status, r.drift])).toEqual(names.map((n) => [n, 'exists', []]));
  });

  it('reports how an existing topic differs from the configuration, and leaves it alone', async () => {
    const other = topicSettingsFromEnv({ TOPIC_PARTITIONS: '4', AUDIT_RETENTION_DAYS: '20' });
    const results = await createTopics(admin, other, { prefix, topics: ['audit-events'] });
    expect(results.map((r) => r.status)).toEqual(['exists', 'exists']);
    expect(results[0]?.drift).toEqual(['partitions 3 (configured 4)', `retention.ms=${10 * DAY_MS} (configured ${20 * DAY_MS})`]);
    const metadata = await admin.fetchTopicMetadata({ topics: [`${prefix}audit-events`] });
    expect(metadata.topics[0]?.partitions).toHaveLength(3);
  });

  it('sets LogAppendTime on an existing audit-events topic, keeping its other settings', async () => {
    const own = `${uniqueName('it-topics-ts')}.`;
    const topic = `${own}audit-events`;
    // Made as before this setting: CreateTime, with an override of its own.
    await createTopicsAndWait(admin, [{ topic, numPartitions: 1, configEntries: [{ name: 'retention.ms', value: String(10 * DAY_MS) }, { name: 'segment.ms', value: String(DAY_MS) }] }]);
    try {
      const results = await createTopics(admin, settings, { prefix: own, topics: ['audit-events'] });
      expect(results[0]?.drift).toEqual(expect.arrayContaining(['message.timestamp.type was CreateTime: set to LogAppendTime']));
      const described = await admin.describeConfigs({ includeSynonyms: false, resources: [{ type: kafkajs.ConfigResourceTypes.TOPIC, name: topic }] });
      const config = (key: string) => described.resources[0]?.configEntries.find((e) => e.configName === key)?.configValue;
      expect(config('message.timestamp.type')).toBe('LogAppendTime');
      expect(config('retention.ms')).toBe(String(10 * DAY_MS));
      expect(config('segment.ms')).toBe(String(DAY_MS));
      const again = await createTopics(admin, settings, { prefix: own, topics: ['audit-events'] });
      expect(again[0]?.drift).toEqual(['partitions 1 (configured 3)']);
    } finally {
      const existing = new Set(await admin.listTopics());
      await admin.deleteTopics({ topics: [topic, `${topic}.dlq`].filter((t) => existing.has(t)) });
    }
  });
});
