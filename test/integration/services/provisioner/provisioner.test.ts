import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { Kafka, type Producer } from 'kafkajs';
import type { AgentCommand } from '../../../../lib/contracts/types.ts';
import { createServiceContext, loadServiceConfig, type ServiceContext } from '../../../../lib/service/context.ts';
import { loadProvisionerConfig, startProvisioner } from '../../../../services/provisioner/main.ts';
import { eventually } from '../../../support/runtime.ts';
import { testEnv, testKafkaConfig } from '../../../support/stack.ts';
import { createFleetWorld, watchStatus, type FleetWorld, type StatusWatcher } from '../../../support/fleet.ts';

jest.setTimeout(120_000);

// The provisioner alone, fed agent-commands directly, with the simulated driver: the lifecycle's
// I/O (transactions, outbox, redelivery, rejections, delayed jobs) without agent processes.
async function startWorld(name: string, extra: Record<string, string>) {
  const world = await createFleetWorld(name, { PROVISIONER_DRIVER: 'simulated', ...extra });
  const ctx = await createServiceContext({ service: 'provisioner', config: loadServiceConfig(world.env), database: true, redis: true, opsServer: false });
  await startProvisioner(ctx, loadProvisionerConfig(world.env));
  const producer = new Kafka(testKafkaConfig('test-commands')).producer({ idempotent: true });
  await producer.connect();
  const status = await watchStatus(world);
  return { world, ctx, producer, status };
}

function command(agentId: string, type: AgentCommand['command'], commandId = randomUUID()): AgentCommand {
  return {
    commandId,
    agentId,
    command: type,
    requestId: randomUUID(),
    spec:
      type === 'INSTANTIATE'
        ? { template: null, image: 'registry.internal/agents/echo:1.0', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } }
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

async function send(world: FleetWorld, producer: Producer, commands: readonly AgentCommand[]) {
  const topic = world.topics['agent-commands'];
  await producer.send({ topic, acks: -1, messages: await Promise.all(commands.map(async (c) => ({ key: c.agentId, value: await world.codec.encode(`${topic}-value`, c) }))) });
}

describe('provisioner with the simulated driver', () => {
  let world: FleetWorld;
  let ctx: ServiceContext;
  let producer: Producer;
  let status: StatusWatcher;

  beforeAll(async () => {
    ({ world, ctx, producer, status } = await startWorld('prov', {}));
  });

  afterAll(async () => {
    await status?.stop();
    await producer?.disconnect();
    await ctx?.shutdown();
    await world?.teardown();
  });

  it('applies a redelivered command once, and answers an impossible one with the reason', async () => {
    const agentId = randomUUID();
    const instantiate = command(agentId, 'INSTANTIATE');
    await send(world, producer, [instantiate, instantiate]);
    await eventually(() => status.lastState(agentId) === 'RUNNING', 30_000, 'RUNNING');
    await new Promise((r) => setTimeout(r, 500));
    expect(status.history(agentId)).toEqual(['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING']);
    const transitions = await ctx.metrics.registry.getSingleMetricAsString('agent_manager_lifecycle_transitions_total');
    expect(transitions).toMatch(/from="STARTING",to="RUNNING"[^}]*\} [1-9]/);
    expect(await ctx.metrics.registry.getSingleMetricAsString('agent_manager_policy_decisions_total')).toMatch(/allow="true",source="local"[^}]*\} [1-9]/);

    const unknown = randomUUID();
    await send(world, producer, [command(unknown, 'STOP')]);
    await eventually(() => status.lastState(unknown) !== undefined, 30_000, 'rejection');
    expect(status.lastState(unknown)).toBe('REJECTED');
    expect(status.last(unknown)?.reason).toContain('UNKNOWN_AGENT');

    await send(world, producer, [command(agentId, 'DESTROY')]);
    await eventually(() => status.lastState(agentId) === 'DESTROYED', 30_000, 'DESTROYED');
    await send(world, producer, [command(agentId, 'START')]);
    await eventually(() => (status.last(agentId)?.reason ?? '').includes('TERMINAL_STATE'), 30_000, 'terminal rejection');
    expect(status.lastState(agentId)).toBe('DESTROYED');
  });
});

describe('provisioner start deadlines (BullMQ delayed jobs)', () => {
  let world: FleetWorld;
  let ctx: ServiceContext;
  let producer: Producer;
  let status: StatusWatcher;

  beforeAll(async () => {
    ({ world, ctx, producer, status } = await startWorld('prov-timeout', {
      SIMULATED_START_DELAY_MS: '600000',
      START_TIMEOUT_MS: '700',
      MAX_START_ATTEMPTS: '3',
      RETRY_BASE_DELAY_MS: '200',
    }));
  });

  afterAll(async () => {
    await status?.stop();
    await producer?.disconnect();
    await ctx?.shutdown();
    await world?.teardown();
  });

  it('retries a start that does not reach RUNNING in time with backoff, then FAILED with the reason', async () => {
    const agentId = randomUUID();
    await send(world, producer, [command(agentId, 'INSTANTIATE')]);
    await eventually(() => status.lastState(agentId) === 'FAILED', 30_000, 'FAILED');
    const reasons = (status.states.get(agentId) ?? []).map((s) => s.reason ?? '');
    expect(reasons.filter((r) => /retrying in \d+ ms/.test(r))).toHaveLength(2);
    expect(status.last(agentId)?.reason).toMatch(/gave up after 3 of 3 attempts/);
  });
});

describe('provisioner while the policy engine is down (an outage, not a denial)', () => {
  let world: FleetWorld;
  let ctx: ServiceContext;
  let producer: Producer;
  let status: StatusWatcher;
  // A stand-in for SentinelNet's address: refuses while `down`, else forwards to the stack's real OPA.
  const engine = { down: true };
  let gateway: Server;

  beforeAll(async () => {
    const opa = testEnv().OPA_URL ?? '';
    gateway = createServer((request, response) => {
      if (engine.down) {
        request.socket.destroy();
        return;
      }
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        void fetch(`${opa}${request.url ?? ''}`, { method: request.method ?? 'POST', headers: { 'content-type': 'application/json' }, body: Buffer.concat(chunks) })
          .then(async (answer) => response.writeHead(answer.status, { 'content-type': 'application/json' }).end(await answer.text()))
          .catch(() => request.socket.destroy());
      });
    });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    const address = gateway.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    ({ world, ctx, producer, status } = await startWorld('prov-policy-down', { SENTINELNET_URL: `http://127.0.0.1:${port}`, SENTINELNET_TIMEOUT_MS: '500' }));
  });

  afterAll(async () => {
    await status?.stop();
    await producer?.disconnect();
    await ctx?.shutdown();
    await world?.teardown();
    await new Promise<void>((resolve) => (gateway ? gateway.close(() => resolve()) : resolve()));
  });

  it('keeps the agent PENDING (nothing provisioned, nothing rejected) and provisions it once the engine answers', async () => {
    const agentId = randomUUID();
    await send(world, producer, [command(agentId, 'INSTANTIATE')]);
    await eventually(() => status.lastState(agentId) === 'PENDING', 30_000, 'PENDING');
    // Several reconciler rounds (RECONCILE_STUCK_AFTER_MS is 3 s in the fleet world) with the engine down.
    await new Promise((r) => setTimeout(r, 5_000));
    expect(status.lastState(agentId)).toBe('PENDING');
    expect(status.history(agentId)).not.toContain('REJECTED');
    engine.down = false;
    await eventually(() => status.lastState(agentId) === 'RUNNING', 60_000, 'RUNNING once the engine is back');
    expect(status.history(agentId)).toEqual(['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING']);
    expect(await ctx.metrics.registry.getSingleMetricAsString('agent_manager_policy_decisions_total')).toMatch(/allow="true",source="remote"[^}]*\} [1-9]/);
  });
});
