import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { startServices } from '../../../../cli/services.ts';
import { agentActionRequest, instantiateRequest } from '../../../../dev/kernel/client.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { eventually } from '../../../support/runtime.ts';
import { connectKernel, watchStatus, within, type FleetWorld, type KernelClient, type StatusWatcher } from '../../../support/fleet.ts';
import { createHeartbeatWorld } from './world.ts';

// The whole fleet with real agent processes (local driver): a hung agent is detected by the
// heartbeat service and restarted by the provisioner; intended stops never lapse.
jest.setTimeout(300_000);

describe('heartbeat service with real agents (ingest + provisioner + heartbeat)', () => {
  let world: FleetWorld;
  let fleet: ServiceContext;
  let kernel: KernelClient;
  let status: StatusWatcher;

  const agentOf = (requestId: string) => [...status.states.values()].flat().find((s) => s.requestId === requestId)?.agentId;
  const states = (agentId: string) => (status.states.get(agentId) ?? []).filter((s) => s.version > 0).map((s) => s.state);
  const pidOf = (agentId: string) => (JSON.parse(readFileSync(join(world.stateDir, agentId, 'state.json'), 'utf8')) as { pid: number }).pid;
  const lapses = async () => (await fleet.metrics.heartbeatLapses.get()).values.reduce((sum, v) => sum + v.value, 0);

  beforeAll(async () => {
    // A wide miss window (10 s): fifty agent processes booting on a loaded 2-core machine can be
    // starved for seconds, and a starved agent is not what these tests are about.
    world = await createHeartbeatWorld('hb-fleet', { AGENT_HEARTBEAT_INTERVAL_MS: '1000', HEARTBEAT_MIN_TTL_MS: '10000', STOP_GRACE_MS: '1000' });
    fleet = await within('fleet start', 60_000, startServices(['ingest', 'provisioner', 'heartbeat'], world.env, { opsServer: false }));
    kernel = await connectKernel(world);
    status = await watchStatus(world);
  });

  afterAll(async () => {
    await status?.stop();
    await kernel?.disconnect();
    await fleet?.shutdown();
    await world?.teardown();
  });

  it('a hung agent (SIGSTOP) is marked UNHEALTHY once, restarted, and its replacement reaches RUNNING', async () => {
    const request = instantiateRequest(`hb-hung-${randomUUID().slice(0, 8)}`, { labels: { test: 'heartbeat' } });
    await kernel.send([request]);
    await eventually(() => agentOf(request.requestId) !== undefined, 60_000, 'request accepted');
    const agentId = agentOf(request.requestId) ?? '';
    await eventually(() => status.lastState(agentId) === 'RUNNING', 120_000, 'agent RUNNING');
    await sleep(2_500); // a few heartbeats tracked, past the grace
    const hungPid = pidOf(agentId);

    process.kill(hungPid, 'SIGSTOP');
    try {
      await eventually(() => states(agentId).includes('UNHEALTHY'), 60_000, 'UNHEALTHY');
      await eventually(() => states(agentId).lastIndexOf('RUNNING') > states(agentId).indexOf('UNHEALTHY'), 120_000, 'RUNNING again after the restart');
    } finally {
      try {
        process.kill(hungPid, 'SIGKILL');
      } catch {
        // already killed by the restart
      }
    }
    expect(pidOf(agentId)).not.toBe(hungPid);
    const after = states(agentId).slice(states(agentId).indexOf('RUNNING'));
    expect(after).toEqual(['RUNNING', 'UNHEALTHY', 'STOPPING', 'STARTING', 'RUNNING']);
    // The replacement heartbeats: no second lapse.
    await sleep(11_000);
    expect(states(agentId).filter((s) => s === 'UNHEALTHY')).toHaveLength(1);
    expect(status.lastState(agentId)).toBe('RUNNING');
  });

  it('intended STOP and DESTROY of 50 agents: zero lapses', async () => {
    const run = randomUUID().slice(0, 8);
    const requests = Array.from({ length: 50 }, (_, i) => instantiateRequest(`hb-stop-${run}-${i}`, { labels: { test: 'heartbeat' } }));
    await kernel.send(requests);
    await eventually(() => requests.every((r) => agentOf(r.requestId) !== undefined), 180_000, 'every request accepted');
    const agents = requests.map((r) => agentOf(r.requestId) ?? '');
    await eventually(() => agents.every((id) => status.lastState(id) === 'RUNNING'), 200_000, '50 agents RUNNING');
    await sleep(2_500);
    const before = await lapses();

    await kernel.send(agents.map((id, i) => agentActionRequest(id, 'STOP', `hb-stop-${run}-stop-${i}`)));
    await eventually(() => agents.every((id) => status.lastState(id) === 'STOPPED'), 120_000, '50 agents STOPPED');
    await kernel.send(agents.map((id, i) => agentActionRequest(id, 'DESTROY', `hb-stop-${run}-destroy-${i}`)));
    await eventually(() => agents.every((id) => status.lastState(id) === 'DESTROYED'), 120_000, '50 agents DESTROYED');
    await sleep(11_000); // a miss window after the last stop

    expect((await lapses()) - before).toBe(0);
    for (const id of agents) expect(states(id)).not.toContain('UNHEALTHY');
  });
});
