// The baseline every throughput bench divides by: raw kafkajs batch consumption that only decodes.
import { randomUUID } from 'node:crypto';
import type { Kafka } from 'kafkajs';
import { NOT_CACHED, type AvroCodec } from '../lib/kafka/avro.ts';

/**
 * Consumes `count` records of `topic` from the beginning with raw kafkajs (eachBatch, 4 partitions at
 * once, no commits), doing only the runtime's decode (synchronous once the schema is cached); records/s.
 * The clock starts at the first decoded record, so the group join and the schema fetch are not in
 * the time; give each measurement its own codec (an empty schema cache) so every side pays the same.
 */
export async function rawDecodeRate(kafka: Kafka, codec: AvroCodec, topic: string, count: number): Promise<number> {
  const consumer = kafka.consumer({ groupId: `${topic}-raw-${randomUUID().slice(0, 8)}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let seen = 0;
  let started = 0;
  const done = new Promise<number>((resolve) => {
    void consumer.run({
      autoCommit: false,
      partitionsConsumedConcurrently: 4,
      eachBatch: async ({ batch }) => {
        for (const message of batch.messages) {
          if (message.value && codec.decodeCached?.(message.value) === NOT_CACHED) await codec.decode(message.value);
          if (started === 0) started = performance.now();
          if (++seen === count) resolve(performance.now() - started);
        }
      },
    });
  });
  const ms = await done;
  await consumer.disconnect();
  return (count / ms) * 1000;
}
