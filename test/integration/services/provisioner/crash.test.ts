import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentRequest } from '../../../../lib/contracts/types.ts';
import type { ServiceContext } from '../../../../lib/service/context.ts';
import { startServices } from '../../../../cli/services.ts';
import { eventually } from '../../../support/runtime.ts';
import { waitForExit } from '../../../support/processes.ts';
import { connectKernel, createFleetWorld, watchStatus, within, type FleetWorld, type KernelClient, type StatusWatcher } from '../../../support/fleet.ts';

jest.setTimeout(240_000);

/** Live processes whose environment names the agent: exactly one per running agent, none leaked. */
function agentProcesses(agentId: string): number {
  let count = 0;
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (readFileSync(join('/proc', pid, 'environ'), 'latin1').includes(`AGENT_ID=${agentId}\0`)) count += 1;
    } catch {
      // gone meanwhile
    }
  }
  return count;
}

function startProvisionerProcess(env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'run', 'provisioner'], {
    env: { ...process.env, ...env, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Logs are kept and shown only when the process ends unexpectedly.
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.once('exit', (code, signal) => {
    if (signal === null && code !== 0) console.error(`provisioner exited ${code}:\n${output}`);
  });
  return child;
}

describe('kill -9 of the provisioner mid-way', () => {
  let world: FleetWorld;
  let ingest: ServiceContext;
  let kernel: KernelClient;
  let status: StatusWatcher;
  let provisioner: ChildProcess | undefined;

  beforeAll(async () => {
    world = await createFleetWorld('crash', { START_TIMEOUT_MS: '20000' });
    ingest = await within('ingest start', 60_000, startServices(['ingest'], world.env, { opsServer: false }));
    kernel = await connectKernel(world);
    status = await watchStatus(world);
  });

  afterAll(async () => {
    provisioner?.kill('SIGKILL');
    await status?.stop();
    await kernel?.disconnect();
    await ingest?.shutdown();
    await world?.teardown();
  });

  // Killed at the first RUNNING (agents adopted) or at the first STARTING (killed inside starts:
  // an agent launched but not yet ready exits with its supervisor, and is started again).
  it.each([['RUNNING'], ['STARTING']] as const)('killed at the first %s, it converges after a restart: every agent RUNNING in one process, then destroyed', async (killAt) => {
    const run = randomUUID().slice(0, 8);
    const requests: AgentRequest[] = Array.from({ length: 12 }, (_, i) => ({
      requestId: randomUUID(),
      idempotencyKey: `crash-${run}-${i}`,
      action: 'INSTANTIATE',
      agentId: null,
      spec: { template: null, image: 'registry.internal/agents/echo:1.0', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } },
      division: 'platform',
      region: 'local',
      labels: {},
      requestedBy: 'kernel',
      createdAt: new Date(),
    }));
    const agentOf = (requestId: string) => [...status.states.values()].flat().find((s) => s.requestId === requestId)?.agentId;

    provisioner = startProvisionerProcess({ ...world.env, INSTANCE_ID: 'provisioner-a' });
    await kernel.send(requests);
    await eventually(() => requests.every((r) => agentOf(r.requestId) !== undefined), 60_000, 'requests accepted');
    const agents = requests.map((r) => agentOf(r.requestId) ?? '');
    // With batches the others may all be there too by then; what is tested is the restart: each
    // agent adopted or replaced, one process each.
    await eventually(() => agents.some((id) => status.lastState(id) === killAt), 90_000, `a first agent ${killAt}`);
    provisioner.kill('SIGKILL');
    expect((await waitForExit(provisioner)).signal).toBe('SIGKILL');

    provisioner = startProvisionerProcess({ ...world.env, INSTANCE_ID: 'provisioner-b' });
    await eventually(() => agents.every((id) => status.lastState(id) === 'RUNNING'), 120_000, 'every agent RUNNING after the restart');
    for (const id of agents) expect({ id, processes: agentProcesses(id) }).toEqual({ id, processes: 1 });

    await kernel.send(agents.map((agentId, i) => ({ ...requests[i]!, requestId: randomUUID(), idempotencyKey: `crash-${run}-destroy-${i}`, action: 'DESTROY' as const, agentId, spec: null })));
    await eventually(() => agents.every((id) => status.lastState(id) === 'DESTROYED'), 90_000, 'every agent DESTROYED');
    for (const id of agents) expect(agentProcesses(id)).toBe(0);
    provisioner.kill('SIGTERM');
    expect((await waitForExit(provisioner)).code).toBe(0);
  });
});
