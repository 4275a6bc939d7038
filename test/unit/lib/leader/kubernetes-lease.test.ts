/**
 * The Kubernetes Lease elector against a HAND-WRITTEN FAKE of the three CoordinationV1Api calls it
 * uses (`FakeLeaseApi` below); no cluster runs here. The fake keeps one Lease with a
 * resourceVersion like the API server: create of an existing Lease is 409, a replace carrying a
 * stale resourceVersion is 409, a read of a missing Lease is 404. Each candidate talks to it through
 * its own `client()`, which a test can cut off to simulate a partitioned member.
 */
import { isAppError } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { createKubernetesLease, MicroTime, type LeaseApi, type LeaseObject } from '../../../../lib/leader/kubernetes-lease.ts';
import type { LeaderElector, LeadershipState } from '../../../../lib/leader/types.ts';

function apiError(code: number, message: string): Error {
  return Object.assign(new Error(`HTTP-Code: ${code}`), { code, body: JSON.stringify({ kind: 'Status', code, message }) });
}

class FakeLeaseApi {
  lease: LeaseObject | null = null;
  version = 0;
  writes: LeaseObject[] = [];

  /** Sets the stored Lease directly (another writer), with a new resourceVersion. */
  put(spec: LeaseObject['spec']): void {
    this.version += 1;
    this.lease = { metadata: { name: 'reconciler', namespace: 'am', resourceVersion: String(this.version) }, spec: { ...spec } };
  }

  client(options: { cutOff?: () => boolean; failures?: Error[] } = {}): LeaseApi {
    const gate = () => {
      if (options.cutOff?.()) throw Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } });
      const failure = options.failures?.shift();
      if (failure) throw failure;
    };
    return {
      readNamespacedLease: async ({ name, namespace }) => {
        gate();
        if (this.lease === null || name !== 'reconciler' || namespace !== 'am') throw apiError(404, 'leases.coordination.k8s.io "reconciler" not found');
        return structuredClone(this.lease);
      },
      createNamespacedLease: async ({ body }) => {
        gate();
        if (this.lease !== null) throw apiError(409, 'leases.coordination.k8s.io "reconciler" already exists');
        this.version += 1;
        this.lease = { ...structuredClone(body), metadata: { ...body.metadata, resourceVersion: String(this.version) } };
        this.writes.push(JSON.parse(JSON.stringify(body)) as LeaseObject);
        return structuredClone(this.lease);
      },
      replaceNamespacedLease: async ({ body }) => {
        gate();
        if (this.lease === null) throw apiError(404, 'not found');
        if (body.metadata?.resourceVersion !== this.lease.metadata?.resourceVersion) {
          throw apiError(409, 'Operation cannot be fulfilled on leases.coordination.k8s.io "reconciler": the object has been modified');
        }
        this.version += 1;
        this.lease = { ...structuredClone(body), metadata: { ...body.metadata, resourceVersion: String(this.version) } };
        this.writes.push(JSON.parse(JSON.stringify(body)) as LeaseObject);
        return structuredClone(this.lease);
      },
    };
  }
}

const TIMING = { leaseDurationMs: 1_000, renewIntervalMs: 100 };

async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('Kubernetes Lease leader election (fake CoordinationV1Api, no cluster)', () => {
  let fake: FakeLeaseApi;
  let electors: LeaderElector[];
  /** Every leadership change of every candidate, with its time. */
  let changes: Array<{ identity: string; at: number } & LeadershipState>;

  function elector(identity: string, api: LeaseApi = fake.client()): LeaderElector {
    const created = createKubernetesLease({ api, namespace: 'am', name: 'reconciler', identity, logger: createLogger('test', 'silent'), timing: TIMING });
    created.onChange((state) => changes.push({ identity, at: Date.now(), ...state }));
    electors.push(created);
    return created;
  }

  /** True if two candidates were ever leaders at the same time. */
  function overlapped(): boolean {
    const leading = new Set<string>();
    for (const change of changes) {
      if (change.leader) leading.add(change.identity);
      else leading.delete(change.identity);
      if (leading.size > 1) return true;
    }
    return false;
  }

  beforeEach(() => {
    fake = new FakeLeaseApi();
    electors = [];
    changes = [];
  });

  afterEach(async () => {
    for (const e of electors) await e.stop();
  });

  it('creates the Lease when missing and leads with fencing token 1; times are MicroTime', async () => {
    const a = elector('pod-a');
    expect(a.identity).toBe('pod-a');
    expect(a.state()).toEqual({ leader: false, fencingToken: null });
    a.start();
    await until(() => a.state().leader, 'leadership');
    expect(a.state()).toEqual({ leader: true, fencingToken: 1 });
    const spec = fake.writes[0]?.spec as unknown as Record<string, unknown>;
    expect(spec).toEqual({
      holderIdentity: 'pod-a',
      leaseDurationSeconds: 1,
      acquireTime: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/) as string,
      renewTime: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/) as string,
      leaseTransitions: 1,
    });
    expect(fake.writes[0]).toMatchObject({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: 'reconciler', namespace: 'am' } });
    expect(JSON.stringify(new MicroTime(Date.UTC(2025, 0, 2, 3, 4, 5, 678)))).toBe('"2025-01-02T03:04:05.678000Z"');
  });

  it('renews with the read resourceVersion: renewTime moves, the term and its token stay', async () => {
    const a = elector('pod-a');
    a.start();
    await until(() => fake.writes.length >= 4, 'three renewals');
    const [first, ...renewals] = fake.writes;
    for (const renewal of renewals) {
      expect(renewal.spec?.holderIdentity).toBe('pod-a');
      expect(renewal.spec?.leaseTransitions).toBe(1);
      expect(renewal.spec?.acquireTime).toEqual(first?.spec?.acquireTime);
    }
    expect(String(renewals.at(-1)?.spec?.renewTime) > String(first?.spec?.renewTime)).toBe(true);
    expect(changes).toEqual([expect.objectContaining({ identity: 'pod-a', leader: true, fencingToken: 1 })]);
  });

  it('a second candidate waits while the Lease is renewed; stop() releases it and the successor takes over at once with the next token', async () => {
    const a = elector('pod-a');
    const b = elector('pod-b');
    a.start();
    await until(() => a.state().leader, 'a leads');
    b.start();
    await new Promise((r) => setTimeout(r, 1_500));
    expect(b.state().leader).toBe(false);
    expect(a.state()).toEqual({ leader: true, fencingToken: 1 });

    const stoppedAt = Date.now();
    await a.stop();
    expect(a.state()).toEqual({ leader: false, fencingToken: null });
    expect(fake.lease?.spec?.holderIdentity).toBe('');
    await until(() => b.state().leader, 'b leads');
    expect(Date.now() - stoppedAt).toBeLessThan(TIMING.leaseDurationMs);
    expect(b.state()).toEqual({ leader: true, fencingToken: 2 });
    expect(fake.lease?.spec).toMatchObject({ holderIdentity: 'pod-b', leaseTransitions: 2 });
    expect(overlapped()).toBe(false);
  });

  it('a partitioned leader steps down before its Lease expires; the other takes over after expiry with the next token', async () => {
    let cut = false;
    const a = elector('pod-a', fake.client({ cutOff: () => cut }));
    const b = elector('pod-b');
    a.start();
    await until(() => a.state().leader, 'a leads');
    b.start();
    await new Promise((r) => setTimeout(r, 300));
    cut = true;
    await until(() => b.state().leader, 'b takes over', 5_000);
    const aDown = changes.find((c) => c.identity === 'pod-a' && !c.leader);
    const bUp = changes.find((c) => c.identity === 'pod-b' && c.leader);
    expect(aDown).toBeDefined();
    expect(bUp?.fencingToken).toBe(2);
    expect((aDown?.at ?? Infinity) < (bUp?.at ?? 0)).toBe(true);
    expect(overlapped()).toBe(false);

    // Reconnected, the old leader sees a live holder and stays a follower.
    cut = false;
    await new Promise((r) => setTimeout(r, 400));
    expect(a.state().leader).toBe(false);
    expect(b.state()).toEqual({ leader: true, fencingToken: 2 });
  });

  it('candidates racing for a free Lease: optimistic concurrency lets exactly one win', async () => {
    fake.put({ holderIdentity: '', leaseDurationSeconds: 1, leaseTransitions: 7 });
    const all = ['pod-a', 'pod-b', 'pod-c', 'pod-d'].map((id) => elector(id));
    for (const e of all) e.start();
    await until(() => all.some((e) => e.state().leader), 'a leader');
    await new Promise((r) => setTimeout(r, 500));
    expect(all.filter((e) => e.state().leader)).toHaveLength(1);
    expect(all.find((e) => e.state().leader)?.state().fencingToken).toBe(8);
    expect(overlapped()).toBe(false);
  });

  it('the same identity after a restart begins a new term (token + 1)', async () => {
    fake.put({ holderIdentity: 'pod-a', leaseDurationSeconds: 15, leaseTransitions: 3, renewTime: new MicroTime() });
    const a = elector('pod-a');
    a.start();
    await until(() => a.state().leader, 'a leads');
    expect(a.state().fencingToken).toBe(4);
  });

  it('steps down at once when another holder shows up in the Lease', async () => {
    const a = elector('pod-a');
    a.start();
    await until(() => a.state().leader, 'a leads');
    fake.put({ holderIdentity: 'intruder', leaseDurationSeconds: 15, leaseTransitions: 9 });
    await until(() => !a.state().leader, 'a steps down', 1_000);
  });

  it('API errors never escape: a 403 keeps it a follower, and it leads once the API answers', async () => {
    const failures = [apiError(403, 'forbidden'), apiError(403, 'forbidden'), apiError(500, 'etcd')];
    const a = elector('pod-a', fake.client({ failures }));
    a.start();
    await until(() => a.state().leader, 'a leads');
    expect(failures).toEqual([]);
    expect(a.state().fencingToken).toBe(1);
  });

  it('records each new term where side effects check it before leading; a term not recorded does not lead', async () => {
    const recorded: Array<{ lease: string; token: number }> = [];
    let accept = false;
    const a = createKubernetesLease({
      api: fake.client(),
      namespace: 'am',
      name: 'reconciler',
      identity: 'pod-a',
      logger: createLogger('test', 'silent'),
      timing: TIMING,
      fenceLease: 'provisioner-reconciler',
      recordTerm: async (fence) => {
        recorded.push(fence);
        return accept;
      },
    });
    electors.push(a);
    a.start();
    await until(() => recorded.length >= 2, 'two terms offered');
    // Refused (a newer term is recorded): never leads, and each round begins another term.
    expect(a.state().leader).toBe(false);
    expect(a.fence()).toBeNull();
    expect(recorded[1]?.token).toBeGreaterThan(recorded[0]?.token ?? 0);
    accept = true;
    await until(() => a.state().leader, 'a leads once its term is recorded');
    expect(a.fence()).toEqual({ lease: 'provisioner-reconciler', token: a.state().fencingToken });
    expect(recorded.at(-1)).toEqual(a.fence());
    // Renewals keep the term: nothing more to record.
    const count = recorded.length;
    await new Promise((r) => setTimeout(r, TIMING.renewIntervalMs * 3));
    expect(recorded).toHaveLength(count);
  });

  it('refuses a renew interval that is not below the lease duration', () => {
    let caught: unknown;
    try {
      createKubernetesLease({ api: fake.client(), namespace: 'am', name: 'x', identity: 'a', logger: createLogger('test', 'silent'), timing: { leaseDurationMs: 100, renewIntervalMs: 100 } });
    } catch (error) {
      caught = error;
    }
    expect(isAppError(caught) && caught.code).toBe('CONFIG_INVALID');
  });
});
