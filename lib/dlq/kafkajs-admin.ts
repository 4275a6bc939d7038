import type { KafkaAdmin } from '../kafka/kafkajs.ts';
import { permanentError } from '../errors.ts';
import { DLQ_SUFFIX } from '../runtime/dlq.ts';
import type { PartitionRange, TopicAdmin } from './reader.ts';

/**
 * `TopicAdmin` over kafkajs: an admin client per call, because a kafkajs admin keeps asking for
 * every topic it was ever asked about, and fails once one of them is deleted.
 */
export function kafkajsTopicAdmin(newAdmin: () => KafkaAdmin): TopicAdmin {
  async function withAdmin<T>(work: (admin: KafkaAdmin) => Promise<T>): Promise<T> {
    const admin = newAdmin();
    await admin.connect();
    try {
      return await work(admin);
    } finally {
      await admin.disconnect();
    }
  }
  return {
    partitions: (topic) =>
      withAdmin(async (admin) => {
        // Listed first: kafkajs retries a lookup of a missing topic for a long while before failing.
        const topics = await admin.listTopics();
        if (!topics.includes(topic)) {
          const dlqs = topics.filter((t) => t.endsWith(DLQ_SUFFIX)).sort();
          const known = dlqs.length === 0 ? 'there is no DLQ topic at all' : `DLQ topics: ${dlqs.slice(0, 20).join(', ')}${dlqs.length > 20 ? `, … (${dlqs.length})` : ''}`;
          throw permanentError('DLQ_UNKNOWN_TOPIC', `topic "${topic}" does not exist (${known})`);
        }
        const offsets = await admin.fetchTopicOffsets(topic);
        return offsets.map((o): PartitionRange => ({ partition: o.partition, low: o.low, high: o.high })).sort((a, b) => a.partition - b.partition);
      }),
    deleteGroup: (groupId) => withAdmin(async (admin) => void (await admin.deleteGroups([groupId]))),
  };
}
