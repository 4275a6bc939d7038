/**
 * The kubernetes allocator driver against a HAND-WRITTEN FAKE of the four CoreV1Api calls it uses
 * (`FakePodApi` below). No cluster runs here: these tests check the manifests sent, the
 * idempotency rules, the Pod-status → event mapping and every API error mapping. The fake mimics
 * the API server's behaviour that matters: 409 AlreadyExists on create, 404 on a missing Pod, uid
 * and resourceVersion preconditions on delete and a resourceVersion-conditional replace (409 when
 * they fail), a new resourceVersion on every change, label selectors `k=v,k=v`, graceful deletion
 * (deletionTimestamp, then gone). The fencing of stops and destroys is tested here only, against
 * this fake: there is no cluster in this environment.
 */
import { createLogger } from '../../../../../lib/logger.ts';
import {
  createKubernetesDriver,
  defaultEnvRefResolver,
  kubernetesError,
  type KubernetesDriverOptions,
  type PodApi,
  type PodObject,
} from '../../../../../services/provisioner/drivers/kubernetes.ts';
import { buildAgentPod, podNameFor, type PodManifest } from '../../../../../services/provisioner/drivers/kubernetes-manifest.ts';
import type { AgentWorkload, AllocatorDriver, DriverEvent } from '../../../../../services/provisioner/drivers/types.ts';

const AGENT = '3f2a9c1e-8b7d-4e6f-9a0b-1c2d3e4f5a6b';
const POD = podNameFor(AGENT);
const NS = 'agents';

/** An error shaped like @kubernetes/client-node's ApiException (code = HTTP status, body = Status JSON). */
function apiError(code: number, message: string): Error {
  return Object.assign(new Error(`HTTP-Code: ${code}\nMessage: Unknown API Status Code!`), { code, body: JSON.stringify({ kind: 'Status', code, message }) });
}

type Method = 'create' | 'read' | 'replace' | 'delete' | 'list';

interface StoredPod extends PodObject {
  metadata: NonNullable<PodObject['metadata']> & { name: string; uid: string; resourceVersion: string; labels: Record<string, string> };
  status: NonNullable<PodObject['status']>;
}

class FakePodApi implements PodApi {
  readonly pods = new Map<string, StoredPod>();
  readonly calls: Array<{ method: Method; param: unknown }> = [];
  /** Errors to throw, in order, per method. */
  readonly failures: Record<Method, Error[]> = { create: [], read: [], replace: [], delete: [], list: [] };
  /** Runs inside replace and delete before the preconditions are checked (to simulate a racing writer). */
  beforeWrite: ((name: string) => void) | null = null;
  private versions = 0;
  /** When true, deleted Pods stay (terminating) until `finishDeletion`. */
  holdDeletions = false;
  /** Runs inside create before the Pod is stored (to simulate a racing writer). */
  beforeCreate: (() => void) | null = null;
  private uids = 0;

  private fail(method: Method, param: unknown): void {
    this.calls.push({ method, param });
    const error = this.failures[method].shift();
    if (error) throw error;
  }

  store(manifest: PodManifest): StoredPod {
    this.uids += 1;
    const pod: StoredPod = {
      metadata: { ...structuredClone(manifest.metadata), uid: `uid-${this.uids}`, resourceVersion: this.nextVersion() },
      status: { phase: 'Pending', conditions: [], containerStatuses: [{ name: 'agent', ready: false, state: { waiting: { reason: 'ContainerCreating' } } }] },
    };
    this.pods.set(pod.metadata.name, pod);
    return pod;
  }

  async createNamespacedPod(param: { namespace: string; body: PodManifest }): Promise<PodObject> {
    this.fail('create', param);
    this.beforeCreate?.();
    if (this.pods.has(param.body.metadata.name)) throw apiError(409, `pods "${param.body.metadata.name}" already exists`);
    return structuredClone(this.store(param.body));
  }

  async readNamespacedPod(param: { name: string; namespace: string }): Promise<PodObject> {
    this.fail('read', param);
    const pod = this.pods.get(param.name);
    if (!pod) throw apiError(404, `pods "${param.name}" not found`);
    return structuredClone(pod);
  }

  nextVersion(): string {
    this.versions += 1;
    return String(this.versions);
  }

  async replaceNamespacedPod(param: { name: string; namespace: string; body: PodObject }): Promise<PodObject> {
    this.fail('replace', param);
    this.beforeWrite?.(param.name);
    const pod = this.pods.get(param.name);
    if (!pod) throw apiError(404, `pods "${param.name}" not found`);
    if (param.body.metadata?.resourceVersion !== pod.metadata.resourceVersion) throw apiError(409, 'the object has been modified; please apply your changes to the latest version and try again');
    // Only metadata changes matter here (a Pod's spec is immutable anyway).
    pod.metadata = { ...pod.metadata, annotations: { ...param.body.metadata?.annotations }, resourceVersion: this.nextVersion() };
    return structuredClone(pod);
  }

  async deleteNamespacedPod(param: { name: string; namespace: string; gracePeriodSeconds?: number; body?: { preconditions?: { uid?: string; resourceVersion?: string } } }): Promise<unknown> {
    this.fail('delete', param);
    this.beforeWrite?.(param.name);
    const pod = this.pods.get(param.name);
    if (!pod) throw apiError(404, `pods "${param.name}" not found`);
    const uid = param.body?.preconditions?.uid;
    if (uid !== undefined && uid !== pod.metadata.uid) throw apiError(409, 'Precondition failed: UID in precondition does not match');
    const version = param.body?.preconditions?.resourceVersion;
    if (version !== undefined && version !== pod.metadata.resourceVersion) throw apiError(409, 'Precondition failed: ResourceVersion in precondition does not match');
    pod.metadata.deletionTimestamp = new Date();
    pod.metadata.resourceVersion = this.nextVersion();
    if (!this.holdDeletions) setImmediate(() => this.finishDeletion(param.name));
    return structuredClone(pod);
  }

  async listNamespacedPod(param: { namespace: string; labelSelector?: string }): Promise<{ items: PodObject[] }> {
    this.fail('list', param);
    const terms = (param.labelSelector ?? '').split(',').filter((t) => t !== '').map((t) => t.split('='));
    return { items: [...this.pods.values()].filter((p) => terms.every(([key, value]) => p.metadata.labels[key ?? ''] === value)).map((p) => structuredClone(p)) };
  }

  // ---- what the kubelet would do -------------------------------------------------------------
  finishDeletion(name: string): void {
    this.pods.delete(name);
  }

  setReady(name: string): void {
    const pod = this.mustGet(name);
    pod.status = { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }], containerStatuses: [{ name: 'agent', ready: true, state: { running: {} } }] };
    pod.metadata.resourceVersion = this.nextVersion();
  }

  setWaiting(name: string, reason: string, message = ''): void {
    const pod = this.mustGet(name);
    pod.status = { phase: 'Pending', conditions: [], containerStatuses: [{ name: 'agent', ready: false, state: { waiting: { reason, message } } }] };
    pod.metadata.resourceVersion = this.nextVersion();
  }

  setTerminated(name: string, exitCode: number, phase: 'Failed' | 'Succeeded' | 'Running' = exitCode === 0 ? 'Succeeded' : 'Failed'): void {
    const pod = this.mustGet(name);
    pod.status = { phase, conditions: [{ type: 'Ready', status: 'False' }], containerStatuses: [{ name: 'agent', ready: false, state: { terminated: { exitCode, reason: 'Error' } } }] };
    pod.metadata.resourceVersion = this.nextVersion();
  }

  count(method: Method): number {
    return this.calls.filter((c) => c.method === method).length;
  }

  private mustGet(name: string): StoredPod {
    const pod = this.pods.get(name);
    if (!pod) throw new Error(`fake: no pod ${name}`);
    return pod;
  }
}

const workload = (overrides: Partial<AgentWorkload['spec']> = {}, region: string | null = null): AgentWorkload => ({
  agentId: AGENT,
  spec: {
    template: null,
    image: 'ghcr.io/acme/agent:1.2',
    command: ['node', 'agent.js'],
    environment: [{ name: 'OPENAI_API_KEY', ref: 'secret:openai#api-key' }],
    resources: { cpuMillicores: 500, memoryMiB: 256, gpuCount: 0, gpuType: null },
    ...overrides,
  },
  division: 'research',
  region,
  labels: {},
});

async function until(check: () => boolean, what: string, timeoutMs = 2_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const settle = () => new Promise((r) => setTimeout(r, 40));

describe('kubernetes allocator driver (fake PodApi, no cluster)', () => {
  let api: FakePodApi;
  let events: Array<[string, DriverEvent]>;
  let drivers: AllocatorDriver[];

  function driver(overrides: Partial<KubernetesDriverOptions> = {}): AllocatorDriver {
    const created = createKubernetesDriver({
      api,
      namespace: NS,
      onEvent: (agentId, event) => events.push([agentId, event]),
      logger: createLogger('test', 'silent'),
      pollIntervalMs: 5,
      agentEnv: { KAFKA_BROKERS: 'kafka:9092', AGENT_ID: 'must-not-override' },
      ...overrides,
    });
    drivers.push(created);
    return created;
  }

  const types = () => events.map(([, e]) => e.type);

  beforeEach(() => {
    api = new FakePodApi();
    events = [];
    drivers = [];
  });

  afterEach(async () => {
    for (const d of drivers) await d.close();
  });

  describe('start', () => {
    it('creates the Pod built by buildAgentPod, plus plain agentEnv, the instance id and the region selector; Ready → STARTED', async () => {
      const d = driver({ regionLabel: 'topology.kubernetes.io/region' });
      await d.start(workload({}, 'eu-west-1'), { generation: 2, attempt: 1 });
      expect(api.count('create')).toBe(1);
      const sent = (api.calls.find((c) => c.method === 'create')?.param as { namespace: string; body: PodManifest });
      expect(sent.namespace).toBe(NS);

      const expected = buildAgentPod({
        agentId: AGENT,
        namespace: NS,
        image: 'ghcr.io/acme/agent:1.2',
        command: ['node', 'agent.js'],
        cpu: 0.5,
        memoryMb: 256,
        gpuCount: 0,
        gpuType: null,
        division: 'research',
        instance: 'agent-manager',
        generation: 2,
        attempt: 1,
        secretEnv: [{ name: 'OPENAI_API_KEY', secretName: 'openai', key: 'api-key' }],
        stopGraceMs: 30_000,
      });
      expected.spec.containers[0]?.env.push({ name: 'KAFKA_BROKERS', value: 'kafka:9092' }, { name: 'AGENT_INSTANCE_ID', value: `${POD}/2.1` });
      expected.spec.nodeSelector['topology.kubernetes.io/region'] = 'eu-west-1';
      expect(sent.body).toEqual(expected);
      // Reserved names are never overridden by agentEnv; the secret travels by reference only.
      expect(sent.body.spec.containers[0]?.env.filter((e) => e.name === 'AGENT_ID')).toEqual([{ name: 'AGENT_ID', value: AGENT }]);

      await settle();
      expect(events).toEqual([]);
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      expect(events).toEqual([[AGENT, { type: 'STARTED', generation: 2, attempt: 1, instanceId: `${POD}/2.1` }]]);
      expect(await d.observe(AGENT)).toEqual({ agentId: AGENT, provisioned: true, running: true, fence: { generation: 2, attempt: 1 }, instanceId: `${POD}/2.1` });
      expect(await d.list()).toEqual([AGENT]);
    });

    it('takes the image of a template and refuses a spec without one, before any API call', async () => {
      const d = driver({ templateImages: { echo: 'ghcr.io/acme/echo:3' } });
      await d.start(workload({ template: 'echo', image: null }), { generation: 1, attempt: 1 });
      expect((api.calls[api.calls.findIndex((c) => c.method === 'create')]?.param as { body: PodManifest }).body.spec.containers[0]?.image).toBe('ghcr.io/acme/echo:3');

      const before = api.calls.filter((c) => c.method !== 'list').length;
      await expect(d.provision({ ...workload({ template: 'other', image: null }), agentId: 'x' })).rejects.toMatchObject({ code: 'POD_SPEC_INVALID', retryable: false });
      await expect(d.provision({ ...workload({ environment: [{ name: 'K', ref: 'vault:kv/a#b' }] }), agentId: 'x' })).rejects.toMatchObject({
        code: 'ENV_REF_UNSUPPORTED',
        retryable: false,
      });
      await d.start({ ...workload({ template: 'other', image: null }), agentId: 'y' }, { generation: 1, attempt: 1 });
      await until(() => types().includes('DRIVER_FAILED'), 'DRIVER_FAILED');
      expect(events.find(([, e]) => e.type === 'DRIVER_FAILED')).toEqual([
        'y',
        { type: 'DRIVER_FAILED', generation: 1, attempt: 1, reason: expect.stringContaining('template other has no image') as string, retryable: false },
      ]);
      expect(api.calls.filter((c) => c.method !== 'list').length).toBe(before);
      await expect(d.provision(workload())).resolves.toBeUndefined();
    });

    it('is idempotent for the same fence: no second create, and STARTED again once Ready', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      await d.start(workload(), { generation: 1, attempt: 1 });
      await until(() => events.length === 2, 'STARTED again');
      expect(api.count('create')).toBe(1);
      expect(api.count('delete')).toBe(0);
      expect(events[1]).toEqual(events[0]);
    });

    it('treats a 409 AlreadyExists of the same fence (a racing writer) as started', async () => {
      const d = driver();
      api.beforeCreate = () => {
        api.beforeCreate = null;
        const racing = buildAgentPod({ agentId: AGENT, namespace: NS, image: 'x', cpu: 1, memoryMb: 1, gpuCount: 0, instance: 'agent-manager', generation: 1, attempt: 1 });
        api.store(racing);
      };
      await d.start(workload(), { generation: 1, attempt: 1 });
      expect(api.count('create')).toBe(1);
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      expect(types()).toEqual(['STARTED']);
    });

    it('replaces the Pod of an older fence (uid precondition, never forced), silently; ignores an older start', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED 1.1');
      const oldUid = api.pods.get(POD)?.metadata.uid;

      await d.start(workload(), { generation: 1, attempt: 2 });
      const deletion = api.calls.find((c) => c.method === 'delete')?.param;
      expect(deletion).toEqual({ name: POD, namespace: NS, gracePeriodSeconds: 1, body: { preconditions: { uid: oldUid } } });
      expect(api.count('create')).toBe(2);
      expect(api.pods.get(POD)?.metadata.labels['agentmanager.io/attempt']).toBe('2');
      api.setReady(POD);
      await until(() => events.length === 2, 'STARTED 1.2');
      expect(events[1]?.[1]).toEqual({ type: 'STARTED', generation: 1, attempt: 2, instanceId: `${POD}/1.2` });

      await d.start(workload(), { generation: 1, attempt: 1 });
      await settle();
      expect(api.count('create')).toBe(2);
      expect(api.count('delete')).toBe(1);
      expect(types()).toEqual(['STARTED', 'STARTED']);
    });

    it('waits for a terminating Pod to be gone before creating', async () => {
      const d = driver();
      api.store(buildAgentPod({ agentId: AGENT, namespace: NS, image: 'x', cpu: 1, memoryMb: 1, gpuCount: 0, instance: 'agent-manager', generation: 1, attempt: 1 }));
      const pod = api.pods.get(POD);
      if (pod) pod.metadata.deletionTimestamp = new Date();
      setTimeout(() => api.finishDeletion(POD), 30);
      await d.start(workload(), { generation: 2, attempt: 1 });
      expect(api.count('create')).toBe(1);
      expect(api.pods.get(POD)?.metadata.labels['agentmanager.io/generation']).toBe('2');
    });

    it.each([
      ['Failed with exit code 3', 3, null],
      ['killed (exit code 137)', 137, 'SIGKILL'],
      ['Succeeded', 0, null],
    ])('reports PROCESS_EXITED when the Pod ends: %s', async (_what, exitCode, signal) => {
      const d = driver();
      await d.start(workload(), { generation: 4, attempt: 2 });
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      api.setTerminated(POD, exitCode);
      await until(() => events.length === 2, 'PROCESS_EXITED');
      expect(events[1]).toEqual([AGENT, { type: 'PROCESS_EXITED', generation: 4, attempt: 2, exitCode, signal }]);
      expect((await d.observe(AGENT)).running).toBe(false);
    });

    it('reports PROCESS_EXITED when the Pod is deleted by someone else', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      api.finishDeletion(POD);
      await until(() => events.length === 2, 'PROCESS_EXITED');
      expect(events[1]?.[1]).toEqual({ type: 'PROCESS_EXITED', generation: 1, attempt: 1, exitCode: null, signal: null });
    });

    it.each([
      ['InvalidImageName', false],
      ['ErrImagePull', true],
      ['ImagePullBackOff', true],
      ['CreateContainerConfigError', true],
    ])('reports a container stuck on %s once as DRIVER_FAILED (retryable: %s)', async (reason, retryable) => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.setWaiting(POD, reason, 'details');
      await until(() => events.length === 1, 'DRIVER_FAILED');
      await settle();
      expect(events).toEqual([[AGENT, { type: 'DRIVER_FAILED', generation: 1, attempt: 1, reason: `Pod ${POD}: ${reason}: details`, retryable }]]);
    });

    it.each([
      [400, false],
      [401, false],
      [403, false],
      [422, false],
      [429, true],
      [500, true],
      [503, true],
    ])('maps HTTP %i from create to DRIVER_FAILED with retryable %s', async (status, retryable) => {
      const d = driver();
      api.failures.create.push(apiError(status, 'the API server says no'));
      await d.start(workload(), { generation: 1, attempt: 1 });
      await until(() => events.length === 1, 'DRIVER_FAILED');
      expect(events[0]?.[1]).toMatchObject({ type: 'DRIVER_FAILED', generation: 1, attempt: 1, retryable });
      expect((events[0]?.[1] as { reason: string }).reason).toContain('the API server says no');
    });

    it('maps a network failure (no HTTP answer) to a retryable DRIVER_FAILED', async () => {
      const d = driver();
      api.failures.read.push(Object.assign(new TypeError('fetch failed'), { cause: { code: 'ECONNREFUSED' } }));
      await d.start(workload(), { generation: 1, attempt: 1 });
      await until(() => events.length === 1, 'DRIVER_FAILED');
      expect(events[0]?.[1]).toMatchObject({ type: 'DRIVER_FAILED', retryable: true, reason: expect.stringContaining('did not answer') as string });
    });

    it('maps a missing namespace (404 on create) to a permanent DRIVER_FAILED', async () => {
      const d = driver();
      api.failures.create.push(apiError(404, 'namespaces "agents" not found'));
      await d.start(workload(), { generation: 1, attempt: 1 });
      await until(() => events.length === 1, 'DRIVER_FAILED');
      expect(events[0]?.[1]).toMatchObject({ type: 'DRIVER_FAILED', retryable: false, reason: expect.stringContaining('namespace agents does not exist') as string });
    });
  });

  describe('stop and destroy', () => {
    it('stop deletes with the grace in seconds and reports STOPPED (with the exit code) only once the Pod is gone', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      api.holdDeletions = true;
      await d.stop(AGENT, 7_500);
      const deletion = api.calls.filter((c) => c.method === 'delete')[0]?.param as { gracePeriodSeconds: number; body: { preconditions: { uid: string } } };
      expect(deletion.gracePeriodSeconds).toBe(8);
      expect(deletion.body.preconditions.uid).toBe(api.pods.get(POD)?.metadata.uid);
      api.setTerminated(POD, 0, 'Running');
      await settle();
      expect(types()).toEqual(['STARTED']);
      api.finishDeletion(POD);
      await until(() => events.length === 2, 'STOPPED');
      expect(events[1]).toEqual([AGENT, { type: 'STOPPED', exitCode: 0, signal: null }]);
      await settle();
      expect(types()).toEqual(['STARTED', 'STOPPED']);
    });

    it('stop with no Pod reports STOPPED at once; a zero grace is still a graceful (≥ 1 s) deletion', async () => {
      const d = driver();
      await d.stop(AGENT, 1_000);
      await until(() => events.length === 1, 'STOPPED');
      expect(events[0]).toEqual([AGENT, { type: 'STOPPED', exitCode: null, signal: null }]);
      await d.start(workload(), { generation: 1, attempt: 1 });
      await d.stop(AGENT, 0);
      expect((api.calls.filter((c) => c.method === 'delete')[0]?.param as { gracePeriodSeconds: number }).gracePeriodSeconds).toBe(1);
      await until(() => events.length === 2, 'STOPPED');
    });

    it.each([
      [403, 'KUBERNETES_FORBIDDEN', false],
      [401, 'KUBERNETES_FORBIDDEN', false],
      [422, 'KUBERNETES_INVALID', false],
      [503, 'KUBERNETES_UNAVAILABLE', true],
      [429, 'KUBERNETES_UNAVAILABLE', true],
    ])('stop and destroy throw HTTP %i as %s (retryable %s)', async (status, code, retryable) => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.failures.delete.push(apiError(status, 'nope'), apiError(status, 'nope'));
      await expect(d.stop(AGENT, 1_000)).rejects.toMatchObject({ code, retryable });
      await expect(d.destroy(AGENT)).rejects.toMatchObject({ code, retryable });
    });

    it('destroy deletes the Pod, is fine with 404 and reports nothing', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      await d.destroy(AGENT);
      await d.destroy(AGENT);
      await until(() => !api.pods.has(POD), 'the Pod gone');
      await settle();
      expect(types()).toEqual(['STARTED']);
      expect(await d.observe(AGENT)).toEqual({ agentId: AGENT, provisioned: false, running: false, fence: null, instanceId: null });
      expect(await d.list()).toEqual([]);
    });
  });

  it('a new driver adopts a running Pod and reports its end', async () => {
    const first = driver();
    await first.start(workload(), { generation: 5, attempt: 1 });
    api.setReady(POD);
    await until(() => events.length === 1, 'STARTED');
    await first.close();
    const second = driver();
    expect(await second.observe(AGENT)).toMatchObject({ running: true, fence: { generation: 5, attempt: 1 } });
    await settle();
    expect(types()).toEqual(['STARTED']);
    api.setTerminated(POD, 2);
    await until(() => events.length === 2, 'PROCESS_EXITED');
    expect(events[1]?.[1]).toEqual({ type: 'PROCESS_EXITED', generation: 5, attempt: 1, exitCode: 2, signal: null });
  });

  it('keeps polling through a failing list', async () => {
    const d = driver();
    await d.start(workload(), { generation: 1, attempt: 1 });
    api.failures.list.push(apiError(500, 'etcd'), apiError(503, 'etcd'));
    api.setReady(POD);
    await until(() => events.length === 1, 'STARTED');
    expect(api.failures.list).toEqual([]);
  });

  it('list and observe throw mapped errors', async () => {
    const d = driver({ pollIntervalMs: 60_000 });
    await until(() => api.count('list') === 1, 'the first poll');
    api.failures.read.push(apiError(403, 'forbidden'));
    await expect(d.observe(AGENT)).rejects.toMatchObject({ code: 'KUBERNETES_FORBIDDEN', retryable: false });
    api.failures.list.push(apiError(500, 'boom'));
    await expect(d.list()).rejects.toMatchObject({ code: 'KUBERNETES_UNAVAILABLE', retryable: true });
  });

  describe('deployments sharing a namespace', () => {
    it('labels Pods with the instance and lists, watches and adopts only its own', async () => {
      const blue = driver({ instance: 'blue' });
      const green = driver({ instance: 'green' });
      await blue.start(workload(), { generation: 1, attempt: 1 });
      expect(api.pods.get(POD)?.metadata.labels['app.kubernetes.io/instance']).toBe('blue');
      expect(await blue.list()).toEqual([AGENT]);
      // Green's orphan sweep never sees blue's agent.
      expect(await green.list()).toEqual([]);
      api.setReady(POD);
      await until(() => events.length === 1, 'STARTED');
      await settle();
      // Only blue reported (green did not adopt the Pod).
      expect(events).toHaveLength(1);
    });

    it('refuses an instance that is not a label value', async () => {
      const d = driver({ instance: 'not a label!' });
      await expect(d.provision(workload())).rejects.toMatchObject({ code: 'POD_SPEC_INVALID' });
    });
  });

  describe('fenced stops and destroys (a leader term claims the Pod first)', () => {
    const lease = 'provisioner-reconciler';
    const claim = (token: number) => {
      const pod = api.pods.get(POD);
      if (!pod) throw new Error('no pod');
      pod.metadata.annotations = { ...pod.metadata.annotations, 'agentmanager.io/fencing-lease': lease, 'agentmanager.io/fencing-token': String(token) };
      pod.metadata.resourceVersion = api.nextVersion();
    };

    it('claims the Pod with a conditional update, then deletes it with uid and resourceVersion preconditions', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      await d.destroy(AGENT, { lease, token: 5 });
      const replace = api.calls.find((c) => c.method === 'replace')?.param as { body: PodObject };
      expect(replace.body.metadata?.annotations).toMatchObject({ 'agentmanager.io/fencing-lease': lease, 'agentmanager.io/fencing-token': '5' });
      const del = api.calls.find((c) => c.method === 'delete')?.param as { body?: { preconditions?: { uid?: string; resourceVersion?: string } } };
      expect(del.body?.preconditions?.uid).toBe('uid-1');
      expect(del.body?.preconditions?.resourceVersion).toBeDefined();
      await until(() => !api.pods.has(POD), 'Pod gone');
    });

    it('refuses a stale term: a Pod claimed by a newer term is neither stopped nor destroyed', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      claim(7);
      await expect(d.destroy(AGENT, { lease, token: 5 })).rejects.toMatchObject({ code: 'STALE_FENCE', retryable: false });
      await expect(d.stop(AGENT, 1_000, { lease, token: 5 })).rejects.toMatchObject({ code: 'STALE_FENCE' });
      expect(api.count('delete')).toBe(0);
      expect(api.pods.get(POD)?.metadata.deletionTimestamp).toBeUndefined();
      await settle();
      expect(types()).not.toContain('STOPPED');
      // The current term (or a later one) may.
      await d.stop(AGENT, 1_000, { lease, token: 7 });
      await until(() => types().includes('STOPPED'), 'STOPPED');
    });

    it('a newer term claiming between the old term’s claim and its delete wins: the old delete fails its precondition and is refused', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      let raced = false;
      api.beforeWrite = () => {
        // The old leader's claim went through; the new leader claims before the old one deletes.
        if (api.count('replace') === 1 && api.count('delete') === 1 && !raced) {
          raced = true;
          claim(9);
        }
      };
      await expect(d.destroy(AGENT, { lease, token: 5 })).rejects.toMatchObject({ code: 'STALE_FENCE' });
      expect(raced).toBe(true);
      expect(api.pods.get(POD)?.metadata.deletionTimestamp).toBeUndefined();
      expect(api.pods.get(POD)?.metadata.annotations?.['agentmanager.io/fencing-token']).toBe('9');
    });

    it('a status update between claim and delete only sends it round again', async () => {
      const d = driver();
      await d.start(workload(), { generation: 1, attempt: 1 });
      let bumped = false;
      api.beforeWrite = (name) => {
        if (api.count('delete') === 1 && !bumped) {
          bumped = true;
          api.setWaiting(name, 'ContainerCreating');
        }
      };
      await d.destroy(AGENT, { lease, token: 5 });
      expect(api.count('delete')).toBe(2);
      await until(() => !api.pods.has(POD), 'Pod gone');
    });
  });
});

describe('kubernetesError', () => {
  it.each([
    [400, 'KUBERNETES_INVALID', false],
    [401, 'KUBERNETES_FORBIDDEN', false],
    [403, 'KUBERNETES_FORBIDDEN', false],
    [404, 'KUBERNETES_NOT_FOUND', false],
    [409, 'KUBERNETES_CONFLICT', true],
    [410, 'KUBERNETES_REJECTED', false],
    [422, 'KUBERNETES_INVALID', false],
    [429, 'KUBERNETES_UNAVAILABLE', true],
    [500, 'KUBERNETES_UNAVAILABLE', true],
    [504, 'KUBERNETES_UNAVAILABLE', true],
  ])('HTTP %i → %s (retryable %s), with the API server message', (status, code, retryable) => {
    const error = kubernetesError(apiError(status, 'the reason'), 'doing it');
    expect({ code: error.code, retryable: error.retryable, status: error.context.status }).toEqual({ code, retryable, status });
    expect(error.message).toBe(`doing it: the Kubernetes API answered HTTP ${status}: the reason`);
  });

  it('no answer → retryable KUBERNETES_UNREACHABLE', () => {
    const error = kubernetesError(new TypeError('fetch failed'), 'doing it');
    expect({ code: error.code, retryable: error.retryable }).toEqual({ code: 'KUBERNETES_UNREACHABLE', retryable: true });
  });

  it('resolves secret:<name>#<key> references only', () => {
    expect(defaultEnvRefResolver({ name: 'A', ref: 'secret:my-secret#token' })).toEqual({ name: 'A', secretName: 'my-secret', key: 'token' });
    expect(() => defaultEnvRefResolver({ name: 'A', ref: 'config:support/model' })).toThrow(/cannot be resolved/);
  });

});
