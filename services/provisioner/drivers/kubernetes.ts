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
 * - stop: deletes with `gracePeriodSeconds` in the DeleteOptions body (the kubelet sends SIGTERM, then
 *   SIGKILL after it);
 *   STOPPED once the Pod is gone. Deletions are never forced (grace ≥ 1 s): the name is only free
 *   again once the kubelet confirmed the container ended, so two instances never overlap.
 * - destroy: deletes (404 is fine); observe / list: from the API.
 * - A stop or destroy carrying a leader's fence (the reconciler's repairs) first claims the Pod:
 *   the term is written to its annotations by an update conditional on the resourceVersion read,
 *   refused (STALE_FENCE) when a newer term claimed it already, and the delete carries the claimed
 *   resourceVersion as a precondition, so a deposed leader's delete fails once a newer one claimed.
 * - API errors: 400/422 (invalid) and 401/403 (not allowed) are permanent; 409, 429, 5xx, no
 *   answer at all, and the 403 of a namespace whose `default` ServiceAccount is not made yet are
 *   retryable. In `start` they become DRIVER_FAILED events (retryable or not);
 *   the other methods throw them as AppErrors.
 *
 * Pods carry `app.kubernetes.io/instance=<instance>` (the deployment) and the driver selects on it
 * with `managed-by=agent-manager`: two deployments sharing a namespace never watch, adopt or sweep
 * each other's agents. The watch is ./kubernetes-watch.ts; the API surface and its errors
 * ./kubernetes-api.ts (tests pass a fake `PodApi`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { createKeyedQueue } from '../../../lib/keyed-queue.ts';
import { createEventEmitter } from './emit.ts';
import type { Logger } from '../../../lib/logger.ts';
import type { EnvironmentReference } from '../../../lib/contracts/types.ts';
import { errorMessage, isAppError, permanentError, retryableError } from '../../../lib/errors.ts';
import { STALE_FENCE, type LeaderFence } from '../../../lib/leader/fence.ts';
import { createKubernetesPodApi, httpStatusOf, kubernetesError, type PodApi, type PodObject } from './kubernetes-api.ts';
import {
  ANNOTATION_FENCING_LEASE,
  ANNOTATION_FENCING_TOKEN,
  buildAgentPod,
  LABEL_INSTANCE,
  LABEL_MANAGED_BY,
  podNameFor,
  RESERVED_ENV,
  type PodManifest,
  type PodManifestOptions,
  type SecretEnvRef,
} from './kubernetes-manifest.ts';
import { agentIdOfPod, createPodWatcher, fenceOfPod, instanceIdOf, isReady } from './kubernetes-watch.ts';
import { isOlder, sameFence } from './start-fence.ts';
import type { AgentWorkload, AllocatorDriver, DriverEventListener, ObservedAgent, StartFence } from './types.ts';

export { createKubernetesPodApi, httpStatusOf, kubernetesError, type PodApi, type PodContainerState, type PodObject } from './kubernetes-api.ts';
export { fenceOfPod } from './kubernetes-watch.ts';

/** The deployment a kubernetes driver belongs to when none is configured. */
export const DEFAULT_KUBERNETES_INSTANCE = 'agent-manager';

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
  /**
   * This deployment (release): the `app.kubernetes.io/instance` label of its Pods, and what it
   * watches, adopts and sweeps. Default `agent-manager`.
   */
  readonly instance?: string;
}

const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';
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

export function createKubernetesDriver(options: KubernetesDriverOptions): AllocatorDriver {
  const log = options.logger.child({ component: 'driver', driver: 'kubernetes' });
  const namespace = options.namespace ?? defaultNamespace();
  const pollIntervalMs = options.pollIntervalMs ?? 2_000;
  const deleteWaitMs = options.deleteWaitMs ?? 60_000;
  const resolveEnvRef = options.resolveEnvRef ?? defaultEnvRefResolver;
  const apiSource = options.api ?? createKubernetesPodApi;
  let apiPromise: Promise<PodApi> | undefined;

  const instance = options.instance ?? DEFAULT_KUBERNETES_INSTANCE;
  const labelSelector = `${LABEL_MANAGED_BY}=agent-manager,${LABEL_INSTANCE}=${instance}`;
  // The operations on one agent (start, stop, destroy, observe) never interleave.
  const perAgent = createKeyedQueue();
  let closed = false;

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
  const watches = createPodWatcher({ api, namespace, labelSelector, pollIntervalMs, emit, log, busy: (agentId) => perAgent.busy(agentId) });

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
        instance,
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
  async function deletePod(name: string, graceSeconds: number, uid: string | null, what: string, resourceVersion?: string): Promise<boolean> {
    const client = await api();
    try {
      // The grace goes in the DeleteOptions body: with a body the API server ignores the query parameter.
      await client.deleteNamespacedPod({
        name,
        namespace,
        body: {
          gracePeriodSeconds: Math.max(1, Math.ceil(graceSeconds)),
          ...(uid !== null ? { preconditions: { uid, ...(resourceVersion !== undefined ? { resourceVersion } : {}) } } : {}),
        },
      });
      return true;
    } catch (error) {
      const status = httpStatusOf(error);
      if (status === 404) return false;
      if (status === 409 && uid !== null && resourceVersion === undefined) return false;
      throw kubernetesError(error, what);
    }
  }

  /** The term that last claimed the Pod (its annotations), if any. */
  function claimOf(pod: PodObject): LeaderFence | null {
    const lease = pod.metadata?.annotations?.[ANNOTATION_FENCING_LEASE];
    const token = Number(pod.metadata?.annotations?.[ANNOTATION_FENCING_TOKEN]);
    return lease !== undefined && Number.isInteger(token) ? { lease, token } : null;
  }

  /**
   * Deletes the Pod for a leader's term only: claims it (annotations written by an update
   * conditional on the resourceVersion read; STALE_FENCE when a newer term of the same lease claimed
   * it), then deletes it with the claimed uid and resourceVersion as preconditions. A precondition
   * that fails (a status update, or another claim in between) sends it round again, to re-read.
   * Returns the Pod deleted (null: none was there).
   */
  async function fencedDelete(name: string, graceSeconds: number, fence: LeaderFence, what: string): Promise<PodObject | null> {
    const client = await api();
    for (let round = 0; round < 5; round++) {
      const pod = await readPod(name, what);
      if (pod === null) return null;
      const claimed = claimOf(pod);
      if (claimed !== null && claimed.lease === fence.lease && claimed.token > fence.token) {
        throw permanentError(STALE_FENCE, `${what}: Pod ${name} was claimed by a newer leader term (${claimed.token} > ${fence.token})`, undefined, { lease: fence.lease, token: fence.token, current: claimed.token });
      }
      let written: PodObject = pod;
      if (claimed?.lease !== fence.lease || claimed.token !== fence.token) {
        const annotations = { ...pod.metadata?.annotations, [ANNOTATION_FENCING_LEASE]: fence.lease, [ANNOTATION_FENCING_TOKEN]: String(fence.token) };
        try {
          written = await client.replaceNamespacedPod({ name, namespace, body: { ...pod, metadata: { ...pod.metadata, annotations } } });
        } catch (error) {
          if (httpStatusOf(error) === 409) continue;
          if (httpStatusOf(error) === 404) return null;
          throw kubernetesError(error, what);
        }
      }
      try {
        await deletePod(name, graceSeconds, written.metadata?.uid ?? pod.metadata?.uid ?? null, what, written.metadata?.resourceVersion);
        return written;
      } catch (error) {
        if (isAppError(error) && error.code === 'KUBERNETES_CONFLICT') continue;
        throw error;
      }
    }
    throw retryableError('KUBERNETES_CONFLICT', `${what}: Pod ${name} kept changing under us; try again`);
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
                if (watch?.mode !== 'start' || watch.uid !== uid) watches.watchStart(agentId, existing, fence, false);
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
              watches.forget(agentId);
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
            watches.watchStart(agentId, created, fence, false);
            return;
          }
          throw retryableError('KUBERNETES_CONFLICT', `creating Pod ${name}: it kept changing under us; try again`);
        } catch (error) {
          failed(error);
        }
      });
    },

    async stop(agentId: string, graceMs: number, fence?: LeaderFence) {
      ensureOpen();
      const name = podNameFor(agentId);
      await perAgent.run(agentId, async () => {
        const what = `stopping agent ${agentId}`;
        const pod = await readPod(name, what);
        if (pod === null) {
          watches.forget(agentId);
          emit(agentId, { type: 'STOPPED', exitCode: null, signal: null });
          return;
        }
        const watch = watches.watchStop(agentId, pod, name);
        const grace = Math.max(0, Number.isFinite(graceMs) ? graceMs : 0) / 1000;
        try {
          const existed = fence === undefined ? await deletePod(name, grace, pod.metadata?.uid ?? null, what) : (await fencedDelete(name, grace, fence, what)) !== null;
          if (!existed) watches.observe(watch, undefined);
          else watches.poke();
        } catch (error) {
          if (watches.get(agentId) === watch) watches.forget(agentId);
          throw error;
        }
      });
    },

    async destroy(agentId: string, fence?: LeaderFence) {
      ensureOpen();
      const name = podNameFor(agentId);
      await perAgent.run(agentId, async () => {
        const what = `destroying agent ${agentId}`;
        if (fence !== undefined) await fencedDelete(name, 1, fence, what);
        else await deletePod(name, 1, null, what);
        watches.forget(agentId);
      });
    },

    async observe(agentId: string): Promise<ObservedAgent> {
      ensureOpen();
      const name = podNameFor(agentId);
      const pod = await readPod(name, `observing agent ${agentId}`);
      if (pod === null) return { agentId, provisioned: false, running: false, ready: false, fence: null, instanceId: null };
      const phase = pod.status?.phase;
      const running = pod.metadata?.deletionTimestamp === undefined && (phase === 'Running' || phase === 'Pending' || phase === undefined);
      const fence = running ? fenceOfPod(pod) : null;
      return { agentId, provisioned: true, running, ready: running && isReady(pod), fence, instanceId: fence ? instanceIdOf(name, fence) : null };
    },

    async list() {
      ensureOpen();
      const client = await api();
      let pods: PodObject[];
      try {
        pods = (await client.listNamespacedPod({ namespace, labelSelector })).items;
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
      await watches.close();
      log.info({ namespace }, 'kubernetes driver closed; agent Pods keep running');
    },
  };
}
