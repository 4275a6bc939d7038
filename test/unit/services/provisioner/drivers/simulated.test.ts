import { isAppError } from '../../../../../lib/errors.ts';
import { createLogger } from '../../../../../lib/logger.ts';
import { createSimulatedDriver, type SimulatedDriver } from '../../../../../services/provisioner/drivers/simulated.ts';
import type { AgentWorkload, DriverEvent } from '../../../../../services/provisioner/drivers/types.ts';

const workload = (agentId: string): AgentWorkload => ({
  agentId,
  spec: { template: 'echo', image: null, command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } },
  division: 'test',
  region: null,
  labels: {},
});

const tick = () => new Promise((r) => setImmediate(r));

describe('simulated allocator driver', () => {
  let events: Array<[string, DriverEvent]>;
  let driver: SimulatedDriver;

  beforeEach(() => {
    events = [];
    driver = createSimulatedDriver({ onEvent: (agentId, event) => events.push([agentId, event]), logger: createLogger('test', 'silent') });
  });

  afterEach(async () => {
    await driver.close();
  });

  it('provisions, starts on the next tick (not inside the call), observes and lists', async () => {
    await driver.provision(workload('a'));
    expect(await driver.observe('a')).toEqual({ agentId: 'a', provisioned: true, running: false, ready: false, fence: null, instanceId: null });
    await driver.start(workload('a'), { generation: 1, attempt: 1 });
    expect(events).toEqual([]);
    await tick();
    expect(events).toEqual([['a', { type: 'STARTED', generation: 1, attempt: 1, instanceId: 'simulated-1' }]]);
    expect(await driver.observe('a')).toEqual({ agentId: 'a', provisioned: true, running: true, ready: true, fence: { generation: 1, attempt: 1 }, instanceId: 'simulated-1' });
    expect(await driver.list()).toEqual(['a']);
    expect(await driver.observe('nope')).toEqual({ agentId: 'nope', provisioned: false, running: false, ready: false, fence: null, instanceId: null });
  });

  it('is idempotent for the same fence, replaces an older one and ignores a stale one', async () => {
    await driver.start(workload('a'), { generation: 1, attempt: 1 });
    await driver.start(workload('a'), { generation: 1, attempt: 1 });
    await tick();
    expect(events).toHaveLength(1);
    await driver.start(workload('a'), { generation: 1, attempt: 2 });
    await tick();
    expect(events[1]).toEqual(['a', { type: 'STARTED', generation: 1, attempt: 2, instanceId: 'simulated-2' }]);
    await driver.start(workload('a'), { generation: 1, attempt: 1 });
    await tick();
    expect(events).toHaveLength(2);
    expect((await driver.observe('a')).fence).toEqual({ generation: 1, attempt: 2 });
  });

  it('stop reports STOPPED (also when nothing runs) and cancels a start not reported yet', async () => {
    await driver.start(workload('a'), { generation: 1, attempt: 1 });
    await driver.stop('a', 1000);
    await tick();
    await tick();
    expect(events).toEqual([['a', { type: 'STOPPED', exitCode: 0, signal: null }]]);
    expect((await driver.observe('a')).running).toBe(false);
    await driver.stop('ghost', 0);
    await tick();
    expect(events[1]).toEqual(['ghost', { type: 'STOPPED', exitCode: null, signal: null }]);
  });

  it('crash reports PROCESS_EXITED with the fence; destroy forgets the agent', async () => {
    await driver.start(workload('a'), { generation: 3, attempt: 2 });
    await tick();
    driver.crash('a', 137, 'SIGKILL');
    await tick();
    expect(events[1]).toEqual(['a', { type: 'PROCESS_EXITED', generation: 3, attempt: 2, exitCode: 137, signal: 'SIGKILL' }]);
    await driver.destroy('a');
    await driver.destroy('a');
    expect(await driver.list()).toEqual([]);
    expect((await driver.observe('a')).provisioned).toBe(false);
  });

  it('honours start and stop delays', async () => {
    const slow = createSimulatedDriver({ onEvent: (agentId, event) => events.push([agentId, event]), logger: createLogger('test', 'silent'), startDelayMs: 30 });
    await slow.start(workload('b'), { generation: 1, attempt: 1 });
    await tick();
    expect(events).toEqual([]);
    await new Promise((r) => setTimeout(r, 60));
    expect(events.map(([, e]) => e.type)).toEqual(['STARTED']);
    await slow.close();
  });

  it('reports nothing after close and refuses calls', async () => {
    await driver.start(workload('a'), { generation: 1, attempt: 1 });
    await driver.close();
    await tick();
    expect(events).toEqual([]);
    const error: unknown = await driver.provision(workload('a')).catch((e: unknown) => e);
    expect(isAppError(error) && error.code).toBe('DRIVER_CLOSED');
  });
});
