import { DEFAULT_RESTART_POLICY, DEFAULT_RETRY_POLICY, type AgentSnapshot } from '../../../../services/provisioner/lifecycle.ts';
import { repairFor } from '../../../../services/provisioner/reconciler.ts';
import type { AgentRecord } from '../../../../services/provisioner/store.ts';
import type { ObservedAgent } from '../../../../services/provisioner/drivers/types.ts';

function agent(patch: Partial<AgentSnapshot>): AgentRecord {
  const snapshot: AgentSnapshot = { state: 'RUNNING', reason: '', restartPolicy: DEFAULT_RESTART_POLICY, generation: 2, startAttempt: 1, awaitingRetry: false, restarts: 0, afterStop: null, ...patch };
  return {
    id: '00000000-0000-4000-8000-000000000001',
    snapshot,
    spec: { template: null, image: 'registry.internal/a:1', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 64, gpuCount: 0, gpuType: null } },
    division: 'platform',
    region: null,
    labels: {},
    version: 5,
    updatedAt: new Date(0),
  };
}

const running: ObservedAgent = { agentId: 'a', provisioned: true, running: true, ready: true, fence: { generation: 2, attempt: 1 }, instanceId: 'host:1' };
const gone: ObservedAgent = { agentId: 'a', provisioned: true, running: false, ready: false, fence: null, instanceId: null };
const fresh = { ageMs: 100, stuckAfterMs: 10_000, retryPolicy: DEFAULT_RETRY_POLICY };
const stale = { ...fresh, ageMs: 60_000 };

describe('reconciler repairs', () => {
  it('reports a RUNNING or UNHEALTHY agent whose process is gone as exited, with the current fence', () => {
    for (const state of ['RUNNING', 'UNHEALTHY'] as const) {
      expect(repairFor(agent({ state }), gone, fresh)).toMatchObject({ kind: 'input', input: { type: 'PROCESS_EXITED', generation: 2, attempt: 1, exitCode: null } });
      expect(repairFor(agent({ state }), running, fresh)).toBeUndefined();
    }
  });

  it('delivers a lost start report only for a stuck STARTING agent running with the same fence', () => {
    expect(repairFor(agent({ state: 'STARTING' }), running, stale)).toMatchObject({ kind: 'input', input: { type: 'STARTED', generation: 2, attempt: 1 } });
    expect(repairFor(agent({ state: 'STARTING' }), running, fresh)).toBeUndefined();
    expect(repairFor(agent({ state: 'STARTING' }), { ...running, fence: { generation: 1, attempt: 1 } }, stale)).toBeUndefined();
    expect(repairFor(agent({ state: 'STARTING', awaitingRetry: true }), running, stale)).toBeUndefined();
    expect(repairFor(agent({ state: 'STARTING' }), gone, stale)).toBeUndefined();
    // Alive but not ready yet (still booting): its own report (or the start timeout) decides, not the reconciler.
    expect(repairFor(agent({ state: 'STARTING' }), { ...running, ready: false }, stale)).toBeUndefined();
  });

  it('delivers a lost start deadline or retry timer late, with the current fence', () => {
    const late = { ...fresh, ageMs: DEFAULT_RETRY_POLICY.startTimeoutMs + fresh.stuckAfterMs };
    expect(repairFor(agent({ state: 'STARTING' }), gone, late)).toMatchObject({ kind: 'input', input: { type: 'START_TIMEOUT', generation: 2, attempt: 1 } });
    expect(repairFor(agent({ state: 'STARTING' }), { ...running, ready: false }, late)).toMatchObject({ kind: 'input', input: { type: 'START_TIMEOUT' } });
    const lateRetry = { ...fresh, ageMs: DEFAULT_RETRY_POLICY.maxDelayMs + fresh.stuckAfterMs };
    expect(repairFor(agent({ state: 'STARTING', awaitingRetry: true, startAttempt: 2 }), gone, lateRetry)).toMatchObject({ kind: 'input', input: { type: 'RETRY_DUE', generation: 2, attempt: 2 } });
    // Before the timers' own deadline plus the margin, the timers are trusted.
    expect(repairFor(agent({ state: 'STARTING', awaitingRetry: true }), gone, { ...lateRetry, ageMs: lateRetry.ageMs - 1 })).toBeUndefined();
  });

  it('drives a stuck transitional state again and leaves a fresh one alone', () => {
    expect(repairFor(agent({ state: 'PENDING' }), gone, stale)).toMatchObject({ kind: 'redrive', effects: [{ type: 'CHECK_POLICY' }] });
    expect(repairFor(agent({ state: 'PROVISIONING' }), gone, stale)).toMatchObject({ kind: 'redrive', effects: [{ type: 'PROVISION' }] });
    expect(repairFor(agent({ state: 'STOPPING' }), running, stale)).toMatchObject({ kind: 'redrive', effects: [{ type: 'STOP_PROCESS' }] });
    expect(repairFor(agent({ state: 'DESTROYING' }), gone, stale)).toMatchObject({ kind: 'redrive', effects: [{ type: 'DESTROY_RESOURCES' }] });
    for (const state of ['PENDING', 'PROVISIONING', 'STOPPING', 'DESTROYING'] as const) expect(repairFor(agent({ state }), gone, fresh)).toBeUndefined();
  });

  it('stops a process that runs although its agent is STOPPED or FAILED', () => {
    expect(repairFor(agent({ state: 'STOPPED' }), running, fresh)).toMatchObject({ kind: 'stop' });
    expect(repairFor(agent({ state: 'FAILED' }), running, fresh)).toMatchObject({ kind: 'stop' });
    expect(repairFor(agent({ state: 'STOPPED' }), gone, fresh)).toBeUndefined();
  });
});
