/**
 * The agent SDK's heartbeater with an in-memory producer and codec (the real Kafka and registry path
 * is covered by test/integration/services/provisioner/drivers/local.test.ts, where real agents run it).
 */
import { createAgentHeartbeater, jitteredGapMs } from '../../../../lib/agent-sdk/index.ts';
import type { AgentHeartbeat } from '../../../../lib/contracts/types.ts';
import { isAppError } from '../../../../lib/errors.ts';
import type { AvroCodec } from '../../../../lib/kafka/avro.ts';
import type { OutgoingRecord, ProducerClient } from '../../../../lib/kafka/types.ts';
import { parseTraceparent } from '../../../../lib/tracing.ts';

interface Sent {
  topic: string;
  record: OutgoingRecord;
  heartbeat: AgentHeartbeat;
}

class FakeProducer implements ProducerClient {
  sent: Sent[] = [];
  connects = 0;
  disconnects = 0;
  failSends = 0;
  failConnects = 0;
  sendDelayMs = 0;
  /** Sends begun and not finished. */
  pending = 0;
  readonly values = new Map<string, unknown>();

  async connect(): Promise<void> {
    this.connects += 1;
    if (this.failConnects > 0) {
      this.failConnects -= 1;
      throw new Error('ECONNREFUSED 127.0.0.1:19092');
    }
  }

  async sendMany(batches: readonly { topic: string; records: readonly OutgoingRecord[] }[]): Promise<void> {
    for (const batch of batches) await this.send(batch.topic, batch.records);
  }

  async send(topic: string, records: readonly OutgoingRecord[]): Promise<void> {
    this.pending += 1;
    try {
      if (this.sendDelayMs > 0) await new Promise((r) => setTimeout(r, this.sendDelayMs));
      if (this.failSends > 0) {
        this.failSends -= 1;
        throw new Error('KafkaJSNumberOfRetriesExceeded');
      }
      for (const record of records) {
        this.sent.push({ topic, record, heartbeat: this.values.get(record.value?.toString() ?? '') as AgentHeartbeat });
      }
    } finally {
      this.pending -= 1;
    }
  }

  async disconnect(): Promise<void> {
    this.disconnects += 1;
  }
}

/** Encodes to a token and remembers the value, so the test sees exactly what was encoded. */
function fakeCodec(producer: FakeProducer, subjects: string[]): AvroCodec {
  let n = 0;
  return {
    decode: async () => undefined,
    encode: async (subject, value) => {
      subjects.push(subject);
      n += 1;
      const token = `value-${n}`;
      producer.values.set(token, structuredClone(value));
      return Buffer.from(token);
    },
  };
}

async function until(check: () => boolean, what: string, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('agent SDK heartbeater', () => {
  let producer: FakeProducer;
  let subjects: string[];

  beforeEach(() => {
    producer = new FakeProducer();
    subjects = [];
  });

  function heartbeater(overrides: Partial<Parameters<typeof createAgentHeartbeater>[0]> = {}) {
    return createAgentHeartbeater({
      agentId: 'agent-1',
      instanceId: 'host:42',
      brokers: ['127.0.0.1:19092'],
      registryUrl: 'http://registry',
      topic: 'it.agent-heartbeats',
      intervalMs: 20,
      producer,
      codec: fakeCodec(producer, subjects),
      ...overrides,
    });
  }

  it('sends heartbeat #0 at once and resolves once it is acknowledged: key, traceparent, Avro subject, fields', async () => {
    const hb = heartbeater({ intervalMs: 60_000, now: () => 1_700_000_000_000, customMetrics: () => ({ queueDepth: 3, bad: Number.NaN }) });
    await hb.start();
    expect(producer.connects).toBe(1);
    expect(producer.sent).toHaveLength(1);
    const [first] = producer.sent;
    expect(first?.topic).toBe('it.agent-heartbeats');
    expect(subjects).toEqual(['it.agent-heartbeats-value']);
    expect(first?.record.key).toBe('agent-1');
    expect(parseTraceparent(first?.record.headers?.traceparent)).toBeDefined();
    expect(first?.heartbeat).toEqual({
      agentId: 'agent-1',
      instanceId: 'host:42',
      pid: process.pid,
      sequence: 0,
      sentAt: new Date(1_700_000_000_000),
      metrics: { cpuPercent: expect.any(Number) as number, memoryRssBytes: expect.any(Number) as number, custom: { queueDepth: 3 } },
      intervalMs: 60_000,
      stopping: false,
    });
    expect(first?.heartbeat.metrics?.memoryRssBytes).toBeGreaterThan(1_000_000);
    expect(first?.heartbeat.metrics?.cpuPercent).toBeGreaterThanOrEqual(0);
    expect(hb.sequence).toBe(1);
    await hb.stop();
  });

  it('keeps sending one per interval with sequence + 1, each with its own trace', async () => {
    const hb = heartbeater();
    await hb.start();
    await until(() => producer.sent.length >= 5, 'five heartbeats');
    await hb.stop();
    const sequences = producer.sent.map((s) => s.heartbeat.sequence);
    expect(sequences).toEqual(sequences.map((_, i) => i));
    const traces = new Set(producer.sent.map((s) => s.record.headers?.traceparent));
    expect(traces.size).toBe(producer.sent.length);
  });

  it('a failed send is logged, not thrown, and the same sequence goes again at the next tick', async () => {
    const hb = heartbeater();
    await hb.start();
    producer.failSends = 2;
    await until(() => hb.consecutiveFailures === 2, 'two failures');
    await until(() => producer.sent.length >= 4, 'recovery');
    await hb.stop();
    expect(hb.consecutiveFailures).toBe(0);
    const sequences = producer.sent.map((s) => s.heartbeat.sequence);
    expect(sequences).toEqual(sequences.map((_, i) => i));
  });

  it('start keeps trying (connect and send) until heartbeat #0 is acknowledged', async () => {
    producer.failConnects = 1;
    producer.failSends = 1;
    const hb = heartbeater();
    const began = Date.now();
    await hb.start();
    expect(Date.now() - began).toBeGreaterThanOrEqual(30);
    expect(producer.connects).toBe(2);
    expect(producer.sent.map((s) => s.heartbeat.sequence)).toEqual([0]);
    await hb.stop();
  });

  it('stop flushes the send in flight, disconnects, and nothing is sent after it', async () => {
    const hb = heartbeater();
    await hb.start();
    producer.sendDelayMs = 50;
    await until(() => producer.pending === 1, 'a send in flight');
    const before = producer.sent.length;
    await hb.stop();
    expect(producer.pending).toBe(0);
    const count = producer.sent.length;
    // The send in flight, then the stop announced (the same sequence goes on: it was acknowledged).
    expect(count).toBe(before + 2);
    expect(producer.sent.map((s) => s.heartbeat.stopping)).toEqual([...Array<boolean>(count - 1).fill(false), true]);
    expect(producer.sent[count - 1]?.heartbeat.sequence).toBe((producer.sent[count - 2]?.heartbeat.sequence ?? -2) + 1);
    expect(producer.disconnects).toBe(1);
    await new Promise((r) => setTimeout(r, 120));
    expect(producer.sent.length).toBe(count);
    await hb.stop();
    expect(producer.disconnects).toBe(1);
    await expect(hb.start()).rejects.toMatchObject({ code: 'HEARTBEATER_STOPPED' });
  });

  it('stop waits at most stopTimeoutMs for the stopping heartbeat, then disconnects all the same', async () => {
    const hb = heartbeater({ intervalMs: 60_000, stopTimeoutMs: 50 });
    await hb.start();
    producer.sendDelayMs = 1_000; // Kafka slow or away
    await hb.stop();
    // Returned with the stopping heartbeat still unacknowledged.
    expect(producer.pending).toBe(1);
    expect(producer.disconnects).toBe(1);
    expect(producer.sent.map((s) => s.heartbeat.stopping)).toEqual([false]);
    await until(() => producer.pending === 0, 'the slow send to end');
  });

  it('a stop before the first acknowledgement ends start with HEARTBEATER_STOPPED', async () => {
    producer.failSends = 1_000;
    const hb = heartbeater({ intervalMs: 10_000 });
    const starting = hb.start();
    await until(() => hb.consecutiveFailures === 1, 'the first failure');
    await hb.stop();
    await expect(starting).rejects.toMatchObject({ code: 'HEARTBEATER_STOPPED' });
  });

  it('refuses bad options with CONFIG_INVALID', () => {
    let caught: unknown;
    try {
      createAgentHeartbeater({ agentId: '', instanceId: 'x', brokers: [], registryUrl: '', intervalMs: -1 });
    } catch (error) {
      caught = error;
    }
    expect(isAppError(caught) && caught.code).toBe('CONFIG_INVALID');
    expect(String((caught as Error).message)).toMatch(/agentId.*brokers.*registryUrl.*intervalMs/);
  });

  it('jitters the schedule early, never late: each gap is between (1 - ratio) × interval and the interval', () => {
    expect(jitteredGapMs(2_000, 0.1, 0)).toBe(2_000);
    expect(jitteredGapMs(2_000, 0.1, 0.5)).toBe(1_900);
    expect(jitteredGapMs(2_000, 0.1, 0.999_999)).toBe(1_800);
    expect(jitteredGapMs(2_000, 0, 0.7)).toBe(2_000);
  });
});
