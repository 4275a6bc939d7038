import { Kafka, logLevel, type Consumer, type Producer } from 'kafkajs';
import type { AgentRequest, AgentState, AgentStatus } from '../../lib/contracts/types.ts';
import type { AvroCodec } from '../../lib/kafka/avro.ts';
import type { TopicNames } from '../../lib/service/context.ts';

/**
 * A scripted Kernel: sends requests on `agent-requests` and watches `agent-status`. Used by the
 * demo, the end-to-end tests and the provisioning benchmark.
 */
export interface KernelOptions {
  readonly brokers: readonly string[];
  readonly topics: TopicNames;
  readonly codec: AvroCodec;
}

/** Watches `agent-status` and keeps every agent's sequence of states. */
export class StatusWatcher {
  readonly states = new Map<string, AgentStatus[]>();
  readonly #listeners: ((status: AgentStatus) => void)[] = [];
  #consumer: Consumer;
  #codec: AvroCodec;

  private constructor(consumer: Consumer, codec: AvroCodec) {
    this.#consumer = consumer;
    this.#codec = codec;
  }

  static async start(options: KernelOptions & { groupId: string }): Promise<StatusWatcher> {
    const consumer = new Kafka({ clientId: 'status-watcher', brokers: [...options.brokers], logLevel: logLevel.NOTHING }).consumer({ groupId: options.groupId });
    const watcher = new StatusWatcher(consumer, options.codec);
    await consumer.connect();
    await consumer.subscribe({ topic: options.topics['agent-status'], fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        if (!message.value) return;
        const status = (await watcher.#codec.decode(message.value)) as AgentStatus;
        const list = watcher.states.get(status.agentId) ?? [];
        list.push(status);
        watcher.states.set(status.agentId, list);
        for (const listener of watcher.#listeners) listener(status);
      },
    });
    return watcher;
  }

  /** Called with every status event as it arrives. */
  onStatus(listener: (status: AgentStatus) => void): void {
    this.#listeners.push(listener);
  }

  last(agentId: string): AgentStatus | undefined {
    const list = this.states.get(agentId);
    return list?.[list.length - 1];
  }

  lastState(agentId: string): AgentState | undefined {
    return this.last(agentId)?.state;
  }

  history(agentId: string): AgentState[] {
    return (this.states.get(agentId) ?? []).map((s) => s.state);
  }

  async stop(): Promise<void> {
    await this.#consumer.disconnect();
  }
}

/** The Kernel's side of `agent-requests`, for tests and the demo. */
export class KernelClient {
  #producer: Producer;
  #options: KernelOptions;

  private constructor(producer: Producer, options: KernelOptions) {
    this.#producer = producer;
    this.#options = options;
  }

  static async connect(options: KernelOptions): Promise<KernelClient> {
    const producer = new Kafka({ clientId: 'kernel', brokers: [...options.brokers], logLevel: logLevel.NOTHING }).producer({ idempotent: true });
    await producer.connect();
    return new KernelClient(producer, options);
  }

  async send(requests: readonly AgentRequest[]): Promise<void> {
    const topic = this.#options.topics['agent-requests'];
    const messages = await Promise.all(
      requests.map(async (r) => ({ key: r.agentId ?? r.idempotencyKey, value: await this.#options.codec.encode(`${topic}-value`, r) })),
    );
    await this.#producer.send({ topic, acks: -1, messages });
  }

  async sendRaw(value: Buffer, key = 'garbage'): Promise<void> {
    await this.#producer.send({ topic: this.#options.topics['agent-requests'], acks: -1, messages: [{ key, value }] });
  }

  async disconnect(): Promise<void> {
    await this.#producer.disconnect();
  }
}
