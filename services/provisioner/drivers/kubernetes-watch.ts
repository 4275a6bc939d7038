/**
 * The kubernetes driver's Pod watch: one `list` of this deployment's agent Pods per
 * `pollIntervalMs`, whatever the number of agents, mapped to driver events. A start watch reports
 * Ready → STARTED, Failed/Succeeded or gone → PROCESS_EXITED (the `agent` container's exit code and
 * signal), an image that can never be pulled → DRIVER_FAILED; a stop watch reports STOPPED once
 * the Pod is gone. Pods found running that this process did not start (a restarted provisioner)
 * are adopted, so their end is still reported.
 */
import { constants as osConstants } from 'node:os';
import type { Logger } from '../../../lib/logger.ts';
import { kubernetesError, type PodApi, type PodObject } from './kubernetes-api.ts';
import { LABEL_AGENT_ID, LABEL_ATTEMPT, LABEL_GENERATION, podNameFor } from './kubernetes-manifest.ts';
import type { DriverEvent, StartFence } from './types.ts';

/** Waiting reasons of the agent container that end a start attempt, and whether retrying can help. */
const START_FAILURES: Readonly<Record<string, boolean>> = {
  InvalidImageName: false,
  ErrImageNeverPull: false,
  ErrImagePull: true,
  ImagePullBackOff: true,
  CreateContainerConfigError: true,
  CreateContainerError: true,
};

/** The fence a Pod was created for (its labels), null when unlabelled. */
export function fenceOfPod(pod: PodObject): StartFence | null {
  const labels = pod.metadata?.labels ?? {};
  const generation = Number(labels[LABEL_GENERATION]);
  const attempt = Number(labels[LABEL_ATTEMPT]);
  return Number.isInteger(generation) && Number.isInteger(attempt) && labels[LABEL_GENERATION] !== undefined && labels[LABEL_ATTEMPT] !== undefined
    ? { generation, attempt }
    : null;
}

export function isReady(pod: PodObject): boolean {
  return (pod.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

export function isFinished(pod: PodObject): boolean {
  return pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
}

function agentContainer(pod: PodObject) {
  const statuses = pod.status?.containerStatuses ?? [];
  return statuses.find((s) => s.name === 'agent') ?? statuses[0];
}

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, number]) => [number, name]));

/** Exit code and signal of the agent container, when it terminated. */
export function exitOf(pod: PodObject): { exitCode: number | null; signal: string | null } | null {
  const terminated = agentContainer(pod)?.state?.terminated;
  if (!terminated) return null;
  let signal = terminated.signal !== undefined ? (SIGNAL_NAMES.get(terminated.signal) ?? `SIG${terminated.signal}`) : null;
  // Runtimes report a signal death as exit code 128 + n more often than through `signal`.
  if (signal === null && terminated.exitCode > 128 && terminated.exitCode < 160) signal = SIGNAL_NAMES.get(terminated.exitCode - 128) ?? null;
  return { exitCode: terminated.exitCode, signal };
}

export function instanceIdOf(podName: string, fence: StartFence): string {
  return `${podName}/${fence.generation}.${fence.attempt}`;
}

export function agentIdOfPod(pod: PodObject): string | undefined {
  return pod.metadata?.annotations?.[LABEL_AGENT_ID] ?? pod.metadata?.labels?.[LABEL_AGENT_ID];
}

export interface Watch {
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

export interface PodWatcherOptions {
  readonly api: () => Promise<PodApi>;
  readonly namespace: string;
  /** This deployment's agent Pods (managed-by and instance labels). */
  readonly labelSelector: string;
  readonly pollIntervalMs: number;
  readonly emit: (agentId: string, event: DriverEvent) => void;
  readonly log: Logger;
  /** An agent with an operation under way is left to it, not adopted by a poll. */
  readonly busy: (agentId: string) => boolean;
}

export interface PodWatcher {
  get(agentId: string): Watch | undefined;
  forget(agentId: string): void;
  /** Watches a start of `pod` (begins polling at once). */
  watchStart(agentId: string, pod: PodObject, fence: StartFence, startedReported: boolean): Watch;
  /** From now on the Pod's end answers a stop (STOPPED), not a PROCESS_EXITED. */
  watchStop(agentId: string, pod: PodObject, podName: string): Watch;
  /** Applies what a Pod (or its absence) means to one watch. */
  observe(watch: Watch, pod: PodObject | undefined): void;
  /** Polls as soon as possible. */
  poke(): void;
  close(): Promise<void>;
}

export function createPodWatcher(options: PodWatcherOptions): PodWatcher {
  const { log, emit, namespace } = options;
  const watches = new Map<string, Watch>();
  let closed = false;
  let pollTimer: NodeJS.Timeout | null = null;
  let polling: Promise<void> | null = null;
  let polls = 0;

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

  function observe(watch: Watch, pod: PodObject | undefined): void {
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
      const client = await options.api();
      pods = (await client.listNamespacedPod({ namespace, labelSelector: options.labelSelector })).items;
    } catch (error) {
      const failure = kubernetesError(error, `listing the agent Pods of namespace ${namespace}`);
      log.warn({ code: failure.code, err: failure.message }, 'polling the agent Pods failed; retrying');
      return;
    }
    const byName = new Map<string, PodObject>();
    for (const pod of pods) if (pod.metadata?.name !== undefined) byName.set(pod.metadata.name, pod);
    for (const watch of [...watches.values()]) if (watch.since < poll) observe(watch, byName.get(watch.podName));
    // Adopt live Pods started by an earlier provisioner, so their end is reported too.
    for (const pod of pods) {
      const agentId = agentIdOfPod(pod);
      const fence = fenceOfPod(pod);
      if (agentId === undefined || fence === null || watches.has(agentId) || options.busy(agentId)) continue;
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
        schedulePoll(options.pollIntervalMs);
      });
    }, delayMs);
    pollTimer.unref();
  }

  // Adoption begins at once; the loop then runs every pollIntervalMs.
  schedulePoll(0);

  return {
    get: (agentId) => watches.get(agentId),
    forget: (agentId) => void watches.delete(agentId),
    watchStart,
    watchStop(agentId, pod, podName) {
      const uid = pod.metadata?.uid ?? null;
      const previous = watches.get(agentId);
      const watch: Watch = {
        agentId,
        podName,
        mode: 'stop',
        fence: null,
        uid,
        startedReported: false,
        failureReported: false,
        lastExit: exitOf(pod) ?? (previous?.uid === uid ? previous.lastExit : null),
        since: polls,
      };
      watches.set(agentId, watch);
      return watch;
    },
    observe,
    poke: () => schedulePoll(0),
    async close() {
      closed = true;
      if (pollTimer !== null) clearTimeout(pollTimer);
      pollTimer = null;
      await polling?.catch(() => undefined);
      watches.clear();
    },
  };
}
