import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Kafka, logLevel, type Consumer, type Producer } from 'kafkajs';
import type { KafkaTls } from '../../lib/config.ts';
import type { AgentRequest, AgentState, AgentStatus } from '../../lib/contracts/types.ts';
import { permanentError } from '../../lib/errors.ts';
import type { AvroCodec } from '../../lib/kafka/avro.ts';
import { kafkajsSsl } from '../../lib/kafka/kafkajs.ts';
import type { TopicNames } from '../../lib/service/context.ts';

/**
 * A scripted Kernel: sends requests on `agent-requests` and watches `agent-status`. Used by the
 * demo, the end-to-end tests and the provisioning benchmark. On the local stack it connects as the
 * `kernel` principal, which may write `agent-requests`, read `agent-status` and use the consumer
 * groups `<prefix>kernel*` (so a watcher's group id starts with `<prefix>kernel`).
 */
/** What an INSTANTIATE built by `instantiateRequest` may vary; the rest is a small echo agent. */
export interface InstantiateOptions {
  readonly requestedBy?: string;
  readonly labels?: Record<string, string>;
  readonly gpuCount?: number;
  /** Any other field of the request, applied last. */
  readonly overrides?: Partial<AgentRequest>;
}

/** An INSTANTIATE of the reference echo agent, as the demo and the end-to-end tests send it. */
export function instantiateRequest(idempotencyKey: string, options: InstantiateOptions = {}): AgentRequest {
  const gpuCount = options.gpuCount ?? 0;
  return {
    requestId: randomUUID(),
    idempotencyKey,
    action: 'INSTANTIATE',
    agentId: null,
    spec: {
      template: null,
      image: 'registry.internal/agents/echo:1.0',
      command: [],
      environment: [{ name: 'API_KEY', ref: 'vault:kv/agents/echo#api-key' }],
      resources: { cpuMillicores: 250, memoryMiB: 128, gpuCount, gpuType: gpuCount > 0 ? 'NVIDIA-A100' : null },
    },
    division: 'platform',
    region: 'local',
    labels: options.labels ?? {},
    requestedBy: options.requestedBy ?? 'kernel',
    createdAt: new Date(),
    ...options.overrides,
  };
}

/** A STOP, START or DESTROY of an existing agent. */
export function agentActionRequest(agentId: string, action: 'STOP' | 'START' | 'DESTROY', idempotencyKey: string, requestedBy = 'kernel'): AgentRequest {
  return { requestId: randomUUID(), idempotencyKey, action, agentId, spec: null, division: 'platform', region: 'local', labels: {}, requestedBy, createdAt: new Date() };
}

export interface KernelOptions {
  readonly brokers: readonly string[];
  /** TLS with the Kernel's client certificate; undefined connects in plaintext. */
  readonly tls: KafkaTls | undefined;
  readonly topics: TopicNames;
  readonly codec: AvroCodec;
}

/**
 * The scripted Kernel's TLS from the environment `agent-manager stack env` prints: its certificate
 * and key from KERNEL_KAFKA_SSL_CERT_FILE/KERNEL_KAFKA_SSL_KEY_FILE, the CA from KAFKA_SSL_CA_FILE;
 * undefined with KAFKA_SECURITY_PROTOCOL=plaintext.
 */
export function kernelTlsFromEnv(env: Readonly<Record<string, string | undefined>>): KafkaTls | undefined {
  if ((env.KAFKA_SECURITY_PROTOCOL ?? 'ssl') === 'plaintext') return undefined;
  const read = (name: string) => {
    const path = env[name];
    return path ? readFileSync(path, 'utf8') : undefined;
  };
  const cert = read('KERNEL_KAFKA_SSL_CERT_FILE');
  const key = read('KERNEL_KAFKA_SSL_KEY_FILE');
  if (cert === undefined || key === undefined) {
    throw permanentError('CONFIG_INVALID', "invalid configuration:\n  KERNEL_KAFKA_SSL_CERT_FILE, KERNEL_KAFKA_SSL_KEY_FILE: the scripted Kernel's certificate and key, required with KAFKA_SECURITY_PROTOCOL=ssl (`agent-manager stack env` prints them)");
  }
  return { ca: read('KAFKA_SSL_CA_FILE') ?? env.KAFKA_SSL_CA, cert, key };
}

function kafkaOf(clientId: string, options: KernelOptions): Kafka {
  const ssl = kafkajsSsl(options.tls);
  return new Kafka({ clientId, brokers: [...options.brokers], ...(ssl ? { ssl } : {}), logLevel: logLevel.NOTHING });
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
    const consumer = kafkaOf('status-watcher', options).consumer({ groupId: options.groupId });
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
    const producer = kafkaOf('kernel', options).producer({ idempotent: true });
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
