/**
 * The Kubernetes Lease elector against the stack's REAL API server (`stack up --with kube`): the
 * Lease it creates and replaces is validated and versioned by kube-apiserver itself (MicroTime
 * fields, resourceVersion conflicts), failover happens between two electors, and a real RBAC
 * refusal is reported with the server's reason and message. The electors build their client the
 * production way (`createKubernetesLeaseApi`, KUBECONFIG = the stack's), except where a test cuts
 * one member off (a partition) or acts as a ServiceAccount without rights.
 */
import { Writable } from 'node:stream';
import { createLogger } from '../../../../lib/logger.ts';
import { createKubernetesLease, createKubernetesLeaseApi, type LeaseApi } from '../../../../lib/leader/kubernetes-lease.ts';
import type { LeaderElector, LeadershipState } from '../../../../lib/leader/types.ts';
import { createTestNamespace, kubeAdmin, kubeconfigPath, type KubeAdmin, type TestNamespace } from '../../../support/kube.ts';
import { eventually } from '../../../support/runtime.ts';

const TIMING = { leaseDurationMs: 3_000, renewIntervalMs: 500 };

let admin: KubeAdmin;
let ns: TestNamespace;
let electors: LeaderElector[];
let changes: Array<{ identity: string; at: number } & LeadershipState>;
let leaseCount = 0;

beforeAll(async () => {
  process.env.KUBECONFIG = kubeconfigPath();
  admin = await kubeAdmin();
  ns = await createTestNamespace('it-kube-lease');
});

afterAll(async () => {
  await ns.delete();
});

beforeEach(() => {
  electors = [];
  changes = [];
});

afterEach(async () => {
  for (const e of electors) await e.stop();
});

const nextLease = () => `reconciler-${++leaseCount}`;

function elector(name: string, identity: string, options: { api?: LeaseApi; logger?: ReturnType<typeof createLogger> } = {}): LeaderElector {
  const created = createKubernetesLease({
    namespace: ns.name,
    name,
    identity,
    logger: options.logger ?? createLogger('test', 'silent'),
    timing: TIMING,
    ...(options.api ? { api: options.api } : {}),
  });
  created.onChange((state) => changes.push({ identity, at: Date.now(), ...state }));
  electors.push(created);
  return created;
}

const readLease = (name: string) => admin.coordination.readNamespacedLease({ name, namespace: ns.name });

/** At no moment two leaders: replays the leadership changes in order. */
function neverTwoLeaders(): void {
  const leading = new Set<string>();
  for (const change of [...changes].sort((a, b) => a.at - b.at)) {
    if (change.leader) leading.add(change.identity);
    else leading.delete(change.identity);
    expect(leading.size).toBeLessThanOrEqual(1);
  }
}

describe('Kubernetes Lease elector against a real API server', () => {
  it('creates the Lease (token 1), renews it with the read resourceVersion; the server stores the MicroTimes', async () => {
    const name = nextLease();
    const a = elector(name, 'pod-a');
    a.start();
    await eventually(() => a.state().leader, 10_000, 'pod-a leads');
    expect(a.state().fencingToken).toBe(1);
    const first = await readLease(name);
    expect(first.spec).toMatchObject({ holderIdentity: 'pod-a', leaseDurationSeconds: 3, leaseTransitions: 1 });
    await eventually(async () => (await readLease(name)).metadata?.resourceVersion !== first.metadata?.resourceVersion, 5_000, 'a renewal');
    const renewed = await readLease(name);
    expect(renewed.spec?.leaseTransitions).toBe(1);
    expect(new Date(renewed.spec?.renewTime ?? 0).getTime()).toBeGreaterThan(new Date(first.spec?.renewTime ?? 0).getTime());
    expect(a.state()).toEqual({ leader: true, fencingToken: 1 });
  });

  it('failover on stop: the leader releases the Lease and the other elector takes over at once with the next token', async () => {
    const name = nextLease();
    const a = elector(name, 'pod-a');
    a.start();
    await eventually(() => a.state().leader, 10_000, 'pod-a leads');
    const b = elector(name, 'pod-b');
    b.start();
    await new Promise((r) => setTimeout(r, TIMING.renewIntervalMs * 3));
    expect(b.state().leader).toBe(false);

    const stoppedAt = Date.now();
    await a.stop();
    expect((await readLease(name)).spec?.holderIdentity).toBe('');
    await eventually(() => b.state().leader, 10_000, 'pod-b leads');
    expect(Date.now() - stoppedAt).toBeLessThan(TIMING.leaseDurationMs);
    expect(b.state().fencingToken).toBe(2);
    expect((await readLease(name)).spec).toMatchObject({ holderIdentity: 'pod-b', leaseTransitions: 2 });
    neverTwoLeaders();
  });

  it('failover on a partition: the cut-off leader steps down before its Lease expires; the other takes over after expiry', async () => {
    const name = nextLease();
    const real = await createKubernetesLeaseApi();
    let cutOff = false;
    const gate = () => {
      if (cutOff) throw Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } });
    };
    const partitionable: LeaseApi = {
      readNamespacedLease: async (p) => (gate(), real.readNamespacedLease(p)),
      createNamespacedLease: async (p) => (gate(), real.createNamespacedLease(p)),
      replaceNamespacedLease: async (p) => (gate(), real.replaceNamespacedLease(p)),
    };
    const a = elector(name, 'pod-a', { api: partitionable });
    a.start();
    await eventually(() => a.state().leader, 10_000, 'pod-a leads');
    const b = elector(name, 'pod-b');
    b.start();

    cutOff = true;
    const cutAt = Date.now();
    await eventually(() => !a.state().leader, 10_000, 'pod-a steps down');
    const steppedDownAfter = Date.now() - cutAt;
    await eventually(() => b.state().leader, 15_000, 'pod-b leads');
    expect(steppedDownAfter).toBeLessThan(TIMING.leaseDurationMs);
    expect(b.state().fencingToken).toBe(2);
    neverTwoLeaders();

    // Back from the partition: pod-a sees pod-b's Lease and stays a follower.
    cutOff = false;
    await new Promise((r) => setTimeout(r, TIMING.renewIntervalMs * 3));
    expect(a.state().leader).toBe(false);
    expect(b.state()).toEqual({ leader: true, fencingToken: 2 });
  });

  it('a real RBAC refusal is reported with the Status reason and message, and the elector stays a follower', async () => {
    // A ServiceAccount with no rights at all, and a token for it (TokenRequest).
    const account = 'no-lease-rights';
    await admin.core.createNamespacedServiceAccount({ namespace: ns.name, body: { metadata: { name: account } } });
    const { status } = await admin.core.createNamespacedServiceAccountToken({
      name: account,
      namespace: ns.name,
      body: { spec: { audiences: ['https://kubernetes.default.svc.cluster.local'], expirationSeconds: 600 } },
    });
    const config = new admin.k8s.KubeConfig();
    config.loadFromFile(kubeconfigPath());
    const cluster = config.getCurrentCluster();
    if (!cluster) throw new Error('no cluster in the stack kubeconfig');
    config.loadFromOptions({
      clusters: [cluster],
      users: [{ name: account, token: status?.token ?? '' }],
      contexts: [{ name: account, cluster: cluster.name, user: account }],
      currentContext: account,
    });
    const api: LeaseApi = config.makeApiClient(admin.k8s.CoordinationV1Api);

    const lines: Array<{ msg?: string; code?: string; err?: string }> = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as (typeof lines)[number]);
        done();
      },
    });
    const name = nextLease();
    const e = elector(name, 'pod-forbidden', { api, logger: createLogger('test', 'warn', sink) });
    e.start();
    await eventually(() => lines.some((l) => l.msg === 'lease round failed'), 10_000, 'a failed round logged');
    const failure = lines.find((l) => l.msg === 'lease round failed');
    expect(failure?.code).toBe('LEASE_API_REJECTED');
    expect(failure?.err).toMatch(/^reading the lease: HTTP 403: Forbidden: leases\.coordination\.k8s\.io "reconciler-\d+" is forbidden: User "system:serviceaccount:[^"]+:no-lease-rights" cannot get resource "leases"/);
    expect(failure?.err).not.toMatch(/Unknown API Status Code/);
    expect(e.state().leader).toBe(false);
  });
});
