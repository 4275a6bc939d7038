import { randomUUID } from 'node:crypto';
import { Kafka, type Producer } from 'kafkajs';
import type { AgentCommand } from '../../../../lib/contracts/types.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { createServiceContext, loadServiceConfig, type ServiceContext } from '../../../../lib/service/context.ts';
import { loadProvisionerConfig, startProvisioner } from '../../../../services/provisioner/main.ts';
import { eventually, readRecords } from '../../../support/runtime.ts';
import { testKafkaConfig, uniqueName } from '../../../support/stack.ts';
import { createFleetWorld, watchStatus, type FleetWorld, type StatusWatcher } from '../../../support/fleet.ts';

jest.setTimeout(120_000);

function instantiate(agentId: string, division = 'platform'): AgentCommand {
  return {
    commandId: randomUUID(),
    agentId,
    command: 'INSTANTIATE',
    requestId: randomUUID(),
    spec: { template: null, image: 'registry.internal/agents/echo:1.0', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } },
    division,
    region: null,
    labels: {},
    issuedBy: 'kernel',
    issuedAt: new Date(),
    reason: null,
    attempt: 1,
  };
}

// The provisioner applies a Kafka batch of commands together: a command its database refuses (a
// NUL byte, which Postgres text cannot hold) must not take the batch down. Retried with its batch
// (the others are duplicates then), then dead-lettered alone.
describe('provisioner batch: one failing command', () => {
  let world: FleetWorld;
  let ctx: ServiceContext;
  let producer: Producer;
  let status: StatusWatcher;

  beforeAll(async () => {
    world = await createFleetWorld('prov-batch-dlq', {
      PROVISIONER_DRIVER: 'simulated',
      TOPIC_PARTITIONS: '1',
      WORKER_MAX_ATTEMPTS: '2',
      WORKER_RETRY_BASE_DELAY_MS: '100',
      WORKER_RETRY_MAX_DELAY_MS: '200',
      WORKER_UNAVAILABLE_MAX_DELAY_MS: '200',
    });
    ctx = await createServiceContext({ service: 'provisioner', config: loadServiceConfig(world.env), database: true, redis: true, opsServer: false });
    producer = new Kafka(testKafkaConfig('test-commands')).producer({ idempotent: true });
    await producer.connect();
    status = await watchStatus(world);
  });

  afterAll(async () => {
    await status?.stop();
    await producer?.disconnect();
    await ctx?.shutdown();
    await world?.teardown();
  });

  it('is dead-lettered alone; the commands around it, for the same partition, are applied once', async () => {
    const good = [randomUUID(), randomUUID()];
    const bad = randomUUID();
    const commands = [instantiate(good[0] ?? ''), instantiate(bad, 'plat\u0000form'), instantiate(good[1] ?? '')];
    const topic = world.topics['agent-commands'];
    // Produced before the provisioner starts: one partition, one batch.
    await producer.send({ topic, acks: -1, messages: await Promise.all(commands.map(async (c) => ({ key: c.agentId, value: await world.codec.encode(`${topic}-value`, c) }))) });
    await startProvisioner(ctx, loadProvisionerConfig(world.env));

    for (const id of good) await eventually(() => status.lastState(id) === 'RUNNING', 60_000, `${id} RUNNING`);
    const [dead] = await readRecords(`${topic}.dlq`, 1, uniqueName('dlq-reader'), 60_000);
    expect(dead?.key?.toString()).toBe(bad);
    expect(dead?.headers[DLQ_HEADERS.sourceOffset]).toBe('1');
    expect(dead?.headers[DLQ_HEADERS.attempts]).toBe('2');
    expect(status.lastState(bad)).toBeUndefined();
    for (const id of good) expect(status.history(id)).toEqual(['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING']);
  });
});
