/**
 * The Kubernetes Lease elector's decisions against a HAND-WRITTEN FAKE of the three
 * CoordinationV1Api calls it uses (`FakeLeaseApi` below): the cases a real API server cannot be made
 * to produce on demand (candidates racing for the same resourceVersion, errors injected in order,
 * a Lease written by an unknown holder, a restart of the same identity, terms refused by
 * `recordTerm`). The fake keeps one Lease with a resourceVersion like the API server: create of an
 * existing Lease is 409, a replace carrying a stale resourceVersion is 409, a read of a missing
 * Lease is 404. Creation, renewal, release and failover (on stop and on a partition) run against the
 * stack's real kube-apiserver in test/integration/lib/leader/kubernetes-lease.test.ts.
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
