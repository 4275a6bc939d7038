import { Kafka } from 'kafkajs';
import { startServices } from '../../../../cli/services.ts';
import { stackCredentials } from '../../../../dev/stack/endpoints.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { eventually } from '../../../support/runtime.ts';
import { within, type FleetWorld } from '../../../support/fleet.ts';
import { testKafkaConfig } from '../../../support/stack.ts';
import { agents, commandsFor, createHeartbeatWorld, readAudit, readCommands, startSimulator, TopicReader, type CommandReader, type Simulator } from './world.ts';

// The heartbeat service as its own least-privilege principal (User:heartbeat, with the ACLs the
// bootstrap grants): it reads both topics (and their log ends and committed offsets), writes
// agent-commands, its DLQ and its audit events, and nothing fails authorization.
jest.setTimeout(180_000);

describe('heartbeat service under User:heartbeat', () => {
  let world: FleetWorld;
  let service: ServiceContext;
  let sim: Simulator;
  let commands: CommandReader;

  beforeAll(async () => {
    world = await createHeartbeatWorld('hb-acl', { HEARTBEAT_MASS_FAILURE_MIN_AGENTS: '1', HEARTBEAT_MASS_FAILURE_RATIO: '0.5' });
    service = await within('heartbeat start (User:heartbeat)', 60_000, startServices(['heartbeat'], { ...world.env, ...stackCredentials(process.cwd(), 'heartbeat') }, { opsServer: false }));
    sim = await startSimulator(world);
    commands = await readCommands(world);
  });

  afterAll(async () => {
    await sim?.stop();
    await commands?.stop();
    await service?.shutdown();
    await world?.teardown();
  });

  it('detects, dead-letters and audits with its own rights only', async () => {
    const audit = await readAudit(world);
    const dlq = await TopicReader.start<unknown>(world, `${world.topics['agent-heartbeats']}.dlq`, false);
    try {
      const [silent] = agents(1) as [string];
      sim.alive.add(silent);
      await sim.status(silent, 'RUNNING');
      const producer = new Kafka(testKafkaConfig('hb-acl')).producer();
      await producer.connect();
      await producer.send({ topic: world.topics['agent-heartbeats'], messages: [{ key: 'garbage', value: Buffer.from('garbage') }] });
      await producer.disconnect();
      await eventually(() => dlq.raw.length === 1, 30_000, 'the garbage dead-lettered');
      await new Promise((r) => setTimeout(r, 2_000));
      sim.alive.delete(silent);
      await eventually(() => commandsFor(commands, silent, 'HEARTBEAT_MISSED').length === 1, 30_000, 'MISSED');
      // One agent of one lapsed: the guard trips (minimum 1 here) and audits it.
      await eventually(() => audit.values.some((e) => e.action === 'heartbeat.mass_failure_detected' && e.actor === 'heartbeat'), 30_000, 'audit event');
    } finally {
      await dlq.stop();
      await audit.stop();
    }
  });
});
