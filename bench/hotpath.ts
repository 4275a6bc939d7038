// The consumer runtime's hot path without Kafka: pre-built batches of small Avro records go
// through createWorker's batch handler (no-op handler) and, for comparison, through a bare loop
// that only decodes them with the same codec path. Reports CPU time per record, so the figure is
// less sensitive to other processes than the Kafka benchmark's wall-clock rates.
import { parseArgs } from 'node:util';
import avsc from 'avsc';
import { NOT_CACHED, type AvroCodec } from '../lib/kafka/avro.ts';
import type { BatchControl, ConsumerClient, KafkaClient, KafkaRecord, ProducerClient, RecordBatch } from '../lib/kafka/types.ts';
import { createLogger } from '../lib/logger.ts';
import { createMetrics } from '../lib/metrics.ts';
import { createWorker } from '../lib/runtime/worker.ts';

const type = avsc.Type.forSchema({
  type: 'record',
  name: 'BenchHeartbeat',
  fields: [
    { name: 'agentId', type: 'string' },
    { name: 'sequence', type: 'long' },
    { name: 'sentAt', type: 'long' },
  ],
});

/** Confluent framing (magic byte 0, schema id 1) around an avsc body; decoded in place like lib/kafka/avro.ts. */
const codec: AvroCodec = {
  decodeCached(buffer) {
    const result: { value: unknown; offset: number } = type.decode(buffer, 5);
    if (result.offset !== buffer.length) throw new Error('bad body');
    return result.value;
  },
  async decode(buffer) {
    return this.decodeCached?.(buffer);
  },
  async encode() {
    return Buffer.alloc(0);
  },
};

interface Message {
  readonly key: Buffer;
  readonly value: Buffer;
}

class Batch implements RecordBatch {
  readonly topic = 'bench';
  readonly partition = 0;
  readonly highWatermark: string;
  readonly size: number;
  readonly #messages: readonly Message[];
  readonly #offsets: readonly string[];

  constructor(messages: readonly Message[], firstOffset: number) {
    this.#messages = messages;
    this.size = messages.length;
    this.#offsets = messages.map((_, i) => String(firstOffset + i));
    this.highWatermark = String(firstOffset + messages.length);
  }

  offsetAt(index: number): string {
    return this.#offsets[index] ?? '';
  }

  valueAt(index: number): Buffer | null {
    return this.#messages[index]?.value ?? null;
  }

  recordAt(index: number): KafkaRecord {
    const message = this.#messages[index];
    return { topic: this.topic, partition: 0, offset: this.offsetAt(index), key: message?.key ?? null, value: message?.value ?? null, headers: {}, timestamp: '0' };
  }
}

const cpuMs = (since: NodeJS.CpuUsage) => {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / 1000;
};

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { 'batch-size': { type: 'string', default: '20000' }, batches: { type: 'string', default: '25' }, rounds: { type: 'string', default: '8' } } });
  const size = Number(values['batch-size']);
  const batches = Number(values.batches);
  const rounds = Number(values.rounds);
  const messages: Message[] = Array.from({ length: size }, (_, i) => ({
    key: Buffer.from(`agent-${i % 5000}`),
    value: Buffer.concat([Buffer.from([0, 0, 0, 0, 1]), type.toBuffer({ agentId: `agent-${i % 5000}`, sequence: i, sentAt: Date.now() })]),
  }));

  let onBatch: ((batch: RecordBatch, control: BatchControl) => Promise<string | undefined>) | undefined;
  const consumer: ConsumerClient = {
    connect: async () => undefined,
    subscribe: async () => undefined,
    run: async (options) => void (onBatch = options.onBatch),
    commit: async () => undefined,
    pause: () => undefined,
    resume: () => undefined,
    seek: () => undefined,
    onAssignment: () => undefined,
    disconnect: async () => undefined,
  };
  const producer: ProducerClient = { connect: async () => undefined, send: async () => undefined, sendMany: async () => undefined, disconnect: async () => undefined };
  const kafka: KafkaClient = { consumer: () => consumer, producer: () => producer, ping: async () => true };
  let handled = 0;
  const worker = createWorker(
    { service: 'bench', topic: 'bench', groupId: 'bench', deps: {}, commitIntervalMs: 60_000, handler: async () => void handled++ },
    { kafka, codec, producer, logger: createLogger('bench', 'silent'), metrics: createMetrics('bench', { defaultMetrics: false }) },
  );
  await worker.start();
  const control: BatchControl = { isActive: () => true, heartbeat: async () => undefined };
  let nextOffset = 0;
  const overheads: number[] = [];
  console.log(`hot path: ${batches} batches of ${size} records per round, ${rounds} rounds (the first two are warm-up)`);
  for (let round = 0; round < rounds; round++) {
    const prepared = Array.from({ length: batches }, () => new Batch(messages, (nextOffset += size) - size));
    let since = process.cpuUsage();
    for (const batch of prepared) await onBatch?.(batch, control);
    const runtimeMs = cpuMs(since);
    since = process.cpuUsage();
    for (let b = 0; b < batches; b++) {
      for (const message of messages) if (codec.decodeCached?.(message.value) === NOT_CACHED) await codec.decode(message.value);
    }
    const rawMs = cpuMs(since);
    const records = batches * size;
    const perRecord = (ms: number) => (ms / records) * 1e6;
    if (round >= 2) overheads.push(perRecord(runtimeMs - rawMs));
    console.log(`  runtime ${perRecord(runtimeMs).toFixed(0)} ns/record, decode only ${perRecord(rawMs).toFixed(0)} ns/record, runtime overhead ${perRecord(runtimeMs - rawMs).toFixed(0)} ns/record`);
  }
  if (handled !== rounds * batches * size) throw new Error(`handled ${handled} of ${rounds * batches * size} records`);
  await worker.stop();
  const sorted = [...overheads].sort((a, b) => a - b);
  console.log(`runtime overhead = ${(sorted[Math.floor(sorted.length / 2)] ?? Number.NaN).toFixed(0)} ns/record (median)`);
}
