/**
 * The local allocator driver with REAL agent processes (`node agents/heartbeat-agent.ts`) against the
 * local stack: each agent heartbeats to this test's own topic (created with createTopics(prefix))
 * with its own registered schema (registerSchemas(subjectPrefix)). Everything started here is
 * killed and removed in afterAll.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Admin, Consumer } from 'kafkajs';
import { registerSchemas } from '../../../../../lib/contracts/registry.ts';
import { avroTypeOptions, defaultSchemasDir } from '../../../../../lib/contracts/schemas.ts';
import { createTopics, topicPlan, topicSettings } from '../../../../../lib/contracts/topics.ts';
import type { AgentHeartbeat } from '../../../../../lib/contracts/types.ts';
import { createAvroCodec } from '../../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../../lib/logger.ts';
import { parseTraceparent } from '../../../../../lib/tracing.ts';
import { createLocalDriver, type LocalAgentState, type LocalDriverOptions } from '../../../../../services/provisioner/drivers/local.ts';
import type { AgentWorkload, AllocatorDriver, DriverEvent } from '../../../../../services/provisioner/drivers/types.ts';
import { eventually, rawKafka } from '../../../../support/runtime.ts';
import { kafkaEnv, testEnv, uniqueName } from '../../../../support/stack.ts';

const ROOT = process.cwd();
const env = testEnv();
const registryUrl = env.SCHEMA_REGISTRY_URL ?? '';
const prefix = `${uniqueName('it-local-driver')}.`;
const topic = `${prefix}agent-heartbeats`;
const subject = `${topic}-value`;

interface Received {
  key: string;
  traceparent: string | undefined;
  heartbeat: AgentHeartbeat;
}

interface Recorded {
  driver: string;
  agentId: string;
  event: DriverEvent;
  at: number;
}

function workload(agentId: string): AgentWorkload {
  return {
    agentId,
    spec: { template: null, image: 'heartbeat-agent', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 128, gpuCount: 0, gpuType: null } },
    division: 'test',
    region: null,
    labels: {},
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = (() => {
    try {
      return readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return null;
    }
  })();
  if (stat === null) return existsSync('/proc/self') ? false : true;
  return !/^\d+ \(.*\) [ZX] /.test(stat);
}

describe('local allocator driver with real agent processes', () => {
  const stateRoot = mkdtempSync(join(tmpdir(), 'local-driver-'));
  const codec = createAvroCodec({ registryUrl, avroOptions: avroTypeOptions() });
  const logger = createLogger('test-local-driver', (process.env.TEST_LOG_LEVEL as 'info' | undefined) ?? 'silent');
  const received: Received[] = [];
  const events: Recorded[] = [];
  const drivers: AllocatorDriver[] = [];
  let admin: Admin;
  let consumer: Consumer;

  function driver(name: string, overrides: Partial<LocalDriverOptions> = {}, stateDir = join(stateRoot, name)): AllocatorDriver {
    const created = createLocalDriver({
      stateDir,
      agentProgram: join(ROOT, 'agents', 'heartbeat-agent.ts'),
      agentEnv: {
        ...kafkaEnv(),
        SCHEMA_REGISTRY_URL: registryUrl,
        HEARTBEAT_TOPIC: topic,
        HEARTBEAT_INTERVAL_MS: '250',
        LOG_LEVEL: 'info',
      },
      onEvent: (agentId, event) => events.push({ driver: name, agentId, event, at: Date.now() }),
      logger,
      readyTimeoutMs: 60_000,
      livenessPollMs: 200,
      ...overrides,
    });
    drivers.push(created);
    return created;
  }

  /** One driver over the `main` folder, shared by the tests (two drivers on one folder adopt each other's agents). */
  let mainDriver: AllocatorDriver | undefined;
  const main = () => (mainDriver ??= driver('main'));

  const eventsOf = (agentId: string) => events.filter((e) => e.agentId === agentId);

  async function nextEvent(agentId: string, type: DriverEvent['type'], after = 0, timeoutMs = 45_000): Promise<Recorded> {
    let found: Recorded | undefined;
    await eventually(
      () => {
        found = eventsOf(agentId)
          .slice(after)
          .find((e) => e.event.type === type);
        return found !== undefined;
      },
      timeoutMs,
      `${type} of ${agentId}`,
    );
    if (!found) throw new Error('unreachable');
    return found;
  }

  function stateOf(stateDir: string, agentId: string): LocalAgentState {
    return JSON.parse(readFileSync(join(stateDir, agentId, 'state.json'), 'utf8')) as LocalAgentState;
  }

  function heartbeatsOf(agentId: string): Received[] {
    return received.filter((r) => r.heartbeat.agentId === agentId);
  }

  beforeAll(async () => {
    admin = rawKafka().admin();
    await admin.connect();
    await createTopics(admin, topicSettings({ partitions: 2 }), { prefix, topics: ['agent-heartbeats'] });
    await registerSchemas({ registryUrl, schemasDir: defaultSchemasDir(ROOT), topics: ['agent-heartbeats'], subjectPrefix: prefix });

    consumer = rawKafka().consumer({ groupId: uniqueName('it-local-driver') });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        received.push({
          key: message.key?.toString() ?? '',
          traceparent: message.headers?.traceparent?.toString(),
          heartbeat: (await codec.decode(message.value ?? Buffer.alloc(0))) as AgentHeartbeat,
        });
      },
    });
  });

  afterAll(async () => {
    for (const d of drivers) await d.close().catch(() => undefined);
    // Kill whatever an agent folder still records as running (a failed test must not leak agents).
    const stateFiles: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name === 'state.json') stateFiles.push(path);
      }
    };
    if (existsSync(stateRoot)) walk(stateRoot);
    for (const file of stateFiles) {
      const { pid } = JSON.parse(readFileSync(file, 'utf8')) as LocalAgentState;
      if (Number.isInteger(pid) && pid > 1 && alive(pid)) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    }
    rmSync(stateRoot, { recursive: true, force: true });
    await consumer?.disconnect();
    const names = topicPlan(topicSettings(), { prefix, topics: ['agent-heartbeats'] }).map((p) => p.topic);
    await admin?.deleteTopics({ topics: names }).catch(() => undefined);
    await admin?.disconnect();
    const url = `${registryUrl}/subjects/${encodeURIComponent(subject)}`;
    await fetch(url, { method: 'DELETE' }).catch(() => undefined);
    await fetch(`${url}?permanent=true`, { method: 'DELETE' }).catch(() => undefined);
  });

  it('provision + start → STARTED, heartbeats on the topic; a repeat is a no-op; stop → SIGTERM, STOPPED, process gone', async () => {
    const d = main();
    const stateDir = join(stateRoot, 'main');
    const agentId = randomUUID();
    await d.provision(workload(agentId));
    expect(existsSync(join(stateDir, agentId))).toBe(true);
    expect(await d.observe(agentId)).toEqual({ agentId, provisioned: true, running: false, ready: false, fence: null, instanceId: null });

    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    const started = await nextEvent(agentId, 'STARTED');
    const state = stateOf(stateDir, agentId);
    expect(started.event).toEqual({ type: 'STARTED', generation: 1, attempt: 1, instanceId: state.instanceId });
    expect(state).toMatchObject({ agentId, generation: 1, attempt: 1, ready: true });
    expect(state.instanceId).toMatch(new RegExp(`:${state.pid}$`));
    expect(alive(state.pid)).toBe(true);
    expect(await d.observe(agentId)).toEqual({ agentId, provisioned: true, running: true, ready: true, fence: { generation: 1, attempt: 1 }, instanceId: state.instanceId });
    expect(await d.list()).toEqual([agentId]);

    // Heartbeats: key = agentId, a trace per record, sequence 0, 1, 2… from this instance.
    await eventually(() => heartbeatsOf(agentId).length >= 4, 30_000, 'four heartbeats');
    const beats = heartbeatsOf(agentId);
    expect(beats.map((b) => b.heartbeat.sequence).sort((a, b) => a - b).slice(0, 4)).toEqual([0, 1, 2, 3]);
    for (const beat of beats) {
      expect(beat.key).toBe(agentId);
      expect(parseTraceparent(beat.traceparent)).toBeDefined();
      expect(beat.heartbeat).toMatchObject({ agentId, instanceId: state.instanceId, pid: state.pid });
      expect(beat.heartbeat.sentAt).toBeInstanceOf(Date);
      expect(beat.heartbeat.metrics?.memoryRssBytes).toBeGreaterThan(1_000_000);
      expect(typeof beat.heartbeat.metrics?.cpuPercent).toBe('number');
    }

    // The same fence again: no new process, STARTED said again.
    const before = eventsOf(agentId).length;
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    await nextEvent(agentId, 'STARTED', before);
    expect(stateOf(stateDir, agentId).pid).toBe(state.pid);

    const stopAt = Date.now();
    await d.stop(agentId, 10_000);
    const stopped = await nextEvent(agentId, 'STOPPED');
    expect(stopped.event).toEqual({ type: 'STOPPED', exitCode: 0, signal: null });
    expect(stopped.at - stopAt).toBeLessThan(10_000);
    expect(alive(state.pid)).toBe(false);
    expect(eventsOf(agentId).map((e) => e.event.type)).toEqual(['STARTED', 'STARTED', 'STOPPED']);
    expect(await d.observe(agentId)).toEqual({ agentId, provisioned: true, running: false, ready: false, fence: null, instanceId: null });

    // One JSON log line per event, in the agent's log file.
    const lines = readFileSync(join(stateDir, agentId, 'agent.log'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; agentId: string });
    expect(lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['starting', 'ready: first heartbeat acknowledged', 'stopping', 'stopped']));
    expect(lines.every((l) => l.agentId === agentId)).toBe(true);

    // Stopping what does not run: STOPPED at once.
    await d.stop(agentId, 1_000);
    await eventually(() => eventsOf(agentId).filter((e) => e.event.type === 'STOPPED').length === 2, 5_000, 'a second STOPPED');
    expect(eventsOf(agentId).at(-1)?.event).toEqual({ type: 'STOPPED', exitCode: null, signal: null });
  });

  it('an agent killed from outside → PROCESS_EXITED with its fence and signal', async () => {
    const d = main();
    const agentId = randomUUID();
    await d.provision(workload(agentId));
    await d.start(workload(agentId), { generation: 2, attempt: 3 });
    await nextEvent(agentId, 'STARTED');
    const { pid } = stateOf(join(stateRoot, 'main'), agentId);
    process.kill(pid, 'SIGKILL');
    const exited = await nextEvent(agentId, 'PROCESS_EXITED');
    expect(exited.event).toEqual({ type: 'PROCESS_EXITED', generation: 2, attempt: 3, exitCode: null, signal: 'SIGKILL' });
    expect((await d.observe(agentId)).running).toBe(false);
    expect(stateOf(join(stateRoot, 'main'), agentId)).toMatchObject({ signal: 'SIGKILL', exitCode: null });
  });

  it('an agent that crashes (AGENT_EXIT_AFTER_MS) → PROCESS_EXITED with exit code 1', async () => {
    const d = driver('crashing', {
      agentEnv: { ...kafkaEnv(), SCHEMA_REGISTRY_URL: registryUrl, HEARTBEAT_TOPIC: topic, HEARTBEAT_INTERVAL_MS: '250', AGENT_EXIT_AFTER_MS: '5000' },
    });
    const agentId = randomUUID();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    const exited = await nextEvent(agentId, 'PROCESS_EXITED');
    expect(exited.event).toEqual({ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: 1, signal: null });
  });

  it('an agent ignoring SIGTERM is SIGKILLed after the grace', async () => {
    const d = driver('stubborn', {
      agentEnv: { ...kafkaEnv(), SCHEMA_REGISTRY_URL: registryUrl, HEARTBEAT_TOPIC: topic, HEARTBEAT_INTERVAL_MS: '250', AGENT_IGNORE_SIGTERM: 'true' },
    });
    const agentId = randomUUID();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    await nextEvent(agentId, 'STARTED');
    const { pid } = stateOf(join(stateRoot, 'stubborn'), agentId);
    const stopAt = Date.now();
    await d.stop(agentId, 1_500);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(alive(pid)).toBe(true);
    const stopped = await nextEvent(agentId, 'STOPPED');
    expect(stopped.event).toEqual({ type: 'STOPPED', exitCode: null, signal: 'SIGKILL' });
    expect(stopped.at - stopAt).toBeGreaterThanOrEqual(1_400);
    expect(alive(pid)).toBe(false);
    const log = readFileSync(join(stateRoot, 'stubborn', agentId, 'agent.log'), 'utf8');
    expect(log).toContain('ignoring SIGTERM');
  });

  it('a start of a newer fence replaces the running instance silently; an older fence is ignored', async () => {
    const d = main();
    const agentId = randomUUID();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    await nextEvent(agentId, 'STARTED');
    const first = stateOf(join(stateRoot, 'main'), agentId);

    await d.start(workload(agentId), { generation: 1, attempt: 2 });
    const second = await nextEvent(agentId, 'STARTED', 1);
    const state = stateOf(join(stateRoot, 'main'), agentId);
    expect(second.event).toMatchObject({ type: 'STARTED', generation: 1, attempt: 2, instanceId: state.instanceId });
    expect(state.pid).not.toBe(first.pid);
    expect(alive(first.pid)).toBe(false);

    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    await new Promise((r) => setTimeout(r, 300));
    // state.json describes the live instance (the replaced one's exit record never overwrites it).
    expect(stateOf(join(stateRoot, 'main'), agentId)).toMatchObject({ pid: state.pid, attempt: 2, ready: true });
    expect(stateOf(join(stateRoot, 'main'), agentId).exitedAt).toBeUndefined();
    expect(eventsOf(agentId).map((e) => e.event.type)).toEqual(['STARTED', 'STARTED']);

    await d.destroy(agentId);
  });

  it('adoption: after close() the agent lives on; a new driver on the same stateDir observes it, reports its end, and stops it', async () => {
    const stateDir = join(stateRoot, 'adopt');
    const first = driver('first', {}, stateDir);
    const agentA = randomUUID();
    const agentB = randomUUID();
    await first.start(workload(agentA), { generation: 3, attempt: 1 });
    await first.start(workload(agentB), { generation: 1, attempt: 1 });
    await nextEvent(agentA, 'STARTED');
    await nextEvent(agentB, 'STARTED');
    const a = stateOf(stateDir, agentA);
    const b = stateOf(stateDir, agentB);
    await first.close();
    await new Promise((r) => setTimeout(r, 500));
    expect(alive(a.pid)).toBe(true);
    expect(alive(b.pid)).toBe(true);
    const beatsBefore = heartbeatsOf(agentA).length;
    await eventually(() => heartbeatsOf(agentA).length > beatsBefore + 2, 15_000, 'heartbeats after close');

    const second = driver('second', {}, stateDir);
    expect(await second.observe(agentA)).toEqual({ agentId: agentA, provisioned: true, running: true, ready: true, fence: { generation: 3, attempt: 1 }, instanceId: a.instanceId });
    expect((await second.list()).sort()).toEqual([agentA, agentB].sort());

    // The same fence again: adopted, nothing launched, STARTED said again.
    await second.start(workload(agentA), { generation: 3, attempt: 1 });
    await eventually(() => events.some((e) => e.driver === 'second' && e.agentId === agentA && e.event.type === 'STARTED'), 10_000, 'STARTED again');
    expect(stateOf(stateDir, agentA).pid).toBe(a.pid);

    // An adopted agent (not our child) killed from outside: seen by polling.
    process.kill(b.pid, 'SIGKILL');
    await eventually(() => events.some((e) => e.driver === 'second' && e.agentId === agentB && e.event.type === 'PROCESS_EXITED'), 10_000, 'PROCESS_EXITED of B');
    expect(events.find((e) => e.driver === 'second' && e.agentId === agentB)?.event).toEqual({ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: null, signal: null });

    await second.stop(agentA, 10_000);
    await eventually(() => events.some((e) => e.driver === 'second' && e.agentId === agentA && e.event.type === 'STOPPED'), 15_000, 'STOPPED of A');
    expect(alive(a.pid)).toBe(false);
    expect((await second.observe(agentA)).running).toBe(false);
    // The closed driver said nothing after close.
    expect(events.filter((e) => e.driver === 'first').map((e) => e.event.type)).toEqual(['STARTED', 'STARTED']);
  });

  it('destroy kills the agent and removes its folder; repeating it is fine', async () => {
    const d = main();
    const stateDir = join(stateRoot, 'main');
    const agentId = randomUUID();
    await d.provision(workload(agentId));
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    await nextEvent(agentId, 'STARTED');
    const { pid } = stateOf(stateDir, agentId);
    await d.destroy(agentId);
    expect(alive(pid)).toBe(false);
    expect(existsSync(join(stateDir, agentId))).toBe(false);
    await d.destroy(agentId);
    expect(await d.observe(agentId)).toEqual({ agentId, provisioned: false, running: false, ready: false, fence: null, instanceId: null });
    expect(await d.list()).not.toContain(agentId);
    await new Promise((r) => setTimeout(r, 300));
    expect(eventsOf(agentId).map((e) => e.event.type)).toEqual(['STARTED']);
  });

  it('an agent that never says ready is killed after readyTimeoutMs and reported DRIVER_FAILED (retryable), not PROCESS_EXITED', async () => {
    // No schema is registered for this topic: heartbeat #0 is never acknowledged.
    const d = driver('never-ready', {
      readyTimeoutMs: 2_500,
      agentEnv: { ...kafkaEnv(), SCHEMA_REGISTRY_URL: registryUrl, HEARTBEAT_TOPIC: `${prefix}unregistered`, HEARTBEAT_INTERVAL_MS: '250' },
    });
    const agentId = randomUUID();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    const { pid } = stateOf(join(stateRoot, 'never-ready'), agentId);
    const failed = await nextEvent(agentId, 'DRIVER_FAILED');
    expect(failed.event).toMatchObject({ type: 'DRIVER_FAILED', generation: 1, attempt: 1, retryable: true, reason: expect.stringContaining('did not report ready within 2500 ms') as string });
    await eventually(() => !alive(pid), 10_000, 'the agent killed');
    await new Promise((r) => setTimeout(r, 300));
    expect(eventsOf(agentId).map((e) => e.event.type)).toEqual(['DRIVER_FAILED']);
    const log = readFileSync(join(stateRoot, 'never-ready', agentId, 'agent.log'), 'utf8');
    expect(log).toContain('SCHEMA_NOT_REGISTERED');
  });

  it('a spawn error is reported DRIVER_FAILED (retryable)', async () => {
    const d = driver('no-node', { nodePath: join(stateRoot, 'no-such-node') });
    const agentId = randomUUID();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    const failed = await nextEvent(agentId, 'DRIVER_FAILED', 0, 10_000);
    expect(failed.event).toMatchObject({ type: 'DRIVER_FAILED', generation: 1, attempt: 1, retryable: true, reason: expect.stringContaining('ENOENT') as string });
    expect(await d.observe(agentId)).toMatchObject({ provisioned: true, running: false });
  });

  it('refuses an agent id that cannot name a folder', async () => {
    const d = main();
    await expect(d.provision(workload('../escape'))).rejects.toMatchObject({ code: 'INVALID_AGENT_ID', retryable: false });
  });

  it('two deployments sharing a state folder list (and so sweep as orphans) only their own agents', async () => {
    const stateDir = join(stateRoot, 'shared');
    const blue = driver('blue', { instance: 'blue' }, stateDir);
    const green = driver('green', { instance: 'green' }, stateDir);
    const [b, g] = [randomUUID(), randomUUID()];
    await blue.provision(workload(b));
    await green.provision(workload(g));
    expect(await blue.list()).toEqual([b]);
    expect(await green.list()).toEqual([g]);
  });
});
