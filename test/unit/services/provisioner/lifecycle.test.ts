import {
  AGENT_STATES,
  ALLOWED_INPUTS,
  DEFAULT_RESTART_POLICY,
  INTERNAL_EVENTS,
  LIFECYCLE_COMMANDS,
  nextBackoffMs,
  transition,
  type AgentSnapshot,
  type AgentState,
  type LifecycleInput,
  type LifecycleInputType,
  type RestartPolicy,
  type RetryPolicy,
  type TransitionResult,
} from '../../../../services/provisioner/lifecycle.ts';

const POLICY: RetryPolicy = {
  startTimeoutMs: 5_000,
  maxStartAttempts: 3,
  baseDelayMs: 1_000,
  maxDelayMs: 3_000,
  multiplier: 2,
  stopGraceMs: 10_000,
};

function snap(state: AgentState, extra: Partial<AgentSnapshot> = {}): AgentSnapshot {
  return {
    state,
    reason: 'test',
    restartPolicy: DEFAULT_RESTART_POLICY,
    generation: 1,
    startAttempt: 1,
    awaitingRetry: false,
    restarts: 0,
    afterStop: null,
    ...extra,
  };
}

/** An input of each type, fenced for the given snapshot where it carries a fence. */
function inputFor(type: LifecycleInputType, s: AgentSnapshot | undefined): LifecycleInput {
  const fence = { generation: s?.generation ?? 0, attempt: s?.startAttempt ?? 0 };
  switch (type) {
    case 'START_TIMEOUT':
    case 'RETRY_DUE':
      return { type, ...fence };
    case 'STARTED':
      return { type, ...fence };
    case 'PROCESS_EXITED':
      return { type, exitCode: 1, ...fence };
    case 'DRIVER_FAILED':
      return { type, reason: 'driver broke', ...fence };
    case 'POLICY_DENIED':
      return { type, reason: 'GPU quota exceeded' };
    default:
      return { type };
  }
}

function accepted(r: TransitionResult): Extract<TransitionResult, { ok: true }> {
  if (!r.ok) throw new Error(`expected acceptance, got ${r.rejection.code}: ${r.rejection.reason}`);
  return r;
}

/** Run a sequence from `start`, asserting each step is accepted; returns every result. */
function run(start: AgentSnapshot | undefined, inputs: readonly LifecycleInput[], policy: RetryPolicy = POLICY) {
  let current = start;
  return inputs.map((input) => {
    const r = accepted(transition(current, input, policy));
    current = r.snapshot;
    return r;
  });
}

// ------------------------------------------------------------------------------------------------
// The expected outcome of every (state × input) pair, written independently of the implementation.
// A state name: accepted, state changed or snapshot updated (status + audit emitted).
// '=': accepted as an idempotent no-op. Otherwise the rejection code.

type Outcome = AgentState | '=' | 'INVALID_TRANSITION' | 'TERMINAL_STATE' | 'UNEXPECTED_EVENT' | 'STALE_EVENT' | 'UNKNOWN_AGENT';

const COLUMNS: readonly LifecycleInputType[] = [...LIFECYCLE_COMMANDS, ...INTERNAL_EVENTS];

const I = 'INVALID_TRANSITION';
const T = 'TERMINAL_STATE';
const U = 'UNEXPECTED_EVENT';
const S = 'STALE_EVENT';
const K = 'UNKNOWN_AGENT';

interface Row {
  readonly label: string;
  readonly snapshot: AgentSnapshot | undefined;
  // INSTANTIATE START STOP RESTART DESTROY RECOVER | POLICY_ALLOWED POLICY_DENIED PROVISIONED STARTED
  // STOPPED DESTROYED START_TIMEOUT RETRY_DUE DRIVER_FAILED PROCESS_EXITED HEARTBEAT_MISSED HEARTBEAT_RESUMED
  readonly expected: readonly Outcome[];
}

const ROWS: readonly Row[] = [
  { label: '(no agent)', snapshot: undefined, expected: ['PENDING', K, K, K, K, K, K, K, K, K, K, K, K, K, K, K, K, K] },
  {
    label: 'PENDING',
    snapshot: snap('PENDING', { generation: 0, startAttempt: 0 }),
    expected: ['=', '=', I, '=', 'DESTROYED', '=', 'PROVISIONING', 'REJECTED', U, U, U, U, U, U, 'FAILED', U, U, U],
  },
  {
    label: 'PROVISIONING',
    snapshot: snap('PROVISIONING', { generation: 0, startAttempt: 0 }),
    expected: ['=', '=', I, '=', 'DESTROYING', '=', U, U, 'STARTING', U, U, U, U, U, 'FAILED', U, U, U],
  },
  {
    label: 'STARTING (process launched)',
    snapshot: snap('STARTING'),
    expected: ['=', '=', 'STOPPING', '=', 'STOPPING', '=', U, U, U, 'RUNNING', U, U, 'STARTING', S, 'STARTING', 'STARTING', U, U],
  },
  {
    label: 'STARTING (waiting to retry)',
    snapshot: snap('STARTING', { startAttempt: 2, awaitingRetry: true }),
    expected: ['=', '=', 'STOPPING', '=', 'STOPPING', '=', U, U, U, S, U, U, S, 'STARTING', 'FAILED', S, U, U],
  },
  {
    label: 'RUNNING',
    snapshot: snap('RUNNING'),
    expected: ['=', '=', 'STOPPING', 'STOPPING', 'STOPPING', 'STOPPING', U, U, U, U, U, U, U, U, U, 'STARTING', 'UNHEALTHY', U],
  },
  {
    label: 'UNHEALTHY',
    snapshot: snap('UNHEALTHY'),
    expected: ['=', '=', 'STOPPING', 'STOPPING', 'STOPPING', 'STOPPING', U, U, U, U, U, U, U, U, U, 'STARTING', U, 'RUNNING'],
  },
  {
    label: 'STOPPING (plain stop)',
    snapshot: snap('STOPPING'),
    expected: ['=', 'STOPPING', '=', 'STOPPING', 'STOPPING', '=', U, U, U, U, 'STOPPED', U, U, U, 'FAILED', 'STOPPED', U, U],
  },
  {
    label: 'STOPPING (restart queued)',
    snapshot: snap('STOPPING', { afterStop: 'START' }),
    expected: ['=', '=', 'STOPPING', '=', 'STOPPING', '=', U, U, U, U, 'STARTING', U, U, U, 'FAILED', 'STARTING', U, U],
  },
  {
    label: 'STOPPING (destroy queued)',
    snapshot: snap('STOPPING', { afterStop: 'DESTROY' }),
    expected: ['=', I, I, I, '=', '=', U, U, U, U, 'DESTROYING', U, U, U, 'DESTROYING', 'DESTROYING', U, U],
  },
  {
    label: 'STOPPED',
    snapshot: snap('STOPPED'),
    expected: ['=', 'STARTING', '=', 'STARTING', 'DESTROYING', '=', U, U, U, U, U, U, U, U, U, U, U, U],
  },
  {
    label: 'DESTROYING',
    snapshot: snap('DESTROYING'),
    expected: ['=', I, I, I, '=', '=', U, U, U, U, U, 'DESTROYED', U, U, 'FAILED', U, U, U],
  },
  {
    label: 'DESTROYED',
    snapshot: snap('DESTROYED'),
    expected: ['=', T, T, T, '=', '=', U, U, U, U, U, U, U, U, U, U, U, U],
  },
  {
    label: 'REJECTED',
    snapshot: snap('REJECTED', { generation: 0, startAttempt: 0 }),
    expected: ['=', T, T, T, T, '=', U, U, U, U, U, U, U, U, U, U, U, U],
  },
  {
    label: 'FAILED',
    snapshot: snap('FAILED'),
    expected: ['=', 'PENDING', '=', 'PENDING', 'DESTROYING', '=', U, U, U, U, U, U, U, U, U, U, U, U],
  },
];

describe('lifecycle transition table', () => {
  it('has one row per state (plus sub-states) and one column per input', () => {
    const covered = new Set(ROWS.map((r) => r.snapshot?.state).filter((s) => s !== undefined));
    expect([...covered].sort()).toEqual([...AGENT_STATES].sort());
    expect(COLUMNS).toHaveLength(18);
    for (const row of ROWS) expect(row.expected).toHaveLength(COLUMNS.length);
  });

  const cases = ROWS.flatMap((row) => COLUMNS.map((type, i) => ({ row, type, expected: row.expected[i] as Outcome })));

  it.each(cases.map((c) => [c.row.label, c.type, c.expected, c] as const))('%s + %s → %s', (_label, _type, _expected, c) => {
    const input = inputFor(c.type, c.row.snapshot);
    let result: TransitionResult | undefined;
    expect(() => {
      result = transition(c.row.snapshot, input, POLICY);
    }).not.toThrow();
    const r = result as TransitionResult;
    if (c.expected === '=') {
      const ok = accepted(r);
      expect(ok.noop).toBe(true);
      expect(ok.effects).toEqual([]);
      expect(ok.snapshot).toBe(c.row.snapshot);
      expect(ok.reason).not.toBe('');
    } else if ((AGENT_STATES as readonly string[]).includes(c.expected)) {
      const ok = accepted(r);
      expect(ok.noop).toBe(false);
      expect(ok.state).toBe(c.expected);
      expect(ok.snapshot.state).toBe(c.expected);
      expect(ok.previous).toBe(c.row.snapshot?.state);
      expect(ok.reason).not.toBe('');
      expect(ok.snapshot.reason).toBe(ok.reason);
    } else {
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.rejection.code).toBe(c.expected);
        expect(r.rejection.reason).toMatch(/\S/);
      }
    }
  });

  it('publishes the accepted inputs per state as data, matching the table above', () => {
    for (const row of ROWS) {
      if (row.snapshot === undefined) continue;
      const allowed = new Set(ALLOWED_INPUTS[row.snapshot.state]);
      row.expected.forEach((outcome, i) => {
        const type = COLUMNS[i] as LifecycleInputType;
        // Everything accepted in a (sub-)state is in the state's list; what is listed may still be
        // rejected in one of its sub-states (a stale timer, START while a destroy is queued).
        if (outcome === '=' || (AGENT_STATES as readonly string[]).includes(outcome)) expect(allowed.has(type)).toBe(true);
        if (outcome === U || outcome === T || (outcome === I && !row.label.includes('('))) expect(allowed.has(type)).toBe(false);
      });
    }
  });
});

describe('nextBackoffMs', () => {
  it('grows exponentially from the base and is capped', () => {
    const p: RetryPolicy = { ...POLICY, baseDelayMs: 500, multiplier: 3, maxDelayMs: 10_000 };
    expect([1, 2, 3, 4, 5].map((n) => nextBackoffMs(n, p))).toEqual([500, 1_500, 4_500, 10_000, 10_000]);
  });

  it('treats attempts below 1 or non-numbers as the first, and survives overflow', () => {
    expect(nextBackoffMs(0, POLICY)).toBe(1_000);
    expect(nextBackoffMs(Number.NaN, POLICY)).toBe(1_000);
    expect(nextBackoffMs(5_000, POLICY)).toBe(3_000);
    expect(nextBackoffMs(2.7, POLICY)).toBe(2_000);
  });
});

describe('happy path', () => {
  it('INSTANTIATE → … → RUNNING → STOP → STOPPED → DESTROY → DESTROYED, with its effects', () => {
    const steps = run(undefined, [
      { type: 'INSTANTIATE', restartPolicy: { mode: 'on-failure', maxRestarts: 2 } },
      { type: 'POLICY_ALLOWED' },
      { type: 'PROVISIONED' },
      { type: 'STARTED', generation: 1, attempt: 1 },
      { type: 'STOP', reason: 'kernel asked' },
      { type: 'STOPPED' },
      { type: 'DESTROY' },
      { type: 'DESTROYED' },
    ]);
    expect(steps.map((s) => [s.previous, s.state])).toEqual([
      [undefined, 'PENDING'],
      ['PENDING', 'PROVISIONING'],
      ['PROVISIONING', 'STARTING'],
      ['STARTING', 'RUNNING'],
      ['RUNNING', 'STOPPING'],
      ['STOPPING', 'STOPPED'],
      ['STOPPED', 'DESTROYING'],
      ['DESTROYING', 'DESTROYED'],
    ]);
    expect(steps.map((s) => s.effects)).toEqual([
      [{ type: 'CHECK_POLICY' }],
      [{ type: 'PROVISION' }],
      [
        { type: 'START_PROCESS', generation: 1, attempt: 1 },
        { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation: 1, attempt: 1, delayMs: 5_000 },
      ],
      [{ type: 'CANCEL_TIMERS' }],
      [{ type: 'STOP_PROCESS', graceMs: 10_000 }],
      [],
      [{ type: 'DESTROY_RESOURCES' }],
      [],
    ]);
    expect(steps.every((s) => !s.noop)).toBe(true);
    expect(steps[0]?.snapshot.restartPolicy).toEqual({ mode: 'on-failure', maxRestarts: 2 });
    expect(steps[4]?.reason).toBe('stop requested: kernel asked');
  });

  it('defaults the restart policy when INSTANTIATE carries none', () => {
    const [first] = run(undefined, [{ type: 'INSTANTIATE' }]);
    expect(first?.snapshot).toMatchObject({ state: 'PENDING', restartPolicy: DEFAULT_RESTART_POLICY, generation: 0, restarts: 0 });
  });

  it('a denied policy rejects the agent with the reason, for good', () => {
    const [, denied] = run(undefined, [{ type: 'INSTANTIATE' }, { type: 'POLICY_DENIED', reason: 'registry evil.io is not allowed' }]);
    expect(denied?.state).toBe('REJECTED');
    expect(denied?.effects).toEqual([]);
    expect(denied?.reason).toBe('policy denied: registry evil.io is not allowed');
    const start = transition(denied?.snapshot, { type: 'START' }, POLICY);
    expect(start).toMatchObject({ ok: false, rejection: { code: 'TERMINAL_STATE' } });
  });

  it('DESTROY of a running agent stops it gracefully first', () => {
    const steps = run(snap('RUNNING'), [{ type: 'DESTROY' }, { type: 'STOPPED' }, { type: 'DESTROYED' }]);
    expect(steps.map((s) => s.state)).toEqual(['STOPPING', 'DESTROYING', 'DESTROYED']);
    expect(steps.map((s) => s.effects)).toEqual([[{ type: 'STOP_PROCESS', graceMs: 10_000 }], [{ type: 'DESTROY_RESOURCES' }], []]);
  });
});

describe('start timeout', () => {
  it('retries with exponential backoff up to maxStartAttempts, then FAILED with the reason', () => {
    const s0 = snap('PROVISIONING', { generation: 0, startAttempt: 0 });
    const steps = run(s0, [
      { type: 'PROVISIONED' },
      { type: 'START_TIMEOUT', generation: 1, attempt: 1 },
      { type: 'RETRY_DUE', generation: 1, attempt: 2 },
      { type: 'START_TIMEOUT', generation: 1, attempt: 2 },
      { type: 'RETRY_DUE', generation: 1, attempt: 3 },
      { type: 'START_TIMEOUT', generation: 1, attempt: 3 },
    ]);
    expect(steps.map((s) => s.state)).toEqual(['STARTING', 'STARTING', 'STARTING', 'STARTING', 'STARTING', 'FAILED']);
    expect(steps.map((s) => s.effects)).toEqual([
      [
        { type: 'START_PROCESS', generation: 1, attempt: 1 },
        { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation: 1, attempt: 1, delayMs: 5_000 },
      ],
      [
        { type: 'STOP_PROCESS', graceMs: 0 },
        { type: 'SCHEDULE_RETRY', generation: 1, attempt: 2, delayMs: 1_000 },
      ],
      [
        { type: 'START_PROCESS', generation: 1, attempt: 2 },
        { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation: 1, attempt: 2, delayMs: 5_000 },
      ],
      [
        { type: 'STOP_PROCESS', graceMs: 0 },
        { type: 'SCHEDULE_RETRY', generation: 1, attempt: 3, delayMs: 2_000 },
      ],
      [
        { type: 'START_PROCESS', generation: 1, attempt: 3 },
        { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation: 1, attempt: 3, delayMs: 5_000 },
      ],
      [{ type: 'STOP_PROCESS', graceMs: 0 }],
    ]);
    expect(steps[1]?.reason).toBe('start attempt 1 did not reach RUNNING within 5000 ms; retrying in 1000 ms (attempt 2 of 3)');
    expect(steps[5]?.reason).toBe('start attempt 3 did not reach RUNNING within 5000 ms; gave up after 3 of 3 attempts');
  });

  it('the backoff between attempts is capped by maxDelayMs', () => {
    const p: RetryPolicy = { ...POLICY, maxStartAttempts: 5 };
    const delays: number[] = [];
    let s: AgentSnapshot = snap('STARTING');
    for (let attempt = 1; attempt < 5; attempt += 1) {
      const timedOut = accepted(transition(s, { type: 'START_TIMEOUT', generation: 1, attempt }, p));
      const retry = timedOut.effects.find((e) => e.type === 'SCHEDULE_RETRY');
      if (retry?.type === 'SCHEDULE_RETRY') delays.push(retry.delayMs);
      s = accepted(transition(timedOut.snapshot, { type: 'RETRY_DUE', generation: 1, attempt: attempt + 1 }, p)).snapshot;
    }
    expect(delays).toEqual([1_000, 2_000, 3_000, 3_000]);
  });

  it('fences late and duplicate timers and reports of superseded attempts', () => {
    const [timedOut] = run(snap('STARTING'), [{ type: 'START_TIMEOUT', generation: 1, attempt: 1 }]);
    const waiting = timedOut?.snapshot;
    expect(waiting).toMatchObject({ state: 'STARTING', startAttempt: 2, awaitingRetry: true });
    for (const late of [
      { type: 'START_TIMEOUT', generation: 1, attempt: 1 },
      { type: 'STARTED', generation: 1, attempt: 1 },
      { type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: null, signal: 'SIGKILL' },
      { type: 'RETRY_DUE', generation: 0, attempt: 2 },
    ] as const) {
      expect(transition(waiting, late, POLICY)).toMatchObject({ ok: false, rejection: { code: 'STALE_EVENT' } });
    }
    const [launched] = run(waiting, [{ type: 'RETRY_DUE', generation: 1, attempt: 2 }]);
    // The same delayed job delivered twice must not launch a second process.
    expect(transition(launched?.snapshot, { type: 'RETRY_DUE', generation: 1, attempt: 2 }, POLICY)).toMatchObject({
      ok: false,
      rejection: { code: 'STALE_EVENT' },
    });
    // A start timeout that fires after RUNNING changes nothing.
    const [running] = run(launched?.snapshot, [{ type: 'STARTED', generation: 1, attempt: 2 }]);
    expect(transition(running?.snapshot, { type: 'START_TIMEOUT', generation: 1, attempt: 2 }, POLICY)).toMatchObject({
      ok: false,
      rejection: { code: 'UNEXPECTED_EVENT' },
    });
  });

  it('a process that dies while starting counts as a failed attempt', () => {
    const [r] = run(snap('STARTING'), [{ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: 127 }]);
    expect(r?.state).toBe('STARTING');
    expect(r?.effects).toEqual([{ type: 'CANCEL_TIMERS' }, { type: 'SCHEDULE_RETRY', generation: 1, attempt: 2, delayMs: 1_000 }]);
    expect(r?.reason).toMatch(/^process exited with code 127 during start attempt 1; retrying/);
  });

  it('a non-retryable driver failure while starting fails at once', () => {
    const [r] = run(snap('STARTING'), [{ type: 'DRIVER_FAILED', reason: 'ErrImagePull', retryable: false }]);
    expect(r?.state).toBe('FAILED');
    expect(r?.effects).toEqual([{ type: 'CANCEL_TIMERS' }, { type: 'STOP_PROCESS', graceMs: 0 }]);
    expect(r?.reason).toBe('start attempt 1 failed: ErrImagePull; not retryable');
  });

  it('STOP during start cancels the timers and stops the process', () => {
    const [r] = run(snap('STARTING', { startAttempt: 2, awaitingRetry: true }), [{ type: 'STOP' }]);
    expect(r?.state).toBe('STOPPING');
    expect(r?.snapshot.awaitingRetry).toBe(false);
    expect(r?.effects).toEqual([{ type: 'CANCEL_TIMERS' }, { type: 'STOP_PROCESS', graceMs: 10_000 }]);
  });
});

describe('restart policy', () => {
  const running = (restartPolicy: RestartPolicy, restarts = 0): AgentSnapshot => snap('RUNNING', { restartPolicy, restarts });

  it('RECOVER restarts an unresponsive agent (stop, then start a new generation) until maxRestarts, then FAILED', () => {
    const policy: RestartPolicy = { mode: 'on-failure', maxRestarts: 2 };
    const steps = run(running(policy), [
      { type: 'HEARTBEAT_MISSED' },
      { type: 'RECOVER', reason: 'no heartbeat for 30 s' },
      { type: 'STOPPED' },
      { type: 'STARTED', generation: 2, attempt: 1 },
      { type: 'RECOVER' },
      { type: 'STOPPED' },
      { type: 'STARTED', generation: 3, attempt: 1 },
      { type: 'RECOVER' },
    ]);
    expect(steps.map((s) => s.state)).toEqual(['UNHEALTHY', 'STOPPING', 'STARTING', 'RUNNING', 'STOPPING', 'STARTING', 'RUNNING', 'FAILED']);
    expect(steps[1]?.effects).toEqual([{ type: 'STOP_PROCESS', graceMs: 10_000 }]);
    expect(steps[1]?.reason).toBe('recover requested: no heartbeat for 30 s; restarting (restart 1 of 2)');
    expect(steps[2]?.effects).toEqual([
      { type: 'START_PROCESS', generation: 2, attempt: 1 },
      { type: 'SCHEDULE_TIMEOUT', kind: 'start', generation: 2, attempt: 1, delayMs: 5_000 },
    ]);
    expect(steps[6]?.snapshot.restarts).toBe(2);
    expect(steps[7]?.effects).toEqual([{ type: 'STOP_PROCESS', graceMs: 10_000 }]);
    expect(steps[7]?.reason).toBe('recover requested; restart limit reached (2)');
  });

  it("RECOVER under 'never' marks the agent FAILED and stops what is left of it", () => {
    const [r] = run(snap('UNHEALTHY', { restartPolicy: { mode: 'never', maxRestarts: 5 } }), [{ type: 'RECOVER' }]);
    expect(r?.state).toBe('FAILED');
    expect(r?.effects).toEqual([{ type: 'STOP_PROCESS', graceMs: 10_000 }]);
    expect(r?.reason).toBe('recover requested; restart policy never');
  });

  it('a process killed from outside is restarted after a backoff under on-failure', () => {
    const [r] = run(running({ mode: 'on-failure', maxRestarts: 3 }), [{ type: 'PROCESS_EXITED', exitCode: null, signal: 'SIGKILL' }]);
    expect(r?.state).toBe('STARTING');
    expect(r?.snapshot).toMatchObject({ generation: 2, startAttempt: 1, awaitingRetry: true, restarts: 1 });
    expect(r?.effects).toEqual([{ type: 'SCHEDULE_RETRY', generation: 2, attempt: 1, delayMs: 1_000 }]);
    expect(r?.reason).toBe('process killed by SIGKILL; restarting in 1000 ms (restart 1 of 3)');
    const [launched] = run(r?.snapshot, [{ type: 'RETRY_DUE', generation: 2, attempt: 1 }]);
    expect(launched?.effects[0]).toEqual({ type: 'START_PROCESS', generation: 2, attempt: 1 });
  });

  it('restart backoff grows with the restarts used', () => {
    const [r] = run(running({ mode: 'always', maxRestarts: 5 }, 2), [{ type: 'PROCESS_EXITED', exitCode: 1 }]);
    expect(r?.effects).toEqual([{ type: 'SCHEDULE_RETRY', generation: 2, attempt: 1, delayMs: 3_000 }]);
  });

  it("a killed process is FAILED under 'never', and under any policy once maxRestarts is used up", () => {
    const [never] = run(running({ mode: 'never', maxRestarts: 3 }), [{ type: 'PROCESS_EXITED', exitCode: null, signal: 'SIGKILL' }]);
    expect(never?.state).toBe('FAILED');
    expect(never?.reason).toBe('process killed by SIGKILL; restart policy never');
    const [spent] = run(running({ mode: 'always', maxRestarts: 3 }, 3), [{ type: 'PROCESS_EXITED', exitCode: 137 }]);
    expect(spent?.state).toBe('FAILED');
    expect(spent?.reason).toBe('process exited with code 137; restart limit reached (3)');
  });

  it("a clean exit stops the agent under 'on-failure' and 'never' but restarts it under 'always'", () => {
    const clean: LifecycleInput = { type: 'PROCESS_EXITED', exitCode: 0 };
    expect(run(running({ mode: 'on-failure', maxRestarts: 3 }), [clean])[0]?.state).toBe('STOPPED');
    expect(run(running({ mode: 'never', maxRestarts: 3 }), [clean])[0]?.state).toBe('STOPPED');
    expect(run(running({ mode: 'always', maxRestarts: 3 }), [clean])[0]?.state).toBe('STARTING');
  });

  it('an exit report for an earlier generation is stale', () => {
    const r = transition(snap('RUNNING', { generation: 4 }), { type: 'PROCESS_EXITED', generation: 3, attempt: 1, exitCode: 1 }, POLICY);
    expect(r).toMatchObject({ ok: false, rejection: { code: 'STALE_EVENT' } });
  });

  it('an operator RESTART resets the restart count; STOP cancels a queued restart', () => {
    const [restart, stopped] = run(running({ mode: 'on-failure', maxRestarts: 3 }, 3), [{ type: 'RESTART' }, { type: 'STOP' }]);
    expect(restart?.snapshot).toMatchObject({ state: 'STOPPING', afterStop: 'START', restarts: 0 });
    expect(stopped?.snapshot).toMatchObject({ state: 'STOPPING', afterStop: null });
    expect(stopped?.effects).toEqual([]);
    const [done] = run(stopped?.snapshot, [{ type: 'STOPPED' }]);
    expect(done?.state).toBe('STOPPED');
  });

  it('FAILED can be retried from scratch (policy check again) or destroyed', () => {
    const failed = snap('FAILED', { restarts: 3, generation: 4, startAttempt: 3 });
    const [retry] = run(failed, [{ type: 'RESTART' }]);
    expect(retry?.state).toBe('PENDING');
    expect(retry?.effects).toEqual([{ type: 'CHECK_POLICY' }]);
    expect(retry?.snapshot).toMatchObject({ restarts: 0, startAttempt: 0, generation: 4 });
    const steps = run(retry?.snapshot, [{ type: 'POLICY_ALLOWED' }, { type: 'PROVISIONED' }]);
    expect(steps[1]?.effects[0]).toEqual({ type: 'START_PROCESS', generation: 5, attempt: 1 });
    expect(run(failed, [{ type: 'DESTROY' }])[0]?.effects).toEqual([{ type: 'DESTROY_RESOURCES' }]);
  });
});

describe('rejections never throw', () => {
  it('returns a reasoned rejection for malformed inputs and snapshots', () => {
    const bad: Array<[AgentSnapshot | undefined, unknown, string]> = [
      [undefined, { type: 'EXPLODE' }, 'INVALID_INPUT'],
      [undefined, null, 'INVALID_INPUT'],
      [undefined, undefined, 'INVALID_INPUT'],
      [undefined, { type: 'INSTANTIATE', restartPolicy: { mode: 'sometimes', maxRestarts: 1 } }, 'INVALID_INPUT'],
      [undefined, { type: 'INSTANTIATE', restartPolicy: { mode: 'always', maxRestarts: -1 } }, 'INVALID_INPUT'],
      [undefined, { type: 'INSTANTIATE', restartPolicy: null }, 'INVALID_INPUT'],
      [snap('STARTING'), { type: 'START_TIMEOUT' }, 'INVALID_INPUT'],
      [snap('STARTING'), { type: 'STARTED', attempt: 'one' }, 'INVALID_INPUT'],
      [{ ...snap('RUNNING'), state: 'ZOMBIE' as AgentState }, { type: 'STOP' }, 'INVALID_STATE'],
    ];
    for (const [s, input, code] of bad) {
      let r: TransitionResult | undefined;
      expect(() => {
        r = transition(s, input as LifecycleInput, POLICY);
      }).not.toThrow();
      expect(r).toMatchObject({ ok: false, rejection: { code } });
      if (r !== undefined && !r.ok) expect(r.rejection.reason).toMatch(/\S/);
    }
  });

  it('reports a failure inside the machine as INTERNAL_ERROR instead of throwing', () => {
    const hostile = new Proxy(snap('RUNNING'), {
      get(target, key, receiver) {
        if (key === 'restartPolicy') throw new Error('boom');
        return Reflect.get(target, key, receiver) as unknown;
      },
    });
    const r = transition(hostile, { type: 'RECOVER' }, POLICY);
    expect(r).toEqual({ ok: false, rejection: { code: 'INTERNAL_ERROR', reason: 'lifecycle failed on RECOVER: boom' } });
  });

  it('survives long random sequences: every result is accepted or a reasoned rejection, and states stay valid', () => {
    // Deterministic LCG so a failure is reproducible.
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed % n;
    };
    const modes: RestartPolicy['mode'][] = ['always', 'on-failure', 'never'];
    let accepted = 0;
    for (let walk = 0; walk < 200; walk += 1) {
      let current: AgentSnapshot | undefined;
      for (let step = 0; step < 60; step += 1) {
        const type = COLUMNS[rand(COLUMNS.length)] as LifecycleInputType;
        let input = inputFor(type, current);
        if (type === 'INSTANTIATE') input = { type, restartPolicy: { mode: modes[rand(3)] ?? 'never', maxRestarts: rand(3) } };
        if (type === 'PROCESS_EXITED') input = { type, exitCode: rand(2) === 0 ? 0 : null, signal: 'SIGTERM' };
        const r = transition(current, input, POLICY);
        if (r.ok) {
          accepted += 1;
          expect(AGENT_STATES).toContain(r.state);
          expect(r.reason).toMatch(/\S/);
          if (r.noop) expect(r.effects).toEqual([]);
          if (r.state !== 'STOPPING') expect(r.snapshot.afterStop).toBeNull();
          if (r.state !== 'STARTING') expect(r.snapshot.awaitingRetry).toBe(false);
          expect(r.snapshot.restarts).toBeLessThanOrEqual(r.snapshot.restartPolicy.maxRestarts);
          current = r.snapshot;
        } else {
          expect(r.rejection.reason).toMatch(/\S/);
        }
      }
    }
    expect(accepted).toBeGreaterThan(1_000);
  });
});
