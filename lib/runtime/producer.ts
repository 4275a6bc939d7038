import { context, trace } from '@opentelemetry/api';
import type { AvroCodec } from '../kafka/avro.ts';
import type { Headers, ProducerClient } from '../kafka/types.ts';
import { childTrace, formatTraceparent, type TraceContext } from '../tracing.ts';
import { contextWithParent, inSpan, SpanKind, telemetryActive, traceOfSpan } from '../telemetry.ts';

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

/**
 * The `traceparent` of an outgoing event: the `produce` span when the event belongs to its trace
 * (so the consumer's `handle` span is its child), else a child of the event's own trace.
 */
export function outgoingTraceparent(event: { readonly trace?: TraceContext }, produceSpan: TraceContext | undefined): string {
  if (produceSpan !== undefined && (event.trace === undefined || event.trace.traceId === produceSpan.traceId)) return formatTraceparent(produceSpan);
  return formatTraceparent(childTrace(event.trace));
}

/** Avro-encodes with the topic's registered schema (subject `<topic>-value`) and adds a W3C `traceparent`. */
export function createEventProducer(producer: ProducerClient, codec: AvroCodec): EventProducer {
  async function send(topic: string, events: readonly OutgoingEvent[], produceSpan: TraceContext | undefined): Promise<void> {
    const records = await Promise.all(
      events.map(async (event) => ({
        key: event.key,
        value: await codec.encode(`${topic}-value`, event.value),
        headers: { ...event.headers, traceparent: outgoingTraceparent(event, produceSpan) },
      })),
    );
    await producer.send(topic, records);
  }

  return {
    async send(topic, events) {
      if (!telemetryActive()) return send(topic, events, undefined);
      // The span's parent: the active span (a handler's `handle`), else the first event's trace.
      const active = trace.getSpan(context.active()) !== undefined;
      const parent = active ? context.active() : contextWithParent(events[0]?.trace, context.active());
      return inSpan(
        'produce',
        {
          kind: SpanKind.PRODUCER,
          parent,
          attributes: {
            'messaging.system': 'kafka',
            'messaging.operation.type': 'send',
            'messaging.destination.name': topic,
            'messaging.batch.message_count': events.length,
          },
        },
        (span) => send(topic, events, traceOfSpan(span)),
      );
    },
  };
}
