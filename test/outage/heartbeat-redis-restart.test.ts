import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { startServices } from '../../cli/services.ts';
import { heartbeatKeyPrefix } from '../../lib/heartbeat/last-heartbeat.ts';
import type { ServiceContext } from '../../lib/service/context.ts';
import { within, type FleetWorld } from '../support/fleet.ts';
import { outage, restoreStack } from '../support/outage.ts';
import { eventually } from '../support/runtime.ts';
import { agents, commandsFor, countCommands, createHeartbeatWorld, readCommands, startSimulator, type CommandReader, type Simulator } from '../integration/services/heartbeat/world.ts';

// Stops the shared stack's Redis: run this folder alone, after the rest of the suite. The heartbeat
// service keeps its deadlines in Redis (AOF on): a restart mid-run loses no tracked agent and raises
// no false lapse (heartbeats wait in Kafka while it is down; nothing lapses until they are handled).
jest.setTimeout(300_000);

const REDIS_DOWN_MS = 5_000;

describe('heartbeat service across a Redis restart', () => {
  let world: FleetWorld;
  let service: ServiceContext;
  let sim: Simulator;
  let commands: CommandReader;

  beforeAll(async () => {
    world = await createHeartbeatWorld('hb-redis');
    service = await within('heartbeat start', 60_000, startServices(['heartbeat'], world.env, { opsServer: false }));
    sim = await startSimulator(world);
    commands = await readCommands(world);
  });

  afterAll(async () => {
    await restoreStack();
    await sim?.stop();
    await commands?.stop();
    await service?.shutdown();
    await world?.teardown();
  });

  it('no tracked agent lost, no false lapse; a silent agent is still detected after', async () => {
    const redis = new Redis(world.env.REDIS_URL ?? '', { maxRetriesPerRequest: null });
    const prefix = heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? '');
    const tracked = async () => {
      let total = 0;
      for (let p = 0; p < 4; p++) total += await redis.zcard(`${prefix}p${p}:deadlines`);
      return total;
    };
    try {
      const fleet = agents(20);
      for (const id of fleet) sim.alive.add(id);
      await sim.statuses(fleet, 'RUNNING');
      await eventually(async () => (await tracked()) === 20, 30_000, '20 agents tracked');
      await sleep(1_500);

      await outage('redis', REDIS_DOWN_MS);
      // Down for 5 × the miss window; every agent kept heartbeating.
      await eventually(async () => (await tracked()) === 20, 60_000, 'the 20 agents still tracked after the restart');
      await sleep(3_000);
      expect(countCommands(commands, 'HEARTBEAT_MISSED')).toBe(0);

      const [silent] = fleet as [string];
      sim.alive.delete(silent);
      await eventually(() => commandsFor(commands, silent, 'HEARTBEAT_MISSED').length === 1, 30_000, 'the silent agent detected');
      await sleep(2_000);
      expect(countCommands(commands, 'HEARTBEAT_MISSED')).toBe(1);
    } finally {
      redis.disconnect();
    }
  });
});
