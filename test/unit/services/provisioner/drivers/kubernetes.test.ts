/**
 * The kubernetes allocator driver's failure handling, against a small HAND-WRITTEN FAKE of the
 * CoreV1Api calls it uses (`FakePodApi` below): what a real API server cannot be made to do on
 * demand — HTTP errors of every class from create, delete, list and read, no answer at all, a writer
 * racing the create (409 AlreadyExists), a Pod already terminating or deleted by someone else — and
 * the specs refused before any call. Everything else (the Pods as admitted, Ready → STARTED, exits,
 * graceful stops and the grace recorded, replacement of an older start, instances sharing a
 * namespace, the fenced claims with their uid and resourceVersion preconditions) is tested against
 * the stack's real kube-apiserver in test/integration/services/provisioner/drivers/kubernetes.test.ts.
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
  private versions = 0;
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

  /** Only fenced stops and destroys replace (to claim a Pod): tested against the real API server. */
  async replaceNamespacedPod(param: { name: string; namespace: string; body: PodObject }): Promise<PodObject> {
    this.fail('replace', param);
    throw new Error('fake: replaceNamespacedPod is not used by these tests');
  }

  async deleteNamespacedPod(param: { name: string; namespace: string; body?: { gracePeriodSeconds?: number; preconditions?: { uid?: string; resourceVersion?: string } } }): Promise<unknown> {
    this.fail('delete', param);
    const pod = this.pods.get(param.name);
    if (!pod) throw apiError(404, `pods "${param.name}" not found`);
    pod.metadata.deletionTimestamp = new Date();
    pod.metadata.resourceVersion = this.nextVersion();
    setImmediate(() => this.finishDeletion(param.name));
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
    it('stop with no Pod reports STOPPED at once; a zero grace is still a graceful (≥ 1 s) deletion', async () => {
      const d = driver();
      await d.stop(AGENT, 1_000);
      await until(() => events.length === 1, 'STOPPED');
      expect(events[0]).toEqual([AGENT, { type: 'STOPPED', exitCode: null, signal: null }]);
      await d.start(workload(), { generation: 1, attempt: 1 });
      await d.stop(AGENT, 0);
      expect((api.calls.filter((c) => c.method === 'delete')[0]?.param as { body: { gracePeriodSeconds: number } }).body.gracePeriodSeconds).toBe(1);
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
      expect(await d.observe(AGENT)).toEqual({ agentId: AGENT, provisioned: false, running: false, ready: false, fence: null, instanceId: null });
      expect(await d.list()).toEqual([]);
    });
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
    it('refuses an instance that is not a label value', async () => {
      const d = driver({ instance: 'not a label!' });
      await expect(d.provision(workload())).rejects.toMatchObject({ code: 'POD_SPEC_INVALID' });
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

  it('403 for a namespace whose default ServiceAccount is not made yet → retryable; any other 403 stays permanent', () => {
    const race = kubernetesError(apiError(403, 'pods "agent-x" is forbidden: error looking up service account agents/default: serviceaccount "default" not found'), 'creating Pod agent-x');
    expect({ code: race.code, retryable: race.retryable }).toEqual({ code: 'KUBERNETES_SERVICE_ACCOUNT_PENDING', retryable: true });
    const named = kubernetesError(apiError(403, 'pods "agent-x" is forbidden: error looking up service account agents/agent: serviceaccount "agent" not found'), 'creating Pod agent-x');
    expect({ code: named.code, retryable: named.retryable }).toEqual({ code: 'KUBERNETES_FORBIDDEN', retryable: false });
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
