/**
 * The kubernetes allocator driver against the stack's REAL Kubernetes API server
 * (`stack up --with kube`: etcd + kube-apiserver v1.37, no kubelet, no scheduler). The test plays
 * the scheduler (binding a Pod to a node, so its deletion is graceful) and the kubelet (writing Pod
 * status: Running and Ready, containers terminated; then the final grace-0 delete). What the API
 * server does itself is real: admission and validation of the Pods sent (GPU limits, node
 * selectors, tolerations…), AlreadyExists, uid and resourceVersion preconditions, conditional
 * updates, graceful deletion and the grace it records.
 *
 * The driver builds its client the production way (`createKubernetesPodApi`: the default
 * kubeconfig, here KUBECONFIG = the stack's). Each test file has its own namespace, deleted at the end.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../../../../../lib/logger.ts';
import { createKubernetesDriver, createKubernetesPodApi, type KubernetesDriverOptions, type PodApi } from '../../../../../services/provisioner/drivers/kubernetes.ts';
import { GPU_RESOURCE, podNameFor } from '../../../../../services/provisioner/drivers/kubernetes-manifest.ts';
import type { AgentWorkload, AllocatorDriver, DriverEvent } from '../../../../../services/provisioner/drivers/types.ts';
import {
  bindPod,
  createDefaultServiceAccount,
  createTestNamespace,
  exited,
  finishDeletion,
  kubeAdmin,
  kubeconfigPath,
  runningReady,
  setPodStatus,
  type KubeAdmin,
  type TestNamespace,
} from '../../../../support/kube.ts';
import { eventually } from '../../../../support/runtime.ts';

const POLL_MS = 100;
const LEASE = 'provisioner-reconciler';

let admin: KubeAdmin;
let ns: TestNamespace;
let events: Array<[string, DriverEvent]>;
let drivers: AllocatorDriver[];

beforeAll(async () => {
  // What the provisioner reads in a deployment outside a cluster.
  process.env.KUBECONFIG = kubeconfigPath();
  admin = await kubeAdmin();
  ns = await createTestNamespace('it-kube-driver');
});

afterAll(async () => {
  await ns.delete();
});

beforeEach(() => {
  events = [];
  drivers = [];
});

afterEach(async () => {
  for (const d of drivers) await d.close();
});

function driver(overrides: Partial<KubernetesDriverOptions> = {}): AllocatorDriver {
  const created = createKubernetesDriver({
    namespace: ns.name,
    onEvent: (agentId, event) => events.push([agentId, event]),
    logger: createLogger('test', 'silent'),
    pollIntervalMs: POLL_MS,
    deleteWaitMs: 20_000,
    agentEnv: { KAFKA_BROKERS: 'kafka:9092' },
    ...overrides,
  });
  drivers.push(created);
  return created;
}

const workload = (agentId: string, overrides: Partial<AgentWorkload['spec']> = {}, region: string | null = null): AgentWorkload => ({
  agentId,
  spec: {
    template: null,
    image: 'registry.example/agents/heartbeat:1.0',
    command: ['node', 'agent.js'],
    environment: [{ name: 'OPENAI_API_KEY', ref: 'secret:openai#api-key' }],
    resources: { cpuMillicores: 500, memoryMiB: 256, gpuCount: 0, gpuType: null },
    ...overrides,
  },
  division: 'research',
  region,
  labels: {},
});

const eventsOf = (agentId: string) => events.filter(([id]) => id === agentId).map(([, e]) => e);
const typesOf = (agentId: string) => eventsOf(agentId).map((e) => e.type);
const readPod = (agentId: string) => admin.core.readNamespacedPod({ name: podNameFor(agentId), namespace: ns.name });
async function podExists(agentId: string): Promise<boolean> {
  try {
    await readPod(agentId);
    return true;
  } catch (error) {
    if ((error as { code?: unknown }).code === 404) return false;
    throw error;
  }
}

/** The real client with a hook before each delete: to let another writer in between, as a race would. */
async function apiWithHook(beforeDelete: (param: Parameters<PodApi['deleteNamespacedPod']>[0]) => Promise<void>): Promise<PodApi> {
  const real = await createKubernetesPodApi();
  return {
    createNamespacedPod: (p) => real.createNamespacedPod(p),
    readNamespacedPod: (p) => real.readNamespacedPod(p),
    replaceNamespacedPod: (p) => real.replaceNamespacedPod(p),
    listNamespacedPod: (p) => real.listNamespacedPod(p),
    async deleteNamespacedPod(p) {
      await beforeDelete(p);
      return real.deleteNamespacedPod(p);
    },
  };
}

/** Another leader term's claim, written straight to the Pod's annotations. */
async function claim(agentId: string, token: number): Promise<void> {
  const pod = await readPod(agentId);
  pod.metadata = { ...pod.metadata, annotations: { ...pod.metadata?.annotations, 'agentmanager.io/fencing-lease': LEASE, 'agentmanager.io/fencing-token': String(token) } };
  await admin.core.replaceNamespacedPod({ name: podNameFor(agentId), namespace: ns.name, body: pod });
}

describe('kubernetes driver against a real API server (the test plays the kubelet)', () => {
  it('creates a Pod the API server admits, with GPU limits, node selectors and tolerations as sent; Ready → STARTED; exit → PROCESS_EXITED', async () => {
    const agentId = randomUUID();
    const d = driver({ regionLabel: 'topology.kubernetes.io/region' });
    await d.start(workload(agentId, { resources: { cpuMillicores: 2000, memoryMiB: 4096, gpuCount: 2, gpuType: 'NVIDIA-A100-SXM4-80GB' } }, 'eu-west-1'), { generation: 1, attempt: 1 });
    expect(typesOf(agentId)).toEqual([]);

    const pod = await readPod(agentId);
    const container = pod.spec?.containers[0];
    expect(container?.resources?.limits?.[GPU_RESOURCE]).toBe('2');
    expect(container?.resources?.requests?.[GPU_RESOURCE]).toBe('2');
    expect(pod.spec?.nodeSelector).toEqual({
      'kubernetes.io/os': 'linux',
      'nvidia.com/gpu.product': 'NVIDIA-A100-SXM4-80GB',
      'topology.kubernetes.io/region': 'eu-west-1',
    });
    expect(pod.spec?.tolerations).toEqual(expect.arrayContaining([{ key: GPU_RESOURCE, operator: 'Exists', effect: 'NoSchedule' }]));
    expect(container?.env).toEqual(
      expect.arrayContaining([
        { name: 'OPENAI_API_KEY', valueFrom: { secretKeyRef: { name: 'openai', key: 'api-key' } } },
        { name: 'KAFKA_BROKERS', value: 'kafka:9092' },
        { name: 'AGENT_INSTANCE_ID', value: `${podNameFor(agentId)}/1.1` },
      ]),
    );
    // The default grace of a deletion not asked by `stop`, written into the Pod.
    expect(pod.spec?.terminationGracePeriodSeconds).toBe(30);

    await bindPod(ns.name, podNameFor(agentId));
    await setPodStatus(ns.name, podNameFor(agentId), runningReady);
    await eventually(() => typesOf(agentId).includes('STARTED'), 10_000, 'STARTED');
    expect(eventsOf(agentId)[0]).toEqual({ type: 'STARTED', generation: 1, attempt: 1, instanceId: `${podNameFor(agentId)}/1.1` });

    await setPodStatus(ns.name, podNameFor(agentId), exited(3));
    await eventually(() => typesOf(agentId).includes('PROCESS_EXITED'), 10_000, 'PROCESS_EXITED');
    expect(eventsOf(agentId)[1]).toEqual({ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: 3, signal: null });
    expect(await d.observe(agentId)).toMatchObject({ provisioned: true, running: false });
    await d.destroy(agentId);
    await eventually(async () => !(await podExists(agentId)), 10_000, 'Pod gone');
  });

  it('stop deletes with the grace asked (DeleteOptions body, not the Pod’s 30 s); STOPPED once the kubelet has removed the Pod', async () => {
    const agentId = randomUUID();
    const d = driver();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    await bindPod(ns.name, podNameFor(agentId));
    await setPodStatus(ns.name, podNameFor(agentId), runningReady);
    await eventually(() => typesOf(agentId).includes('STARTED'), 10_000, 'STARTED');

    await d.stop(agentId, 7_500);
    const terminating = await readPod(agentId);
    expect(terminating.metadata?.deletionTimestamp).toBeDefined();
    expect(terminating.metadata?.deletionGracePeriodSeconds).toBe(8);
    await sleep(POLL_MS * 5);
    expect(typesOf(agentId)).toEqual(['STARTED']);

    // The kubelet: the container ended, then the Pod is removed.
    await setPodStatus(ns.name, podNameFor(agentId), exited(0));
    await sleep(POLL_MS * 5);
    expect(await finishDeletion(ns.name, podNameFor(agentId))).toBe(true);
    await eventually(() => typesOf(agentId).includes('STOPPED'), 10_000, 'STOPPED');
    expect(eventsOf(agentId)[1]).toEqual({ type: 'STOPPED', exitCode: 0, signal: null });
  });

  it('is idempotent for the same fence: no second Pod, STARTED again once Ready', async () => {
    const agentId = randomUUID();
    const d = driver();
    await d.start(workload(agentId), { generation: 2, attempt: 1 });
    const uid = (await readPod(agentId)).metadata?.uid;
    await setPodStatus(ns.name, podNameFor(agentId), runningReady);
    await eventually(() => typesOf(agentId).includes('STARTED'), 10_000, 'STARTED');
    await d.start(workload(agentId), { generation: 2, attempt: 1 });
    expect((await readPod(agentId)).metadata?.uid).toBe(uid);
    expect(typesOf(agentId)).toEqual(['STARTED', 'STARTED']);
    await d.destroy(agentId);
  });

  it('an image the kubelet cannot pull is a DRIVER_FAILED (retryable for ErrImagePull, not for InvalidImageName)', async () => {
    for (const [reason, retryable] of [
      ['ErrImagePull', true],
      ['InvalidImageName', false],
    ] as const) {
      const agentId = randomUUID();
      const d = driver();
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      await setPodStatus(ns.name, podNameFor(agentId), (pod) => ({
        phase: 'Pending',
        containerStatuses: (pod.spec?.containers ?? []).map((c) => ({
          name: c.name,
          ready: false,
          restartCount: 0,
          image: c.image ?? '',
          imageID: '',
          state: { waiting: { reason, message: 'pull access denied' } },
        })),
      }));
      await eventually(() => typesOf(agentId).includes('DRIVER_FAILED'), 10_000, `DRIVER_FAILED for ${reason}`);
      expect(eventsOf(agentId)[0]).toEqual({ type: 'DRIVER_FAILED', generation: 1, attempt: 1, reason: `Pod ${podNameFor(agentId)}: ${reason}: pull access denied`, retryable });
      await d.destroy(agentId);
    }
  });

  it('replaces the Pod of an older start with a 1 s grace (uid precondition), and creates the new one once the old is gone', async () => {
    const agentId = randomUUID();
    const d = driver();
    await d.start(workload(agentId), { generation: 1, attempt: 1 });
    const old = await readPod(agentId);
    await bindPod(ns.name, podNameFor(agentId));

    const replacing = d.start(workload(agentId), { generation: 1, attempt: 2 });
    await eventually(async () => (await readPod(agentId)).metadata?.deletionTimestamp !== undefined, 10_000, 'old Pod terminating');
    expect((await readPod(agentId)).metadata?.deletionGracePeriodSeconds).toBe(1);
    await finishDeletion(ns.name, podNameFor(agentId));
    await replacing;

    const fresh = await readPod(agentId);
    expect(fresh.metadata?.uid).not.toBe(old.metadata?.uid);
    expect(fresh.metadata?.labels?.['agentmanager.io/attempt']).toBe('2');
    expect(typesOf(agentId)).not.toContain('DRIVER_FAILED');
    await d.destroy(agentId);
  });

  it('a Pod refused because the namespace has no default ServiceAccount yet is a retryable DRIVER_FAILED; it starts once the account exists', async () => {
    const fresh = await createTestNamespace('it-kube-no-sa', { defaultServiceAccount: false });
    try {
      const agentId = randomUUID();
      const d = driver({ namespace: fresh.name });
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      await eventually(() => typesOf(agentId).includes('DRIVER_FAILED'), 10_000, 'DRIVER_FAILED');
      const failed = eventsOf(agentId).find((e) => e.type === 'DRIVER_FAILED');
      expect(failed).toMatchObject({ type: 'DRIVER_FAILED', retryable: true });
      expect(failed?.type === 'DRIVER_FAILED' ? failed.reason : '').toMatch(/HTTP 403: .*serviceaccount "default" not found/);

      await createDefaultServiceAccount(fresh.name);
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      const pod = await admin.core.readNamespacedPod({ name: podNameFor(agentId), namespace: fresh.name });
      expect(pod.spec?.serviceAccountName).toBe('default');
    } finally {
      await fresh.delete();
    }
  });

  it('lists, observes and adopts only the Pods of its own instance', async () => {
    const [a, b] = [randomUUID(), randomUUID()];
    const one = driver({ instance: 'it-one' });
    const two = driver({ instance: 'it-two' });
    await one.start(workload(a), { generation: 1, attempt: 1 });
    await two.start(workload(b), { generation: 3, attempt: 1 });
    expect(await one.list()).toEqual([a]);
    expect(await two.list()).toEqual([b]);
    // Created, not Ready yet: running (not gone) but not ready, so the reconciler delivers no STARTED for it.
    expect(await two.observe(b)).toEqual({ agentId: b, provisioned: true, running: true, ready: false, fence: { generation: 3, attempt: 1 }, instanceId: `${podNameFor(b)}/3.1` });
    await setPodStatus(ns.name, podNameFor(b), runningReady);
    expect(await two.observe(b)).toMatchObject({ running: true, ready: true });

    // A restarted provisioner (a new driver of the same instance) adopts the running Pod and reports its end.
    await two.close();
    const again = driver({ instance: 'it-two' });
    await again.list();
    await setPodStatus(ns.name, podNameFor(b), exited(1));
    await eventually(() => typesOf(b).includes('PROCESS_EXITED'), 10_000, 'PROCESS_EXITED of the adopted Pod');
    await one.destroy(a);
    await again.destroy(b);
  });

  describe('fenced stops and destroys (a leader term claims the Pod first)', () => {
    it('claims with a conditional update, then deletes with uid and resourceVersion preconditions', async () => {
      const agentId = randomUUID();
      const d = driver();
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      await bindPod(ns.name, podNameFor(agentId));
      await d.stop(agentId, 2_000, { lease: LEASE, token: 5 });
      const pod = await readPod(agentId);
      expect(pod.metadata?.annotations).toMatchObject({ 'agentmanager.io/fencing-lease': LEASE, 'agentmanager.io/fencing-token': '5' });
      expect(pod.metadata?.deletionGracePeriodSeconds).toBe(2);
      await finishDeletion(ns.name, podNameFor(agentId));
      await eventually(() => typesOf(agentId).includes('STOPPED'), 10_000, 'STOPPED');
    });

    it('refuses a stale term: a Pod claimed by a newer term is neither stopped nor destroyed', async () => {
      const agentId = randomUUID();
      const d = driver();
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      await claim(agentId, 7);
      await expect(d.destroy(agentId, { lease: LEASE, token: 5 })).rejects.toMatchObject({ code: 'STALE_FENCE', retryable: false });
      await expect(d.stop(agentId, 1_000, { lease: LEASE, token: 5 })).rejects.toMatchObject({ code: 'STALE_FENCE' });
      expect((await readPod(agentId)).metadata?.deletionTimestamp).toBeUndefined();
      await d.destroy(agentId, { lease: LEASE, token: 7 });
      await eventually(async () => !(await podExists(agentId)), 10_000, 'Pod gone');
    });

    it('a newer term claiming between the old term’s claim and its delete wins: the API server refuses the old delete', async () => {
      const agentId = randomUUID();
      let raced = false;
      const api = await apiWithHook(async () => {
        if (!raced) {
          raced = true;
          await claim(agentId, 9);
        }
      });
      const d = driver({ api });
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      await expect(d.destroy(agentId, { lease: LEASE, token: 5 })).rejects.toMatchObject({ code: 'STALE_FENCE' });
      expect(raced).toBe(true);
      const pod = await readPod(agentId);
      expect(pod.metadata?.deletionTimestamp).toBeUndefined();
      expect(pod.metadata?.annotations?.['agentmanager.io/fencing-token']).toBe('9');
      await d.destroy(agentId, { lease: LEASE, token: 9 });
    });

    it('a status update between claim and delete only sends it round again', async () => {
      const agentId = randomUUID();
      let deletes = 0;
      const api = await apiWithHook(async () => {
        deletes += 1;
        if (deletes === 1) await setPodStatus(ns.name, podNameFor(agentId), runningReady);
      });
      const d = driver({ api });
      await d.start(workload(agentId), { generation: 1, attempt: 1 });
      await d.destroy(agentId, { lease: LEASE, token: 5 });
      expect(deletes).toBe(2);
      await eventually(async () => !(await podExists(agentId)), 10_000, 'Pod gone');
    });
  });
});
