import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { startServices } from '../../../../cli/services.ts';
import { heartbeatKeyPrefix, readLastHeartbeat } from '../../../../lib/heartbeat/last-heartbeat.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { eventually, rawKafka } from '../../../support/runtime.ts';
import { within, type FleetWorld } from '../../../support/fleet.ts';
import { agents, commandsFor, countCommands, createHeartbeatWorld, readAudit, readCommands, startSimulator, TopicReader, type CommandReader, type Simulator } from './world.ts';

// The heartbeat service in this process against the real stack, with simulated agents: statuses and
// heartbeats produced directly, the decisions read back from agent-commands.
jest.setTimeout(180_000);

const metric = async (ctx: ServiceContext, name: string, labels: Record<string, string> = {}): Promise<number> => {
  const all = await ctx.metrics.registry.getMetricsAsJSON();
  const found = all.find((m) => m.name === name);
  return (found?.values ?? []).filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((sum, v) => sum + v.value, 0);
};

describe('heartbeat service: detection, stops, malformed heartbeats', () => {
  const used: string[] = [];
  let world: FleetWorld;
  let service: ServiceContext;
  let sim: Simulator;
  let commands: CommandReader;
  let redis: Redis;

  beforeAll(async () => {
    world = await createHeartbeatWorld('hb-detect');
    service = await within('heartbeat start', 60_000, startServices(['heartbeat'], world.env, { opsServer: false }));
    sim = await startSimulator(world);
    commands = await readCommands(world);
    redis = new Redis(world.env.REDIS_URL ?? '');
  });

  afterAll(async () => {
    await sim?.stop();
    await commands?.stop();
    await service?.shutdown();
    redis?.disconnect();
    await world?.teardown();
  });

  it('lapses a silent agent exactly once (MISSED then RECOVER), RESUMED when it heartbeats again; intended stops (a status, or a stopping heartbeat) never lapse', async () => {
    const fleet = agents(8);
    used.push(...fleet);
    const [silent, stopped1, stopped2, destroyed, announced] = fleet as [string, string, string, string, string];
    for (const id of fleet) sim.alive.add(id);
    await sim.statuses(fleet, 'RUNNING');
    // Every agent tracked and its last heartbeat readable.
    await eventually(async () => (await readLastHeartbeat(redis, heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? ''), silent)) !== null, 30_000, 'last heartbeat stored');
    const last = await readLastHeartbeat(redis, heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? ''), silent);
    expect(last).toMatchObject({ instance: `sim-${silent.slice(0, 8)}`, intervalMs: 300, cpuPercent: 1.5, memoryRssBytes: 1_000_000, gauges: { queueDepth: 2 } });

    // Intended stops: the status first, then silence (as the provisioner does).
    await sim.statuses([stopped1, stopped2], 'STOPPING');
    await sim.statuses([destroyed], 'DESTROYING');
    await sim.statuses([stopped1, stopped2], 'STOPPED');
    await sim.statuses([destroyed], 'DESTROYED');
    await sleep(500);
    for (const id of [stopped1, stopped2, destroyed]) sim.alive.delete(id);
    sim.alive.delete(silent);
    // A stop the agent announces (the SDK's last heartbeat) before any status says so: the
    // provisioner's STOPPING can come late, through its outbox. Silence after it is no miss.
    sim.alive.delete(announced);
    await sim.heartbeatOnce([announced], undefined, true);

    await eventually(() => commandsFor(commands, silent, 'RECOVER').length === 1, 30_000, 'MISSED and RECOVER for the silent agent');
    const forSilent = commandsFor(commands, silent);
    expect(forSilent.map((c) => c.command)).toEqual(['HEARTBEAT_MISSED', 'RECOVER']);
    expect(forSilent[0]?.issuedBy).toBe('heartbeat');

    // Three more miss windows: nothing more for it, nothing at all for the others.
    await sleep(3_000);
    expect(commandsFor(commands, silent)).toHaveLength(2);
    for (const id of fleet.filter((a) => a !== silent)) expect(commandsFor(commands, id)).toEqual([]);
    expect(await readLastHeartbeat(redis, heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? ''), destroyed)).toBeNull();

    // It comes back: one RESUMED.
    sim.alive.add(silent);
    await eventually(() => commandsFor(commands, silent, 'HEARTBEAT_RESUMED').length === 1, 30_000, 'RESUMED');
    await sleep(1_000);
    expect(commandsFor(commands, silent).map((c) => c.command)).toEqual(['HEARTBEAT_MISSED', 'RECOVER', 'HEARTBEAT_RESUMED']);
    expect(await metric(service, 'agent_manager_heartbeat_lapses_total')).toBe(1);
    expect(await metric(service, 'agent_manager_heartbeat_resumes_total')).toBe(1);
  });

  it('counts and ignores heartbeats of unknown and destroyed agents', async () => {
    const before = await metric(service, 'agent_manager_heartbeats_total', { outcome: 'ignored' });
    const unknown = agents(3);
    await sim.heartbeatOnce(unknown);
    await eventually(async () => (await metric(service, 'agent_manager_heartbeats_total', { outcome: 'ignored' })) >= before + 3, 30_000, 'ignored heartbeats counted');
    await sleep(2_000);
    for (const id of unknown) expect(commandsFor(commands, id)).toEqual([]);
    expect(await readLastHeartbeat(redis, heartbeatKeyPrefix(world.env.TOPIC_PREFIX ?? ''), unknown[0] ?? '')).toBeNull();
  });

  it('dead-letters malformed heartbeats (garbage, unknown schema id, invalid fields) with the reason and keeps going', async () => {
    const dlq = await TopicReader.start<unknown>(world, `${world.topics['agent-heartbeats']}.dlq`, false);
    try {
      const producer = rawKafka().producer();
      await producer.connect();
      const valid = (await world.codec.encode(`${world.topics['agent-heartbeats']}-value`, {
        agentId: 'not-a-uuid',
        instanceId: 'x',
        pid: null,
        sequence: 1,
        sentAt: new Date(),
        metrics: null,
        intervalMs: 300,
      }));
      const unknownSchema = Buffer.concat([Buffer.from([0, 0x7f, 0xff, 0xff, 0xf0]), valid.subarray(5)]);
      await producer.send({
        topic: world.topics['agent-heartbeats'],
        messages: [
          { key: 'garbage', value: Buffer.from('this is not avro') },
          { key: 'unknown-schema', value: unknownSchema },
          { key: 'invalid', value: valid },
        ],
      });
      await producer.disconnect();
      await eventually(() => dlq.raw.length >= 3, 30_000, 'three dead letters');
      const codes: Record<string, string | undefined> = Object.fromEntries(dlq.raw.map((r) => [r.key ?? '', r.headers[DLQ_HEADERS.errorCode]]));
      expect(codes).toEqual({ garbage: 'DECODE_BAD_FRAMING', 'unknown-schema': 'DECODE_UNKNOWN_SCHEMA', invalid: 'VALIDATION_FAILED' });
      // Still detecting.
      const [late] = agents(1) as [string];
      used.push(late);
      sim.alive.add(late);
      await sim.status(late, 'RUNNING');
      await sleep(1_000);
      sim.alive.delete(late);
      await eventually(() => commandsFor(commands, late, 'HEARTBEAT_MISSED').length === 1, 30_000, 'a lapse after the dead letters');
      expect(countCommands(commands, 'HEARTBEAT_MISSED')).toBe(2);
    } finally {
      await dlq.stop();
    }
  });

  it('mass failure: 60% silenced at once → MISSED for each, no RECOVER while it lasts, metric and audit; bounded recovers after', async () => {
    // Its own service with the guard's settings: recovers wait 2 s, released at 2/s, burst 1.
    await service.shutdown();
    service = await within(
      'heartbeat restart',
      60_000,
      startServices(['heartbeat'], { ...world.env, HEARTBEAT_RECOVER_HOLD_MS: '2000', HEARTBEAT_RECOVER_RATE: '2', HEARTBEAT_RECOVER_BURST: '1', HEARTBEAT_MASS_FAILURE_WINDOW_MS: '4000' }, { opsServer: false }),
    );
    const audit = await readAudit(world);
    try {
      // The agents of the earlier tests are stopped: the ratio is over these 20 alone.
      await sim.statuses(used, 'STOPPED');
      sim.alive.clear();
      const fleet = agents(20);
      for (const id of fleet) sim.alive.add(id);
      await sim.statuses(fleet, 'RUNNING');
      await sleep(2_500);
      const recoversBefore = countCommands(commands, 'RECOVER');
      const silenced = fleet.slice(0, 12);
      for (const id of silenced) sim.alive.delete(id);
      await eventually(() => silenced.every((id) => commandsFor(commands, id, 'HEARTBEAT_MISSED').length === 1), 30_000, '12 MISSED');
      await eventually(async () => (await metric(service, 'agent_manager_heartbeat_mass_failure')) === 1, 10_000, 'mass-failure metric');
      await eventually(() => audit.values.some((e) => e.action === 'heartbeat.mass_failure_detected'), 10_000, 'mass-failure audit event');
      await sleep(3_000);
      expect(countCommands(commands, 'RECOVER')).toBe(recoversBefore);

      // Ten come back: RESUMED each; the guard clears; the two still silent are recovered, one by one.
      const back = silenced.slice(0, 10);
      for (const id of back) sim.alive.add(id);
      await eventually(() => back.every((id) => commandsFor(commands, id, 'HEARTBEAT_RESUMED').length === 1), 30_000, '10 RESUMED');
      await eventually(() => audit.values.some((e) => e.action === 'heartbeat.mass_failure_cleared'), 15_000, 'cleared audit event');
      await eventually(() => silenced.slice(10).every((id) => commandsFor(commands, id, 'RECOVER').length === 1), 15_000, 'the 2 still silent recovered');
      expect(countCommands(commands, 'RECOVER')).toBe(recoversBefore + 2);
      for (const id of back) expect(commandsFor(commands, id, 'RECOVER')).toEqual([]);
      expect(await metric(service, 'agent_manager_heartbeat_mass_failure')).toBe(0);
    } finally {
      await audit.stop();
    }
  });
});
