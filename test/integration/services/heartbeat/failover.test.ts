import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { heartbeatKeyPrefix } from '../../../../lib/heartbeat/last-heartbeat.ts';
import { eventually } from '../../../support/runtime.ts';
import { waitForExit } from '../../../support/processes.ts';
import type { FleetWorld } from '../../../support/fleet.ts';
import { agents, commandsFor, countCommands, createHeartbeatWorld, readCommands, startHeartbeatProcess, startSimulator, waitForLog, type CommandReader, type Simulator } from './world.ts';

// The heartbeat service as its own processes (`agent-manager run heartbeat`), so that it can be
// paused with SIGSTOP and killed with SIGKILL while simulated agents heartbeat.
jest.setTimeout(240_000);

describe('heartbeat service: a paused or killed monitor raises no false alarm', () => {
  let world: FleetWorld;
  let sim: Simulator;
  let commands: CommandReader;
  let redis: Redis;
  const children: ChildProcess[] = [];

  /** Agents tracked (healthy) over every partition, as stored in Redis. */
  async function trackedCount(): Promise<number> {
    const prefix = heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? '');
    let total = 0;
    for (let p = 0; p < 4; p++) total += await redis.zcard(`${prefix}p${p}:deadlines`);
    return total;
  }

  async function partitionOf(agentId: string): Promise<number> {
    const prefix = heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? '');
    for (let p = 0; p < 4; p++) if ((await redis.zscore(`${prefix}p${p}:deadlines`, agentId)) !== null) return p;
    return -1;
  }

  beforeAll(async () => {
    world = await createHeartbeatWorld('hb-failover');
    sim = await startSimulator(world);
    commands = await readCommands(world);
    redis = new Redis(world.env.REDIS_URL ?? '');
  });

  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        await waitForExit(child, 30_000).catch(() => child.kill('SIGKILL'));
      }
    }
  });

  afterAll(async () => {
    await sim?.stop();
    await commands?.stop();
    redis?.disconnect();
    await world?.teardown();
  });

  it('paused (SIGSTOP) for 3× the miss window: no lapse for agents that kept heartbeating; a silent one is detected once it catches up', async () => {
    const child = startHeartbeatProcess(world);
    children.push(child);
    await waitForLog(child, 'sweeping partitions');
    const fleet = agents(10);
    const [silent] = fleet as [string];
    for (const id of fleet) sim.alive.add(id);
    await sim.statuses(fleet, 'RUNNING');
    await eventually(async () => (await trackedCount()) === 10, 30_000, '10 agents tracked');
    await sleep(1_500); // past the failover grace

    child.kill('SIGSTOP');
    sim.alive.delete(silent);
    await sleep(3_000 + 1_000); // 3 × the 1 s miss window, and more
    child.kill('SIGCONT');

    await eventually(() => commandsFor(commands, silent, 'HEARTBEAT_MISSED').length === 1, 30_000, 'the silent agent detected');
    await sleep(3_000);
    expect(countCommands(commands, 'HEARTBEAT_MISSED')).toBe(1);
    expect(commandsFor(commands, silent, 'HEARTBEAT_MISSED')).toHaveLength(1);
    for (const id of fleet) sim.alive.delete(id);
    await sim.statuses(fleet, 'STOPPED');
  });

  it('kill -9 of one of two processes with 1,000 agents heartbeating: partitions move, no false lapse, a silenced agent is detected once by the new owner', async () => {
    const missedBefore = countCommands(commands, 'HEARTBEAT_MISSED');
    const first = startHeartbeatProcess(world);
    children.push(first);
    await waitForLog(first, 'sweeping partitions');
    const second = startHeartbeatProcess(world);
    children.push(second);
    await waitForLog(second, 'sweeping partitions');

    const fleet = agents(1_000);
    for (const id of fleet) sim.alive.add(id);
    await sim.statuses(fleet, 'RUNNING');
    await eventually(async () => (await trackedCount()) === 1_000, 60_000, '1,000 agents tracked');
    await sleep(2_000);

    // One silenced agent per partition: whichever process dies, one of them is on its partitions.
    const silenced = new Map<number, string>();
    for (const id of fleet) {
      const p = await partitionOf(id);
      if (p >= 0 && !silenced.has(p)) silenced.set(p, id);
      if (silenced.size === 4) break;
    }
    expect(silenced.size).toBe(4);
    first.kill('SIGKILL');
    for (const id of silenced.values()) sim.alive.delete(id);

    await eventually(() => [...silenced.values()].every((id) => commandsFor(commands, id, 'HEARTBEAT_MISSED').length === 1), 60_000, 'every silenced agent detected');
    // Past the session timeout, the move and the grace: still nothing for the 996 others, and one MISSED each.
    await sleep(4_000);
    expect(countCommands(commands, 'HEARTBEAT_MISSED') - missedBefore).toBe(4);
    for (const id of silenced.values()) expect(commandsFor(commands, id, 'HEARTBEAT_MISSED')).toHaveLength(1);
    for (const id of fleet) sim.alive.delete(id);
  });
});
