/**
 * The `kubernetes` allocator driver: one Pod per agent (built by `buildAgentPod`), named from the
 * agentId, so the API server itself refuses a second instance (409 AlreadyExists).
 *
 * - provision: builds the Pod once to validate the spec (a permanent POD_SPEC_INVALID when it cannot
 *   become a Pod); no API call: the namespace is the deployment's, checked by the first create.
 * - start: creates the Pod. A Pod of the same fence already there → no-op (STARTED again if it is
 *   Ready); a Pod of an older fence → deleted (uid precondition), waited out, then the new one
 *   created; a Pod of a newer fence → the start is stale, ignored. Then the Pod is watched by
 *   polling: Ready → STARTED; Failed/Succeeded or gone → PROCESS_EXITED (the `agent` container's
 *   exit code and signal); an image that can never be pulled → DRIVER_FAILED.
 * - stop: deletes with `gracePeriodSeconds` (the kubelet sends SIGTERM, then SIGKILL after it);
 *   STOPPED once the Pod is gone. Deletions are never forced (grace ≥ 1 s): the name is only free
 *   again once the kubelet confirmed the container ended, so two instances never overlap.
 * - destroy: deletes (404 is fine); observe / list: from the API.
 * - API errors: 400/422 (invalid) and 401/403 (not allowed) are permanent; 409, 429, 5xx and no
 *   answer at all are retryable. In `start` they become DRIVER_FAILED events (retryable or not);
 *   the other methods throw them as AppErrors.
 *
 * Watching is one `list` of the managed Pods (label `app.kubernetes.io/managed-by=agent-manager`)
 * per `pollIntervalMs`, whatever the number of agents. Pods found running that this process did
 * not start (a restarted provisioner) are adopted, so their end is still reported.
 *
 * The API is taken through `PodApi`, the four CoreV1Api calls used: `CoreV1Api` of
 * @kubernetes/client-node satisfies it (`createKubernetesPodApi`), and tests pass a fake.
 */
import { constants as osConstants } from 'node:os';
import { existsSync, readFileSync } from 'node:fs';
import { createKeyedQueue } from '../../../lib/keyed-queue.ts';
import { createEventEmitter } from './emit.ts';
import type { Logger } from '../../../lib/logger.ts';
import type { EnvironmentReference } from '../../../lib/contracts/types.ts';
import { AppError, errorMessage, isAppError, permanentError, retryableError } from '../../../lib/errors.ts';
import {
  buildAgentPod,
  LABEL_AGENT_ID,
  LABEL_ATTEMPT,
  LABEL_GENERATION,
  podNameFor,
  RESERVED_ENV,
  type PodManifest,
  type PodManifestOptions,
  type SecretEnvRef,
} from './kubernetes-manifest.ts';
import type { AgentWorkload, AllocatorDriver, DriverEventListener, ObservedAgent, StartFence } from './types.ts';

// ---- the API surface used ------------------------------------------------------------------

export interface PodContainerState {
  waiting?: { reason?: string; message?: string };
  running?: { startedAt?: Date };
  terminated?: { exitCode: number; signal?: number; reason?: string; message?: string };
}

/** The fields of a `V1Pod` this driver reads. */
export interface PodObject {
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    labels?: { [key: string]: string };
    annotations?: { [key: string]: string };
    deletionTimestamp?: Date;
  };
  status?: {
    phase?: string;
    reason?: string;
    message?: string;
    conditions?: Array<{ type: string; status: string; reason?: string; message?: string }>;
    containerStatuses?: Array<{ name: string; ready: boolean; state?: PodContainerState }>;
  };
}

/** The CoreV1Api calls the driver makes (object-parameter style of @kubernetes/client-node 1.x/2.x). */
export interface PodApi {
  createNamespacedPod(param: { namespace: string; body: PodManifest }): Promise<PodObject>;
  readNamespacedPod(param: { name: string; namespace: string }): Promise<PodObject>;
  deleteNamespacedPod(param: { name: string; namespace: string; gracePeriodSeconds?: number; body?: { preconditions?: { uid?: string } } }): Promise<unknown>;
  listNamespacedPod(param: { namespace: string; labelSelector?: string }): Promise<{ items: PodObject[] }>;
}

/** CoreV1Api from the default kubeconfig (in-cluster service account, KUBECONFIG or ~/.kube/config). */
export async function createKubernetesPodApi(): Promise<PodApi> {
  // Loaded on demand: the client is ESM-only and large, and only this driver needs it.
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  config.loadFromDefault();
  const api: PodApi = config.makeApiClient(k8s.CoreV1Api);
  return api;
}

// ---- errors --------------------------------------------------------------------------------

/** The HTTP status of a client-node error (ApiException.code), or undefined when no answer came. */
export function httpStatusOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const e = error as { code?: unknown; statusCode?: unknown; status?: unknown; response?: { statusCode?: unknown } };
  for (const value of [e.code, e.statusCode, e.status, e.response?.statusCode]) {
    if (typeof value === 'number' && value >= 100 && value < 600) return value;
  }
  return undefined;
}

/** The API server's own explanation (a Status object's `message`) when there is one. */
function apiReason(error: unknown): string {
  const body = (error as { body?: unknown }).body;
  let parsed: unknown = body;
  if (typeof body === 'string') {
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = body;
    }
  }
  if (typeof parsed === 'object' && parsed !== null && typeof (parsed as { message?: unknown }).message === 'string') {
    return (parsed as { message: string }).message;
  }
  if (typeof parsed === 'string' && parsed !== '') return parsed.slice(0, 300);
  return errorMessage(error).slice(0, 300);
}

/**
 * Maps a Kubernetes API failure to the project's taxonomy: invalid (400, 422) and not allowed
 * (401, 403) will fail the same way again; a conflict (409), throttling (429), a server error (5xx)
 * or no answer may succeed later.
 */
export function kubernetesError(error: unknown, what: string): AppError {
  if (isAppError(error)) return error;
  const status = httpStatusOf(error);
  const reason = apiReason(error);
  const context = { status: status ?? null };
  if (status === undefined) return retryableError('KUBERNETES_UNREACHABLE', `${what}: the Kubernetes API did not answer: ${reason}`, error, context);
  const message = `${what}: the Kubernetes API answered HTTP ${status}: ${reason}`;
  if (status === 401 || status === 403) return permanentError('KUBERNETES_FORBIDDEN', message, error, context);
  if (status === 400 || status === 422) return permanentError('KUBERNETES_INVALID', message, error, context);
  if (status === 404) return permanentError('KUBERNETES_NOT_FOUND', message, error, context);
  if (status === 409) return retryableError('KUBERNETES_CONFLICT', message, error, context);
  if (status === 429 || status >= 500) return retryableError('KUBERNETES_UNAVAILABLE', message, error, context);
  return permanentError('KUBERNETES_REJECTED', message, error, context);
}

// ---- options -------------------------------------------------------------------------------

export interface KubernetesDriverOptions {
  readonly onEvent: DriverEventListener;
  readonly logger: Logger;
  /** The API (or how to get it); default: CoreV1Api from the default kubeconfig. */
  readonly api?: PodApi | (() => Promise<PodApi>);
  /** Where the agents' Pods go; default: this Pod's namespace (service account), else `default`. */
  readonly namespace?: string;
  /** Image of agents whose spec names a template and no image. */
  readonly templateImages?: Readonly<Record<string, string>>;
  /** Image when neither the spec nor its template gives one (e.g. the heartbeat agent's). */
  readonly defaultImage?: string;
  /** Plain (non-secret) environment of every agent: brokers, registry URL, heartbeat topic… */
  readonly agentEnv?: Readonly<Record<string, string>>;
  /** Whole ConfigMaps / Secrets exposed to every agent as environment. */
  readonly envFromConfigMaps?: readonly string[];
  readonly envFromSecrets?: readonly string[];
  readonly serviceAccountName?: string;
  readonly imagePullSecrets?: readonly string[];
  readonly podOptions?: PodManifestOptions;
  /** Node label an agent's region must match (e.g. `topology.kubernetes.io/region`); unset: region ignored. */
  readonly regionLabel?: string;
  /** Grace written into the Pod (terminationGracePeriodSeconds) for deletions not asked by `stop`. Default 30 s. */
  readonly defaultStopGraceMs?: number;
  /**
   * Maps a spec's environment reference to a Secret key. Default: `secret:<secret-name>#<key>`;
   * any other scheme (vault:, config:…) is refused permanently unless this resolves it.
   */
  readonly resolveEnvRef?: (ref: EnvironmentReference) => SecretEnvRef;
  /** How often Pods are polled. Default 2 s. */
  readonly pollIntervalMs?: number;
  /** How long a replaced Pod may take to disappear. Default 60 s. */
  readonly deleteWaitMs?: number;
}

const MANAGED_SELECTOR = 'app.kubernetes.io/managed-by=agent-manager';
const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';
/** Waiting reasons of the agent container that end a start attempt, and whether retrying can help. */
const START_FAILURES: Readonly<Record<string, boolean>> = {
  InvalidImageName: false,
  ErrImageNeverPull: false,
  ErrImagePull: true,
  ImagePullBackOff: true,
  CreateContainerConfigError: true,
  CreateContainerError: true,
};

function defaultNamespace(): string {
  try {
    if (existsSync(SERVICE_ACCOUNT_NAMESPACE)) return readFileSync(SERVICE_ACCOUNT_NAMESPACE, 'utf8').trim() || 'default';
  } catch {
    // Not in a cluster.
  }
  return 'default';
}

/** `secret:<name>#<key>` → that key of that Secret. */
export function defaultEnvRefResolver(ref: EnvironmentReference): SecretEnvRef {
  const match = /^secret:([^#\s]+)#([^#\s]+)$/.exec(ref.ref);
  if (!match) {
    throw permanentError(
      'ENV_REF_UNSUPPORTED',
      `environment variable ${ref.name}: reference ${JSON.stringify(ref.ref)} cannot be resolved by the kubernetes driver (expected secret:<secret-name>#<key>)`,
    );
  }
  return { name: ref.name, secretName: match[1] ?? '', key: match[2] ?? '' };
}

function sameFence(a: StartFence, b: StartFence): boolean {
  return a.generation === b.generation && a.attempt === b.attempt;
}

function isOlder(a: StartFence, b: StartFence): boolean {
  return a.generation < b.generation || (a.generation === b.generation && a.attempt < b.attempt);
}

/** The fence a Pod was created for (its labels), null when unlabelled. */
export function fenceOfPod(pod: PodObject): StartFence | null {
  const labels = pod.metadata?.labels ?? {};
  const generation = Number(labels[LABEL_GENERATION]);
  const attempt = Number(labels[LABEL_ATTEMPT]);
  return Number.isInteger(generation) && Number.isInteger(attempt) && labels[LABEL_GENERATION] !== undefined && labels[LABEL_ATTEMPT] !== undefined
    ? { generation, attempt }
    : null;
}

function isReady(pod: PodObject): boolean {
  return (pod.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

function isFinished(pod: PodObject): boolean {
  return pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
}

function agentContainer(pod: PodObject) {
  const statuses = pod.status?.containerStatuses ?? [];
  return statuses.find((s) => s.name === 'agent') ?? statuses[0];
}

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, number]) => [number, name]));

/** Exit code and signal of the agent container, when it terminated. */
function exitOf(pod: PodObject): { exitCode: number | null; signal: string | null } | null {
  const terminated = agentContainer(pod)?.state?.terminated;
  if (!terminated) return null;
  let signal = terminated.signal !== undefined ? (SIGNAL_NAMES.get(terminated.signal) ?? `SIG${terminated.signal}`) : null;
  // Runtimes report a signal death as exit code 128 + n more often than through `signal`.
  if (signal === null && terminated.exitCode > 128 && terminated.exitCode < 160) signal = SIGNAL_NAMES.get(terminated.exitCode - 128) ?? null;
  return { exitCode: terminated.exitCode, signal };
}

function instanceIdOf(podName: string, fence: StartFence): string {
  return `${podName}/${fence.generation}.${fence.attempt}`;
}

function agentIdOfPod(pod: PodObject): string | undefined {
  return pod.metadata?.annotations?.[LABEL_AGENT_ID] ?? pod.metadata?.labels?.[LABEL_AGENT_ID];
}

interface Watch {
  readonly agentId: string;
  readonly podName: string;
  readonly mode: 'start' | 'stop';
  /** The start fence (mode start). */
  readonly fence: StartFence | null;
  /** The Pod watched; null until known. */
  uid: string | null;
  startedReported: boolean;
  failureReported: boolean;
  lastExit: { exitCode: number | null; signal: string | null } | null;
  /** The poll count when the watch began: a list begun earlier says nothing about it. */
  readonly since: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function createKubernetesDriver(options: KubernetesDriverOptions): AllocatorDriver {
  const log = options.logger.child({ component: 'driver', driver: 'kubernetes' });
  const namespace = options.namespace ?? defaultNamespace();
  const pollIntervalMs = options.pollIntervalMs ?? 2_000;
  const deleteWaitMs = options.deleteWaitMs ?? 60_000;
  const resolveEnvRef = options.resolveEnvRef ?? defaultEnvRefResolver;
  const apiSource = options.api ?? createKubernetesPodApi;
  let apiPromise: Promise<PodApi> | undefined;

  const watches = new Map<string, Watch>();
  // The operations on one agent (start, stop, destroy, observe) never interleave.
  const perAgent = createKeyedQueue();
  let closed = false;
  let pollTimer: NodeJS.Timeout | null = null;
  let polling: Promise<void> | null = null;
  let polls = 0;

  function api(): Promise<PodApi> {
    if (!apiPromise) {
      apiPromise = typeof apiSource === 'function' ? apiSource() : Promise.resolve(apiSource);
      apiPromise.catch(() => {
        apiPromise = undefined;
      });
    }
    return apiPromise.catch((error: unknown) => {
      throw isAppError(error) ? error : permanentError('KUBERNETES_CONFIG', `cannot set up the Kubernetes client: ${errorMessage(error)}`, error);
    });
  }

  const emit = createEventEmitter(options.onEvent, log, () => closed);

  function ensureOpen(): void {
    if (closed) throw permanentError('DRIVER_CLOSED', 'the kubernetes driver is closed');
  }


  /** The Pod of one start of an agent; throws a permanent error when the spec cannot make one. */
  function podFor(workload: AgentWorkload, fence: StartFence | undefined): PodManifest {
    const { spec } = workload;
    const image = spec.image ?? (spec.template !== null ? options.templateImages?.[spec.template] : undefined) ?? options.defaultImage;
    if (image === undefined || image === '') {
      throw permanentError(
        'POD_SPEC_INVALID',
        spec.template !== null
          ? `agent ${workload.agentId}: template ${spec.template} has no image configured and the spec gives none`
          : `agent ${workload.agentId}: the spec gives no image`,
      );
    }
    const secretEnv = spec.environment.map((ref) => resolveEnvRef(ref));
    const pod = buildAgentPod(
      {
        agentId: workload.agentId,
        namespace,
        image,
        ...(spec.command.length > 0 ? { command: spec.command } : {}),
        cpu: spec.resources.cpuMillicores / 1000,
        memoryMb: spec.resources.memoryMiB,
        gpuCount: spec.resources.gpuCount,
        gpuType: spec.resources.gpuType,
        division: workload.division,
        ...(fence ? { generation: fence.generation, attempt: fence.attempt } : {}),
        secretEnv,
        ...(options.envFromSecrets ? { envFromSecrets: options.envFromSecrets } : {}),
        ...(options.envFromConfigMaps ? { envFromConfigMaps: options.envFromConfigMaps } : {}),
        ...(options.serviceAccountName !== undefined ? { serviceAccountName: options.serviceAccountName } : {}),
        ...(options.imagePullSecrets ? { imagePullSecrets: options.imagePullSecrets } : {}),
        stopGraceMs: options.defaultStopGraceMs ?? 30_000,
      },
      options.podOptions,
    );
    const container = pod.spec.containers[0];
    if (container) {
      const taken = new Set<string>([...RESERVED_ENV, ...container.env.map((e) => e.name), 'AGENT_INSTANCE_ID']);
      for (const [name, value] of Object.entries(options.agentEnv ?? {})) {
        if (!taken.has(name)) container.env.push({ name, value });
      }
      if (fence) container.env.push({ name: 'AGENT_INSTANCE_ID', value: instanceIdOf(pod.metadata.name, fence) });
    }
    if (options.regionLabel !== undefined && workload.region !== null) pod.spec.nodeSelector[options.regionLabel] = workload.region;
    return pod;
  }

  /** The Pod, or null when there is none (404). */
  async function readPod(name: string, what: string): Promise<PodObject | null> {
    const client = await api();
    try {
      return await client.readNamespacedPod({ name, namespace });
    } catch (error) {
      if (httpStatusOf(error) === 404) return null;
      throw kubernetesError(error, what);
    }
  }

  /** Deletes (never forced); true when the Pod existed. A failed uid precondition (409) means it is already gone. */
  async function deletePod(name: string, graceSeconds: number, uid: string | null, what: string): Promise<boolean> {
    const client = await api();
    try {
      await client.deleteNamespacedPod({
        name,
        namespace,
        gracePeriodSeconds: Math.max(1, Math.ceil(graceSeconds)),
        ...(uid !== null ? { body: { preconditions: { uid } } } : {}),
      });
      return true;
    } catch (error) {
      const status = httpStatusOf(error);
      if (status === 404) return false;
      if (status === 409 && uid !== null) return false;
      throw kubernetesError(error, what);
    }
  }

  /** Waits until the Pod `uid` no longer exists. */
  async function waitPodGone(name: string, uid: string | null, what: string): Promise<void> {
    const deadline = Date.now() + deleteWaitMs;
    for (;;) {
      const pod = await readPod(name, what);
      if (pod === null || (uid !== null && pod.metadata?.uid !== uid)) return;
      if (Date.now() >= deadline) throw retryableError('POD_DELETE_TIMEOUT', `${what}: Pod ${name} still exists ${deleteWaitMs} ms after its deletion`);
      await sleep(Math.min(pollIntervalMs, 1_000));
    }
  }

  function watchStart(agentId: string, pod: PodObject, fence: StartFence, startedReported: boolean): Watch {
    const podName = pod.metadata?.name ?? podNameFor(agentId);
    const watch: Watch = {
      agentId,
      podName,
      mode: 'start',
      fence,
      uid: pod.metadata?.uid ?? null,
      startedReported,
      failureReported: false,
      lastExit: exitOf(pod),
      since: polls,
    };
    watches.set(agentId, watch);
    schedulePoll(0);
    return watch;
  }

  // ---- polling -------------------------------------------------------------------------------

  /** Applies what a Pod (or its absence) means to one watch. */
  function observeWatch(watch: Watch, pod: PodObject | undefined): void {
    if (watches.get(watch.agentId) !== watch) return;
    const fence = watch.fence;
    if (pod !== undefined && watch.uid !== null && pod.metadata?.uid !== watch.uid) pod = undefined;
    if (pod !== undefined) watch.uid ??= pod.metadata?.uid ?? null;
    if (pod !== undefined) watch.lastExit = exitOf(pod) ?? watch.lastExit;

    if (watch.mode === 'stop') {
      if (pod === undefined) {
        watches.delete(watch.agentId);
        emit(watch.agentId, { type: 'STOPPED', exitCode: watch.lastExit?.exitCode ?? null, signal: watch.lastExit?.signal ?? null });
      }
      return;
    }
    if (fence === null) return;
    if (pod === undefined || isFinished(pod)) {
      watches.delete(watch.agentId);
      const exit = pod !== undefined ? (exitOf(pod) ?? watch.lastExit) : watch.lastExit;
      log.info({ agentId: watch.agentId, pod: watch.podName, phase: pod?.status?.phase ?? 'gone', ...exit }, 'agent Pod ended');
      emit(watch.agentId, { type: 'PROCESS_EXITED', generation: fence.generation, attempt: fence.attempt, exitCode: exit?.exitCode ?? null, signal: exit?.signal ?? null });
      return;
    }
    if (pod.metadata?.deletionTimestamp !== undefined) return;
    if (!watch.startedReported && isReady(pod)) {
      watch.startedReported = true;
      log.info({ agentId: watch.agentId, pod: watch.podName, fence }, 'agent Pod ready');
      emit(watch.agentId, { type: 'STARTED', generation: fence.generation, attempt: fence.attempt, instanceId: instanceIdOf(watch.podName, fence) });
      return;
    }
    const waiting = agentContainer(pod)?.state?.waiting;
    const reason = waiting?.reason;
    if (!watch.startedReported && !watch.failureReported && reason !== undefined && reason in START_FAILURES) {
      watch.failureReported = true;
      emit(watch.agentId, {
        type: 'DRIVER_FAILED',
        generation: fence.generation,
        attempt: fence.attempt,
        reason: `Pod ${watch.podName}: ${reason}${waiting?.message ? `: ${waiting.message}` : ''}`,
        retryable: START_FAILURES[reason] === true,
      });
    }
  }

  async function pollOnce(): Promise<void> {
    const poll = ++polls;
    let pods: PodObject[];
    try {
      const client = await api();
      pods = (await client.listNamespacedPod({ namespace, labelSelector: MANAGED_SELECTOR })).items;
    } catch (error) {
      const failure = kubernetesError(error, `listing the agent Pods of namespace ${namespace}`);
      log.warn({ code: failure.code, err: failure.message }, 'polling the agent Pods failed; retrying');
      return;
    }
    const byName = new Map<string, PodObject>();
    for (const pod of pods) if (pod.metadata?.name !== undefined) byName.set(pod.metadata.name, pod);
    for (const watch of [...watches.values()]) if (watch.since < poll) observeWatch(watch, byName.get(watch.podName));
    // Adopt live Pods started by an earlier provisioner, so their end is reported too.
    for (const pod of pods) {
      const agentId = agentIdOfPod(pod);
      const fence = fenceOfPod(pod);
      if (agentId === undefined || fence === null || watches.has(agentId) || perAgent.busy(agentId)) continue;
      if (pod.metadata?.deletionTimestamp !== undefined || isFinished(pod) || pod.metadata?.name !== podNameFor(agentId)) continue;
      log.info({ agentId, pod: pod.metadata.name, fence }, 'adopted a running agent Pod');
      watchStart(agentId, pod, fence, isReady(pod));
    }
  }

  function schedulePoll(delayMs: number): void {
    if (closed || polling !== null) return;
    if (pollTimer !== null) {
      if (delayMs > 0) return;
      clearTimeout(pollTimer);
    }
    pollTimer = setTimeout(() => {
      pollTimer = null;
      polling = pollOnce().finally(() => {
        polling = null;
        schedulePoll(pollIntervalMs);
      });
    }, delayMs);
    pollTimer.unref();
  }

  // Adoption begins at once; the loop then runs every pollIntervalMs.
  schedulePoll(0);

  // ---- the driver ----------------------------------------------------------------------------

  return {
    name: 'kubernetes',

    async provision(workload: AgentWorkload) {
      ensureOpen();
      // Nothing to create ahead of the Pod; a spec that cannot become one fails here, permanently.
      podFor(workload, undefined);
    },

    async start(workload: AgentWorkload, fence: StartFence) {
      ensureOpen();
      const { agentId } = workload;
      const failed = (error: unknown) => {
        const failure = kubernetesError(error, `starting agent ${agentId}`);
        log.error({ agentId, fence, code: failure.code, err: failure.message }, 'start failed');
        emit(agentId, { type: 'DRIVER_FAILED', generation: fence.generation, attempt: fence.attempt, reason: failure.message, retryable: failure.retryable });
      };
      let manifest: PodManifest;
      try {
        manifest = podFor(workload, fence);
      } catch (error) {
        failed(error);
        return;
      }
      const name = manifest.metadata.name;
      await perAgent.run(agentId, async () => {
        try {
          for (let round = 0; round < 5; round++) {
            const existing = await readPod(name, `reading Pod ${name}`);
            if (existing !== null) {
              const uid = existing.metadata?.uid ?? null;
              const running = fenceOfPod(existing);
              if (existing.metadata?.deletionTimestamp !== undefined) {
                await waitPodGone(name, uid, `waiting for Pod ${name} to go`);
                continue;
              }
              if (running !== null && sameFence(running, fence)) {
                // A repeat. Keep (or begin) watching it; if it is Ready already, say so again.
                const watch = watches.get(agentId);
                if (watch?.mode !== 'start' || watch.uid !== uid) watchStart(agentId, existing, fence, false);
                else if (watch.startedReported && isReady(existing)) {
                  emit(agentId, { type: 'STARTED', generation: fence.generation, attempt: fence.attempt, instanceId: instanceIdOf(name, fence) });
                }
                return;
              }
              if (running !== null && !isOlder(running, fence)) {
                log.warn({ agentId, running, requested: fence }, 'start of an older fence ignored: a newer Pod exists');
                return;
              }
              log.info({ agentId, pod: name, old: running, fence }, 'replacing the Pod of an older start');
              watches.delete(agentId);
              await deletePod(name, 1, uid, `deleting the older Pod ${name}`);
              await waitPodGone(name, uid, `waiting for the older Pod ${name} to go`);
            }
            const client = await api();
            let created: PodObject;
            try {
              created = await client.createNamespacedPod({ namespace, body: manifest });
            } catch (error) {
              // AlreadyExists: another writer was faster; look again.
              if (httpStatusOf(error) === 409) continue;
              if (httpStatusOf(error) === 404) {
                throw permanentError('KUBERNETES_NAMESPACE_NOT_FOUND', `creating Pod ${name}: namespace ${namespace} does not exist`, error);
              }
              throw kubernetesError(error, `creating Pod ${name}`);
            }
            log.info({ agentId, pod: name, fence }, 'agent Pod created');
            watchStart(agentId, created, fence, false);
            return;
          }
          throw retryableError('KUBERNETES_CONFLICT', `creating Pod ${name}: it kept changing under us; try again`);
        } catch (error) {
          failed(error);
        }
      });
    },

    async stop(agentId: string, graceMs: number) {
      ensureOpen();
      const name = podNameFor(agentId);
      await perAgent.run(agentId, async () => {
        const pod = await readPod(name, `stopping agent ${agentId}`);
        if (pod === null) {
          watches.delete(agentId);
          emit(agentId, { type: 'STOPPED', exitCode: null, signal: null });
          return;
        }
        const uid = pod.metadata?.uid ?? null;
        const previous = watches.get(agentId);
        const watch: Watch = {
          agentId,
          podName: name,
          mode: 'stop',
          fence: null,
          uid,
          startedReported: false,
          failureReported: false,
          lastExit: exitOf(pod) ?? (previous?.uid === uid ? previous.lastExit : null),
          since: polls,
        };
        // From now on its end is the answer to this stop, not a PROCESS_EXITED.
        watches.set(agentId, watch);
        const grace = Math.max(0, Number.isFinite(graceMs) ? graceMs : 0) / 1000;
        try {
          const existed = await deletePod(name, grace, uid, `stopping agent ${agentId}`);
          if (!existed) observeWatch(watch, undefined);
          else schedulePoll(0);
        } catch (error) {
          if (watches.get(agentId) === watch) watches.delete(agentId);
          throw error;
        }
      });
    },

    async destroy(agentId: string) {
      ensureOpen();
      const name = podNameFor(agentId);
      await perAgent.run(agentId, async () => {
        watches.delete(agentId);
        await deletePod(name, 1, null, `destroying agent ${agentId}`);
      });
    },

    async observe(agentId: string): Promise<ObservedAgent> {
      ensureOpen();
      const name = podNameFor(agentId);
      const pod = await readPod(name, `observing agent ${agentId}`);
      if (pod === null) return { agentId, provisioned: false, running: false, fence: null, instanceId: null };
      const phase = pod.status?.phase;
      const running = pod.metadata?.deletionTimestamp === undefined && (phase === 'Running' || phase === 'Pending' || phase === undefined);
      const fence = running ? fenceOfPod(pod) : null;
      return { agentId, provisioned: true, running, fence, instanceId: fence ? instanceIdOf(name, fence) : null };
    },

    async list() {
      ensureOpen();
      const client = await api();
      let pods: PodObject[];
      try {
        pods = (await client.listNamespacedPod({ namespace, labelSelector: MANAGED_SELECTOR })).items;
      } catch (error) {
        throw kubernetesError(error, `listing the agent Pods of namespace ${namespace}`);
      }
      const ids = new Set<string>();
      for (const pod of pods) {
        const agentId = agentIdOfPod(pod);
        if (agentId !== undefined) ids.add(agentId);
      }
      return [...ids];
    },

    async close() {
      if (closed) return;
      closed = true;
      if (pollTimer !== null) clearTimeout(pollTimer);
      pollTimer = null;
      await polling?.catch(() => undefined);
      watches.clear();
      log.info({ namespace }, 'kubernetes driver closed; agent Pods keep running');
    },
  };
}
