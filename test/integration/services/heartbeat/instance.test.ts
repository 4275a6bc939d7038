import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { startServices } from '../../../../cli/services.ts';
import { heartbeatKeyPrefix, readLastHeartbeat } from '../../../../lib/heartbeat/last-heartbeat.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { eventually } from '../../../support/runtime.ts';
import { within, type FleetWorld } from '../../../support/fleet.ts';
import { agents, commandsFor, createHeartbeatWorld, readCommands, startSimulator, type CommandReader, type Simulator } from './world.ts';

// Heartbeats of another instance than the one agent-status names as current (a stale process: the
// old one after a restart, a hung one waking up) are counted and ignored. The heartbeat service in
// this process, simulated statuses and heartbeats, decisions read back from agent-commands.
jest.setTimeout(180_000);

const metric = async (ctx: ServiceContext, name: string, labels: Record<string, string> = {}): Promise<number> => {
  const all = await ctx.metrics.registry.getMetricsAsJSON();
  const found = all.find((m) => m.name === name);
  return (found?.values ?? []).filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((sum, v) => sum + v.value, 0);
};

/** Heartbeats of `agentId` as `instanceId` every 300 ms until the returned function is called: a stale process. */
function staleProcess(sim: Simulator, agentId: string, instanceId: string): () => void {
  const timer = setInterval(() => void sim.heartbeatOnce([agentId], instanceId).catch(() => undefined), 300);
  return () => clearInterval(timer);
}

describe('heartbeat service: heartbeats of another instance', () => {
  let world: FleetWorld;
  let service: ServiceContext;
  let sim: Simulator;
  let commands: CommandReader;
  let redis: Redis;
  const stops: (() => void)[] = [];
  const otherInstance = () => metric(service, 'agent_manager_heartbeats_total', { outcome: 'other_instance' });
  const last = (agentId: string) => readLastHeartbeat(redis, heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? ''), agentId);

  beforeAll(async () => {
    world = await createHeartbeatWorld('hb-instance');
    service = await within('heartbeat start', 60_000, startServices(['heartbeat'], world.env, { opsServer: false }));
    sim = await startSimulator(world);
    commands = await readCommands(world);
    redis = new Redis(world.env.REDIS_URL ?? '');
  });

  afterAll(async () => {
    for (const stop of stops) stop();
    await sim?.stop();
    await commands?.stop();
    await service?.shutdown();
    redis?.disconnect();
    await world?.teardown();
  });

  it('an agent tracked as instance A, heard only from instance B, lapses exactly once; B is counted as other_instance and never resumes it; A does', async () => {
    const [wrong, right, unnamed] = agents(3) as [string, string, string];
    // `wrong` runs as A per its status, but only B heartbeats; `right` heartbeats as the instance its
    // status names; `unnamed` has a RUNNING without instance (any instance counts, as before).
    sim.instances.set(wrong, 'host-b:2');
    for (const id of [wrong, right, unnamed]) sim.alive.add(id);
    await sim.status(wrong, 'RUNNING', 'host-a:1');
    await sim.status(right, 'RUNNING', `sim-${right.slice(0, 8)}`);
    await sim.status(unnamed, 'RUNNING', null);

    await eventually(() => commandsFor(commands, wrong, 'RECOVER').length === 1, 30_000, 'MISSED and RECOVER for the agent heard only from B');
    expect(await otherInstance()).toBeGreaterThan(0);
    // Three more miss windows: B's heartbeats neither resume it nor lapse it again.
    await sleep(3_000);
    expect(commandsFor(commands, wrong).map((c) => c.command)).toEqual(['HEARTBEAT_MISSED', 'RECOVER']);
    for (const id of [right, unnamed]) expect(commandsFor(commands, id)).toEqual([]);
    expect(await metric(service, 'agent_manager_heartbeat_lapses_total')).toBe(1);
    // B's heartbeats were never stored as the agent's last; the others' were.
    expect(await last(wrong)).toBeNull();
    expect(await last(right)).toMatchObject({ instance: `sim-${right.slice(0, 8)}` });
    expect(await last(unnamed)).toMatchObject({ instance: `sim-${unnamed.slice(0, 8)}` });

    // The current instance heartbeats again: one RESUMED, and it is the last heartbeat stored.
    sim.instances.set(wrong, 'host-a:1');
    await eventually(() => commandsFor(commands, wrong, 'HEARTBEAT_RESUMED').length === 1, 30_000, 'RESUMED once A heartbeats');
    expect(await last(wrong)).toMatchObject({ instance: 'host-a:1' });
  });

  it('after a restart (STARTING, then RUNNING as B) B counts and the old A is ignored: no lapse while B heartbeats, one lapse once B is silent', async () => {
    const [agent] = agents(1) as [string];
    const a = 'host-a:10';
    const b = 'host-b:20';
    sim.instances.set(agent, a);
    sim.alive.add(agent);
    await sim.status(agent, 'RUNNING', a);
    await eventually(async () => (await last(agent))?.instance === a, 30_000, 'A tracked');

    // The provisioner restarts it: STARTING ends tracking, so neither A's silence nor the start's
    // length is a miss; the old process lives on and keeps heartbeating as A.
    await sim.status(agent, 'STARTING');
    sim.alive.delete(agent);
    const stopA = staleProcess(sim, agent, a);
    stops.push(stopA);
    await sleep(2_500);
    expect(commandsFor(commands, agent)).toEqual([]);

    const before = await otherInstance();
    sim.instances.set(agent, b);
    sim.alive.add(agent);
    await sim.status(agent, 'RUNNING', b);
    await eventually(async () => (await last(agent))?.instance === b, 30_000, 'B counted');
    await eventually(async () => (await otherInstance()) > before + 3, 30_000, "A's heartbeats counted as other_instance");
    await sleep(3_000);
    expect(commandsFor(commands, agent)).toEqual([]);
    expect((await last(agent))?.instance).toBe(b);

    // B goes silent while A still heartbeats: A does not keep it alive.
    sim.alive.delete(agent);
    await eventually(() => commandsFor(commands, agent, 'RECOVER').length === 1, 30_000, 'lapse once B is silent');
    await sleep(3_000);
    expect(commandsFor(commands, agent).map((c) => c.command)).toEqual(['HEARTBEAT_MISSED', 'RECOVER']);
    stopA();
  });
});
