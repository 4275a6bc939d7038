import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import type { AgentRequest } from '../../../../lib/contracts/types.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { startServices } from '../../../../cli/services.ts';
import { eventually } from '../../../support/runtime.ts';
import { connectKernel, createFleetWorld, watchStatus, within, type FleetWorld, type KernelClient, type StatusWatcher } from '../../../support/fleet.ts';
import { agentActionRequest, instantiateRequest } from '../../../../dev/kernel/client.ts';

// The whole provisioning path on the real stack: Kernel → agent-requests → ingest → agent-commands
// → provisioner → real agent processes (local driver) that heartbeat, with status read back from
// agent-status.
jest.setTimeout(240_000);

const instantiate = (key: string, overrides: Partial<AgentRequest> = {}, gpuCount = 0): AgentRequest => instantiateRequest(key, { labels: { test: 'fleet' }, gpuCount, overrides });
const action = agentActionRequest;

describe('provisioning path end to end (ingest + provisioner + local agents)', () => {
  let world: FleetWorld;
  let fleet: ServiceContext;
  let kernel: KernelClient;
  let status: StatusWatcher;
  let db: pg.Client;

  const agentOf = (requestId: string) => [...status.states.values()].flat().find((s) => s.requestId === requestId)?.agentId;
  const agentCount = async () => Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM agents')).rows[0]?.n ?? 0);

  beforeAll(async () => {
    world = await createFleetWorld('fleet');
    fleet = await within('fleet start', 60_000, startServices(['ingest', 'provisioner'], world.env, { opsServer: false }));
    kernel = await connectKernel(world);
    status = await watchStatus(world);
    db = new pg.Client({ connectionString: world.env.DATABASE_URL, options: `-c search_path=${world.schema}` });
    await db.connect();
  });

  afterAll(async () => {
    await status?.stop();
    await kernel?.disconnect();
    await fleet?.shutdown();
    await db?.end();
    await world?.teardown();
  });

  it('runs 50 agents through instantiate → RUNNING → stop → destroy, status events in order', async () => {
    const run = randomUUID().slice(0, 8);
    const requests = Array.from({ length: 50 }, (_, i) => instantiate(`fleet-${run}-${i}`));
    await kernel.send(requests);
    await eventually(() => requests.every((r) => agentOf(r.requestId) !== undefined), 60_000, 'every request accepted');
    const agents = requests.map((r) => agentOf(r.requestId) ?? '');
    await eventually(() => agents.every((id) => status.lastState(id) === 'RUNNING'), 150_000, '50 agents RUNNING');

    // Real processes: each RUNNING agent has a live pid in the driver's folder.
    const { rows } = await db.query<{ id: string; state: string }>('SELECT id, state FROM agents WHERE id = ANY($1::uuid[])', [agents]);
    expect(rows.filter((r) => r.state === 'RUNNING')).toHaveLength(50);

    await kernel.send(agents.map((id, i) => action(id, 'STOP', `fleet-${run}-stop-${i}`)));
    await eventually(() => agents.every((id) => status.lastState(id) === 'STOPPED'), 90_000, '50 agents STOPPED');
    await kernel.send(agents.map((id, i) => action(id, 'DESTROY', `fleet-${run}-destroy-${i}`)));
    await eventually(() => agents.every((id) => status.lastState(id) === 'DESTROYED'), 90_000, '50 agents DESTROYED');

    for (const id of agents) {
      // Ingest's acknowledgements repeat the current state and version; the provisioner's transitions
      // carry strictly increasing versions and arrive in that order on the agent's partition.
      const byVersion = new Map<number, string>();
      const order: number[] = [];
      for (const event of status.states.get(id) ?? []) {
        if (event.version === 0) continue;
        const seen = byVersion.get(event.version);
        if (seen === undefined) {
          byVersion.set(event.version, event.state);
          order.push(event.version);
        } else expect(seen).toBe(event.state);
      }
      expect(order).toEqual([...order].sort((a, b) => a - b));
      expect(order.map((v) => byVersion.get(v))).toEqual(['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'DESTROYING', 'DESTROYED']);
    }
  });

  it('a duplicated request yields one agent', async () => {
    const key = `dup-${randomUUID()}`;
    const first = instantiate(key);
    await kernel.send([first, { ...first, requestId: randomUUID() }, first]);
    await eventually(() => agentOf(first.requestId) !== undefined, 30_000, 'request accepted');
    const agentId = agentOf(first.requestId) ?? '';
    await eventually(() => status.lastState(agentId) === 'RUNNING', 60_000, 'agent RUNNING');
    const { rows } = await db.query('SELECT id FROM agents WHERE labels->>$1 = $2 AND id = $3', ['test', 'fleet', agentId]);
    expect(rows).toHaveLength(1);
    const requests = await db.query('SELECT request_id FROM requests WHERE idempotency_key = $1', [key]);
    expect(requests.rows).toHaveLength(1);
    await kernel.send([action(agentId, 'DESTROY', `${key}-destroy`)]);
    await eventually(() => status.lastState(agentId) === 'DESTROYED', 60_000, 'agent DESTROYED');
  });

  it('restarts an agent whose process is killed from outside (restart policy on-failure)', async () => {
    const request = instantiate(`killed-${randomUUID()}`);
    await kernel.send([request]);
    await eventually(() => agentOf(request.requestId) !== undefined, 30_000, 'request accepted');
    const agentId = agentOf(request.requestId) ?? '';
    await eventually(() => status.lastState(agentId) === 'RUNNING', 60_000, 'agent RUNNING');
    const { pid } = JSON.parse(readFileSync(join(world.stateDir, agentId, 'state.json'), 'utf8')) as { pid: number };
    process.kill(pid, 'SIGKILL');
    await eventually(() => status.history(agentId).filter((s) => s === 'RUNNING').length === 2, 60_000, 'agent RUNNING again');
    const { pid: restarted } = JSON.parse(readFileSync(join(world.stateDir, agentId, 'state.json'), 'utf8')) as { pid: number };
    expect(restarted).not.toBe(pid);
    expect(status.history(agentId).slice(-2)).toEqual(['STARTING', 'RUNNING']);
    expect(status.last(agentId)?.reason).toMatch(/running/);
    await kernel.send([action(agentId, 'DESTROY', `${request.idempotencyKey}-destroy`)]);
    await eventually(() => status.lastState(agentId) === 'DESTROYED', 60_000, 'agent DESTROYED');
  });

  it('a policy denial yields REJECTED with the reason', async () => {
    const request = instantiate(`deny-${randomUUID()}`, { division: 'support' }, 2);
    await kernel.send([request]);
    await eventually(() => agentOf(request.requestId) !== undefined, 30_000, 'request accepted');
    const agentId = agentOf(request.requestId) ?? '';
    await eventually(() => status.lastState(agentId) === 'REJECTED', 30_000, 'agent REJECTED');
    expect(status.last(agentId)?.reason).toMatch(/gpu/i);
  });

  it('an invalid request is rejected with the reason and creates no agent', async () => {
    const before = await agentCount();
    const request = instantiate(`invalid-${randomUUID()}`, {}, 99);
    await kernel.send([request]);
    await eventually(() => agentOf(request.requestId) !== undefined, 30_000, 'rejection status');
    const agentId = agentOf(request.requestId) ?? '';
    expect(status.lastState(agentId)).toBe('REJECTED');
    expect(status.last(agentId)?.reason).toMatch(/gpu/i);
    expect(await agentCount()).toBe(before);
  });

  it('safe mode holds commands and releases them all when lifted', async () => {
    const { setSafeMode } = await import('../../../../lib/control/safe-mode.ts');
    const pool = fleet.pool;
    if (!pool) throw new Error('fleet has no pool');
    const audit = world.topics['audit-events'];
    await setSafeMode(pool, { enabled: true, reason: 'test', actor: 'test', codec: world.codec, auditTopic: audit });
    await new Promise((r) => setTimeout(r, 1_500));
    const before = await agentCount();
    const run = randomUUID().slice(0, 8);
    const requests = Array.from({ length: 5 }, (_, i) => instantiate(`safe-${run}-${i}`));
    await kernel.send(requests);
    await eventually(() => requests.every((r) => agentOf(r.requestId) !== undefined), 30_000, 'requests accepted by ingest');
    await new Promise((r) => setTimeout(r, 3_000));
    expect(await agentCount()).toBe(before);

    await setSafeMode(pool, { enabled: false, reason: 'test done', actor: 'test', codec: world.codec, auditTopic: audit });
    const agents = requests.map((r) => agentOf(r.requestId) ?? '');
    await eventually(() => agents.every((id) => status.lastState(id) === 'RUNNING'), 90_000, 'held agents RUNNING');
    // Each toggle is audited in the same transaction as the switch (published through the outbox).
    const toggles = await db.query<{ published: boolean }>(`SELECT published_at IS NOT NULL AS published FROM outbox WHERE topic = $1 AND key = 'safe-mode'`, [audit]);
    expect(toggles.rows).toHaveLength(2);
    await kernel.send(agents.map((id, i) => action(id, 'DESTROY', `safe-${run}-destroy-${i}`)));
    await eventually(() => agents.every((id) => status.lastState(id) === 'DESTROYED'), 60_000, 'held agents DESTROYED');
  });
});
