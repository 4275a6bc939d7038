import { driverEventInput, instanceOf, policyResourceSpec } from '../../../../services/provisioner/apply.ts';
import { transition, type AgentSnapshot } from '../../../../services/provisioner/lifecycle.ts';
import { commandInput, validateAgentCommand } from '../../../../services/provisioner/handler.ts';
import { timerInput, timerJobId } from '../../../../services/provisioner/timers.ts';

describe('provisioner mappings', () => {
  it('turns driver reports into fenced lifecycle inputs', () => {
    expect(driverEventInput({ type: 'STARTED', generation: 3, attempt: 2, instanceId: 'h:1' })).toEqual({ type: 'STARTED', generation: 3, attempt: 2, instanceId: 'h:1', reason: 'instance h:1 is up' });
    expect(driverEventInput({ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: 1, signal: null })).toEqual({ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: 1, signal: null });
    expect(driverEventInput({ type: 'DRIVER_FAILED', generation: 1, attempt: 1, reason: 'no', retryable: false })).toMatchObject({ type: 'DRIVER_FAILED', retryable: false, reason: 'no' });
    expect(driverEventInput({ type: 'STOPPED', exitCode: 0, signal: null })).toEqual({ type: 'STOPPED' });
  });

  it('keeps the instance a STARTED reported and names it on RUNNING and UNHEALTHY statuses only', () => {
    const starting: AgentSnapshot = { state: 'STARTING', reason: '', restartPolicy: { mode: 'on-failure', maxRestarts: 3 }, generation: 1, startAttempt: 1, awaitingRetry: false, restarts: 0, afterStop: null };
    const running = transition(starting, driverEventInput({ type: 'STARTED', generation: 1, attempt: 1, instanceId: 'h:1' }));
    expect(running).toMatchObject({ ok: true, state: 'RUNNING', snapshot: { instanceId: 'h:1' } });
    if (!running.ok) return;
    const unhealthy = transition(running.snapshot, { type: 'HEARTBEAT_MISSED' });
    if (!unhealthy.ok) throw new Error('HEARTBEAT_MISSED refused');
    const resumed = transition(unhealthy.snapshot, { type: 'HEARTBEAT_RESUMED' });
    if (!resumed.ok) throw new Error('HEARTBEAT_RESUMED refused');
    expect([instanceOf('RUNNING', running.snapshot), instanceOf('UNHEALTHY', unhealthy.snapshot), instanceOf('RUNNING', resumed.snapshot)]).toEqual(['h:1', 'h:1', 'h:1']);
    const stopping = transition(resumed.snapshot, { type: 'STOP' });
    if (!stopping.ok) throw new Error('STOP refused');
    expect(instanceOf('STOPPING', stopping.snapshot)).toBeNull();
    // A STARTED without an instance (a reconciler that cannot tell) names none.
    const unknown = transition(starting, { type: 'STARTED', generation: 1, attempt: 1 });
    expect(unknown.ok && instanceOf('RUNNING', unknown.snapshot)).toBeNull();
    expect(instanceOf('RUNNING', undefined)).toBeNull();
  });

  it('maps timers to deterministic job ids and fenced inputs', () => {
    const job = { agentId: 'a1', kind: 'start-timeout' as const, generation: 2, attempt: 3 };
    expect(timerJobId(job)).toBe('start-timeout-a1-2-3');
    expect(timerJobId(job)).not.toContain(':');
    expect(timerInput(job)).toEqual({ type: 'START_TIMEOUT', generation: 2, attempt: 3 });
    expect(timerInput({ ...job, kind: 'retry' })).toEqual({ type: 'RETRY_DUE', generation: 2, attempt: 3 });
  });

  it('builds the policy input from the spec; a template runs the internal registry image', () => {
    const resources = { cpuMillicores: 1500, memoryMiB: 2048, gpuCount: 1, gpuType: 'A100' };
    expect(policyResourceSpec({ template: 'support', image: null, command: [], environment: [], resources })).toEqual({
      image: 'registry.internal/agent-templates/support:latest',
      gpuCount: 1,
      gpuType: 'A100',
      cpu: 1.5,
      memoryMb: 2048,
    });
  });

  it('turns a command into its lifecycle input with the reason', () => {
    const base = { commandId: 'c', agentId: 'a', requestId: null, spec: null, division: null, region: null, labels: {}, issuedBy: 'k', issuedAt: new Date(0), attempt: 1 };
    expect(commandInput({ ...base, command: 'STOP', reason: 'maintenance' })).toEqual({ type: 'STOP', reason: 'maintenance' });
    expect(commandInput({ ...base, command: 'INSTANTIATE', reason: null })).toEqual({ type: 'INSTANTIATE' });
  });

  it('sends commands with malformed ids or an INSTANTIATE without spec to the DLQ (permanent errors)', () => {
    const good = { commandId: '00000000-0000-4000-8000-000000000001', agentId: '00000000-0000-4000-8000-000000000002', requestId: null, command: 'STOP', spec: null };
    expect(validateAgentCommand(good)).toBe(good);
    let thrown: unknown;
    try {
      validateAgentCommand({ ...good, agentId: 'agent-1' });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toMatchObject({ code: 'VALIDATION_FAILED', retryable: false });
    expect(() => validateAgentCommand({ ...good, commandId: '' })).toThrow(/commandId/);
    expect(() => validateAgentCommand({ ...good, requestId: 'x' })).toThrow(/requestId/);
    expect(() => validateAgentCommand({ ...good, command: 'INSTANTIATE' })).toThrow(/spec/);
  });
});
