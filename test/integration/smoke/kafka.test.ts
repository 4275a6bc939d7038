import { Kafka, type Admin } from 'kafkajs';
import { createTopicsAndWait } from '../../../lib/contracts/topics.ts';
import { testKafkaConfig, uniqueName } from '../../support/stack.ts';

describe('Kafka 4 broker with kafkajs', () => {
  const kafka = new Kafka(testKafkaConfig('smoke'));
  const topic = uniqueName('smoke-topic');
  const groupId = uniqueName('smoke-group');
  let admin: Admin;

  beforeAll(async () => {
    admin = kafka.admin();
    await admin.connect();
    await createTopicsAndWait(admin, [{ topic, numPartitions: 3, replicationFactor: 1 }]);
  });

  afterAll(async () => {
    await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.deleteTopics({ topics: [topic] });
    await admin.disconnect();
  });

  it('describes the cluster and the topic', async () => {
    const cluster = await admin.describeCluster();
    expect(cluster.brokers).toHaveLength(1);
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
    expect(metadata.topics[0]?.partitions).toHaveLength(3);
  });

  it('produces idempotently with acks=all, consumes in a group and commits', async () => {
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const messages = Array.from({ length: 30 }, (_, i) => ({ key: `agent-${i % 5}`, value: `value-${i}` }));
    await producer.send({ topic, acks: -1, messages });
    await producer.disconnect();

    const consumer = kafka.consumer({ groupId });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    const received: string[] = [];
    await new Promise<void>((resolve, reject) => {
      consumer
        .run({
          autoCommit: false,
          eachMessage: async ({ message, partition }) => {
            received.push(message.value?.toString() ?? '');
            await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
            if (received.length === messages.length) resolve();
          },
        })
        .catch(reject);
    });
    await consumer.disconnect();

    expect(received.sort()).toEqual(messages.map((m) => m.value).sort());
    const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
    const total = committed[0]?.partitions.reduce((sum, p) => sum + Number(p.offset), 0);
    expect(total).toBe(messages.length);
  });
});
