/**
 * Helpers of the heartbeat service's tests: simulated agents (heartbeats and statuses produced
 * directly, as the SDK and the provisioner would), and a reader of what the service decided
 * (agent-commands) and dead-lettered.
 */
import { randomUUID } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Consumer } from 'kafkajs';
import type { AgentCommand, AgentHeartbeat, AgentState, AgentStatus, AuditEvent } from '../../../../lib/contracts/types.ts';
import { createKafkajsClient } from '../../../../lib/kafka/kafkajs.ts';
import type { ProducerClient } from '../../../../lib/kafka/types.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createEventProducer, type EventProducer } from '../../../../lib/runtime/producer.ts';
import { createFleetWorld, type FleetWorld } from '../../../support/fleet.ts';
import { rawKafka } from '../../../support/runtime.ts';
import { brokers, testTls, uniqueName } from '../../../support/stack.ts';

/** Settings that make the tests run in seconds: 300 ms heartbeats, a 1 s miss window. */
export const FAST: Record<string, string> = {
  HEARTBEAT_MISS_FACTOR: '3',
  HEARTBEAT_MIN_TTL_MS: '1000',
  HEARTBEAT_DEFAULT_INTERVAL_MS: '300',
  HEARTBEAT_SWEEP_INTERVAL_MS: '100',
  HEARTBEAT_FAILOVER_GRACE_MS: '1000',
  HEARTBEAT_RECOVER_HOLD_MS: '0',
  HEARTBEAT_SESSION_TIMEOUT_MS: '6000',
  HEARTBEAT_MASS_FAILURE_MIN_AGENTS: '10',
};

export const INTERVAL_MS = 300;

export interface Simulator {
  readonly producer: ProducerClient;
  readonly events: EventProducer;
  /** Heartbeats of every agent in `alive`, one per INTERVAL_MS, until `stop`. */
  readonly alive: Set<string>;
  /** The instance each agent heartbeats as (default `sim-<first 8 of its id>`); set to simulate a restart. */
  readonly instances: Map<string, string>;
  /** `instanceId`: the current instance the status names (RUNNING), null (the default) for none. */
  status(agentId: string, state: AgentState, instanceId?: string | null): Promise<void>;
  statuses(agentIds: readonly string[], state: AgentState, instanceOf?: (agentId: string) => string | null): Promise<void>;
  /** One heartbeat of each agent, as its instance (or as `instanceId`: a stale process); `stopping`: its last, as the SDK's stop() sends. */
  heartbeatOnce(agentIds: readonly string[], instanceId?: string, stopping?: boolean): Promise<void>;
  stop(): Promise<void>;
}

export async function startSimulator(world: FleetWorld): Promise<Simulator> {
  const kafka = createKafkajsClient({ clientId: 'hb-sim', brokers: brokers(), tls: testTls(), logger: createLogger('hb-sim', 'silent') });
  const producer = kafka.producer();
  await producer.connect();
  const events = createEventProducer(producer, world.codec);
  const alive = new Set<string>();
  const instances = new Map<string, string>();
  const instanceOf = (agentId: string) => instances.get(agentId) ?? `sim-${agentId.slice(0, 8)}`;
  const sequences = new Map<string, number>();
  const versions = new Map<string, number>();
  let stopped = false;

  async function heartbeatOnce(agentIds: readonly string[], instanceId?: string, stopping = false): Promise<void> {
    if (agentIds.length === 0) return;
    const now = new Date();
    const batch = agentIds.map((agentId) => {
      const sequence = sequences.get(agentId) ?? 0;
      sequences.set(agentId, sequence + 1);
      const value: AgentHeartbeat = { agentId, instanceId: instanceId ?? instanceOf(agentId), pid: null, sequence, sentAt: now, metrics: { cpuPercent: 1.5, memoryRssBytes: 1_000_000, custom: { queueDepth: 2 } }, intervalMs: INTERVAL_MS, stopping };
      return { key: agentId, value };
    });
    for (let i = 0; i < batch.length; i += 500) await events.send(world.topics['agent-heartbeats'], batch.slice(i, i + 500));
  }

  const loop = (async () => {
    while (!stopped) {
      const began = Date.now();
      try {
        await heartbeatOnce([...alive]);
      } catch {
        // the next tick sends again
      }
      await new Promise((r) => setTimeout(r, Math.max(0, INTERVAL_MS - (Date.now() - began))));
    }
  })();

  async function statuses(agentIds: readonly string[], state: AgentState, instanceOfStatus?: (agentId: string) => string | null): Promise<void> {
    const batch = agentIds.map((agentId) => {
      const version = (versions.get(agentId) ?? 0) + 1;
      versions.set(agentId, version);
      const value: AgentStatus = { eventId: randomUUID(), agentId, state, previousState: null, reason: 'simulated', requestId: null, commandId: null, version, time: new Date(), instanceId: instanceOfStatus?.(agentId) ?? null };
      return { key: agentId, value };
    });
    for (let i = 0; i < batch.length; i += 500) await events.send(world.topics['agent-status'], batch.slice(i, i + 500));
  }

  return {
    producer,
    events,
    alive,
    instances,
    status: (agentId, state, instanceId) => statuses([agentId], state, () => instanceId ?? null),
    statuses,
    heartbeatOnce,
    async stop() {
      stopped = true;
      await loop;
      await producer.disconnect();
    },
  };
}

/** Reads a topic of the world from the beginning, decoding each value. */
export class TopicReader<T> {
  readonly values: T[] = [];
  readonly raw: { key: string | null; headers: Record<string, string>; value: Buffer | null }[] = [];
  #consumer: Consumer;

  private constructor(consumer: Consumer) {
    this.#consumer = consumer;
  }

  static async start<T>(world: FleetWorld, topic: string, decode: boolean): Promise<TopicReader<T>> {
    const consumer = rawKafka().consumer({ groupId: uniqueName('hb-reader') });
    const reader = new TopicReader<T>(consumer);
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(message.headers ?? {})) if (v !== undefined) headers[k] = v.toString();
        reader.raw.push({ key: message.key?.toString() ?? null, headers, value: message.value });
        if (decode && message.value) reader.values.push((await world.codec.decode(message.value)) as T);
      },
    });
    return reader;
  }

  async stop(): Promise<void> {
    await this.#consumer.disconnect();
  }
}

export type CommandReader = TopicReader<AgentCommand>;
export const readCommands = (world: FleetWorld) => TopicReader.start<AgentCommand>(world, world.topics['agent-commands'], true);
export const readAudit = (world: FleetWorld) => TopicReader.start<AuditEvent>(world, world.topics['audit-events'], true);

export function commandsFor(reader: CommandReader, agentId: string, command?: AgentCommand['command']): AgentCommand[] {
  return reader.values.filter((c) => c.agentId === agentId && (command === undefined || c.command === command));
}

export function countCommands(reader: CommandReader, command: AgentCommand['command']): number {
  return reader.values.filter((c) => c.command === command).length;
}

export async function createHeartbeatWorld(name: string, extraEnv: Record<string, string> = {}): Promise<FleetWorld> {
  return createFleetWorld(name, { ...FAST, ...extraEnv });
}

export function agents(count: number): string[] {
  return Array.from({ length: count }, () => randomUUID());
}

/** `agent-manager run heartbeat` as its own process (so a test can SIGSTOP or kill -9 it). */
export function startHeartbeatProcess(world: FleetWorld, extraEnv: Record<string, string> = {}): ChildProcess {
  const child = spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'run', 'heartbeat'], {
    env: { ...process.env, ...world.env, LOG_LEVEL: 'info', ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.resume();
  child.stderr?.resume();
  return child;
}

export function waitForLog(child: ChildProcess, text: string, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`the heartbeat process did not log "${text}" in ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      seen = (seen + chunk.toString()).slice(-50_000);
      if (seen.includes(text)) {
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
  });
}
