import type { AvroCodec } from '../kafka/avro.ts';
import type { Headers, ProducerClient } from '../kafka/types.ts';
import { childTrace, formatTraceparent, type TraceContext } from '../tracing.ts';

export interface OutgoingEvent {
  /** The agentId: every event about one agent stays in order on one partition. */
  readonly key: string;
  readonly value: unknown;
  readonly headers?: Headers;
  /** The trace this event continues; a new trace is started when absent. */
  readonly trace?: TraceContext;
}

export interface EventProducer {
  send(topic: string, events: readonly OutgoingEvent[]): Promise<void>;
}

/** Avro-encodes with the topic's registered schema (subject `<topic>-value`) and adds a W3C `traceparent`. */
export function createEventProducer(producer: ProducerClient, codec: AvroCodec): EventProducer {
  return {
    async send(topic, events) {
      const records = await Promise.all(
        events.map(async (event) => ({
          key: event.key,
          value: await codec.encode(`${topic}-value`, event.value),
          headers: { ...event.headers, traceparent: formatTraceparent(childTrace(event.trace)) },
        })),
      );
      await producer.send(topic, records);
    },
  };
}
