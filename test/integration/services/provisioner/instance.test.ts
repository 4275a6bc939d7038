import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Kafka, type Producer } from 'kafkajs';
import { startServices } from '../../../../cli/services.ts';
import type { AgentCommand, AgentHeartbeat, AgentStatus } from '../../../../lib/contracts/types.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { eventually } from '../../../support/runtime.ts';
import { testKafkaConfig } from '../../../support/stack.ts';
import { createFleetWorld, watchStatus, within, type FleetWorld, type StatusWatcher } from '../../../support/fleet.ts';
import { TopicReader } from '../heartbeat/world.ts';

// The provisioner with the local driver and a real agent process: its RUNNING status names the
// instance that runs (host:pid), the same instanceId the agent's heartbeats carry, so the heartbeat
// service can tell a stale process's heartbeats from the current one's.
jest.setTimeout(240_000);

function command(agentId: string, type: AgentCommand['command']): AgentCommand {
  return {
    commandId: randomUUID(),
    agentId,
    command: type,
    requestId: randomUUID(),
    spec:
      type === 'INSTANTIATE'
        ? { template: null, image: 'registry.internal/agents/echo:1.0', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 128, gpuCount: 0, gpuType: null } }
        : null,
    division: 'platform',
    region: null,
    labels: {},
    issuedBy: 'kernel',
    issuedAt: new Date(),
    reason: null,
    attempt: 1,
  };
}

describe('provisioner: the RUNNING status names the running instance (local driver)', () => {
  let world: FleetWorld;
  let fleet: ServiceContext;
  let producer: Producer;
  let status: StatusWatcher;
  let heartbeats: TopicReader<AgentHeartbeat>;

  const send = async (c: AgentCommand) => {
    const topic = world.topics['agent-commands'];
    await producer.send({ topic, acks: -1, messages: [{ key: c.agentId, value: await world.codec.encode(`${topic}-value`, c) }] });
  };
  const runnings = (agentId: string): AgentStatus[] => (status.states.get(agentId) ?? []).filter((s) => s.state === 'RUNNING');
  const pidOf = (agentId: string): number => (JSON.parse(readFileSync(join(world.stateDir, agentId, 'state.json'), 'utf8')) as { pid: number }).pid;

  beforeAll(async () => {
    world = await createFleetWorld('prov-instance');
    fleet = await within('provisioner start', 60_000, startServices(['provisioner'], world.env, { opsServer: false }));
    producer = new Kafka(testKafkaConfig('test-commands')).producer({ idempotent: true });
    await producer.connect();
    status = await watchStatus(world);
    heartbeats = await TopicReader.start<AgentHeartbeat>(world, world.topics['agent-heartbeats'], true);
  });

  afterAll(async () => {
    await heartbeats?.stop();
    await status?.stop();
    await producer?.disconnect();
    await fleet?.shutdown();
    await world?.teardown();
  });

  it('RUNNING carries host:pid of the agent process, as its heartbeats do; a restart names the new process', async () => {
    const agentId = randomUUID();
    await send(command(agentId, 'INSTANTIATE'));
    await eventually(() => runnings(agentId).length === 1, 120_000, 'RUNNING');
    const first = runnings(agentId)[0]?.instanceId;
    expect(first).toBe(`${hostname()}:${pidOf(agentId)}`);
    await eventually(() => heartbeats.values.some((h) => h.agentId === agentId && h.instanceId === first), 30_000, 'a heartbeat of that instance');
    // The statuses of the way there name no instance.
    expect((status.states.get(agentId) ?? []).filter((s) => s.state !== 'RUNNING').every((s) => s.instanceId === null)).toBe(true);

    await send(command(agentId, 'RESTART'));
    await eventually(() => runnings(agentId).length === 2, 120_000, 'RUNNING again after the restart');
    const second = runnings(agentId)[1]?.instanceId;
    expect(second).toBe(`${hostname()}:${pidOf(agentId)}`);
    expect(second).not.toBe(first);
    await eventually(() => heartbeats.values.some((h) => h.agentId === agentId && h.instanceId === second), 30_000, 'a heartbeat of the new instance');
    // Once restarted, only the new instance heartbeats.
    const seen = heartbeats.values.length;
    await eventually(() => heartbeats.values.length >= seen + 2, 30_000, 'more heartbeats');
    expect(heartbeats.values.slice(seen).filter((h) => h.agentId === agentId).every((h) => h.instanceId === second)).toBe(true);

    await send(command(agentId, 'DESTROY'));
    await eventually(() => status.lastState(agentId) === 'DESTROYED', 60_000, 'DESTROYED');
  });
});
