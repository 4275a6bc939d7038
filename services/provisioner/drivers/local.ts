/**
 * The `local` allocator driver: every agent is a real child process on this machine,
 * `node <agentProgram>` (the heartbeat agent by default), in its own folder `<stateDir>/<agentId>/`.
 *
 * - start: spawns the agent DETACHED (its own session and process group, so signals reach every
 *   process it starts and nothing of the provisioner's terminal reaches it), stdout/stderr appended
 *   to `agent.log` in its folder, an IPC channel only to hear `{ type: 'ready', instanceId }` (sent
 *   once its first heartbeat is acknowledged → STARTED). `state.json` records pid, fence,
 *   instanceId and the kernel's start time of the process, so a restarted provisioner adopts the
 *   agents that outlived it, and a pid reused by an unrelated process is never mistaken for one.
 *   The child is unref'd: the provisioner can exit while agents live on.
 * - An exit nobody asked for is PROCESS_EXITED (exit code and signal for our own children; both
 *   null for adopted processes, which are not our children: their end is seen by polling).
 * - stop: SIGTERM to the process group, SIGKILL after `graceMs`, then STOPPED.
 * - destroy: SIGKILL, wait until gone, remove the folder.
 *
 * Agents do NOT inherit the provisioner's environment (`agentEnvironment`). The workload's spec
 * (image, command, environment references) is not used: this driver always runs `agentProgram`,
 * never a command taken from a message.
 *
 * This file supervises the instances (spawn, exit, ready, stop, kill, adoption); the folders and
 * their records are ./local-state.ts, the process primitives ./local-process.ts. Agents of another
 * deployment sharing the state folder (its `instance` file says so) are neither adopted nor listed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { createKeyedQueue } from '../../../lib/keyed-queue.ts';
import { createEventEmitter } from './emit.ts';
import type { Logger } from '../../../lib/logger.ts';
import { errorCode, errorMessage, isAppError, isRetryable, permanentError, retryableError } from '../../../lib/errors.ts';
import { agentEnvironment, isAlive, killGroupRemains, processStartOf, signalGroup as signalPid } from './local-process.ts';
import { createStateStore, LOG_FILE, type LocalAgentState } from './local-state.ts';
import { isOlder, sameFence } from './start-fence.ts';
import type { AgentWorkload, AllocatorDriver, DriverEventListener, ObservedAgent, StartFence } from './types.ts';

export type { LocalAgentState } from './local-state.ts';

/** The deployment a local driver belongs to when none is configured. */
export const DEFAULT_LOCAL_INSTANCE = 'agent-manager';

export interface LocalDriverOptions {
  /** Where each agent's folder lives (`<stateDir>/<agentId>/`: state.json, agent.log). */
  readonly stateDir: string;
  /** The agent program; default `<cwd>/agents/heartbeat-agent.ts` (the service runs from the project root). */
  readonly agentProgram?: string;
  /** The Node.js binary; default this process's. */
  readonly nodePath?: string;
  /** Environment of every agent (KAFKA_BROKERS, SCHEMA_REGISTRY_URL, HEARTBEAT_TOPIC…). */
  readonly agentEnv: Readonly<Record<string, string>>;
  readonly onEvent: DriverEventListener;
  readonly logger: Logger;
  /** An agent that has not said ready by then is killed and reported DRIVER_FAILED (retryable). Default 60 s. */
  readonly readyTimeoutMs?: number;
  /** How often adopted agents (not our children) are checked for liveness. Default 1 s. */
  readonly livenessPollMs?: number;
  /** How long to wait for a SIGKILLed agent to disappear. Default 10 s. */
  readonly killWaitMs?: number;
  /**
   * This deployment (release) among those that may share `stateDir`: its folders are marked with it
   * and only they are adopted and listed (the orphan sweep). Default `agent-manager`, which also owns
   * folders made before the mark existed.
   */
  readonly instance?: string;
}

interface Instance {
  readonly agentId: string;
  readonly pid: number;
  readonly fence: StartFence;
  instanceId: string;
  readonly startedAt: string;
  readonly processStart: string | null;
  ready: boolean;
  /** Our child process; null for an adopted one (started by an earlier provisioner). */
  child: ChildProcess | null;
  exited: boolean;
  /** A stop asked for its end: STOPPED is reported when it is gone. */
  stopRequested: boolean;
  /** Its end was asked for (replaced, destroyed, ready timeout): no PROCESS_EXITED. */
  suppressExit: boolean;
  killAt: number | null;
  killTimer: NodeJS.Timeout | null;
  readyTimer: NodeJS.Timeout | null;
  readonly gone: Array<() => void>;
}

export function createLocalDriver(options: LocalDriverOptions): AllocatorDriver {
  const log = options.logger.child({ component: 'driver', driver: 'local' });
  const stateDir = resolve(options.stateDir);
  const agentProgram = resolve(options.agentProgram ?? join(process.cwd(), 'agents', 'heartbeat-agent.ts'));
  const nodePath = options.nodePath ?? process.execPath;
  const readyTimeoutMs = options.readyTimeoutMs ?? 60_000;
  const livenessPollMs = options.livenessPollMs ?? 1_000;
  const killWaitMs = options.killWaitMs ?? 10_000;
  if (!isAbsolute(nodePath)) throw permanentError('CONFIG_INVALID', `nodePath must be an absolute path, got ${nodePath}`);

  const instances = new Map<string, Instance>();
  // The operations on one agent (start, stop, destroy, observe) never interleave.
  const perAgent = createKeyedQueue();
  const instance = options.instance ?? DEFAULT_LOCAL_INSTANCE;
  const store = createStateStore({
    stateDir,
    instance,
    isDefaultInstance: instance === DEFAULT_LOCAL_INSTANCE,
    log,
    // A record of an instance already replaced by a newer one must not overwrite the newer one's.
    superseded: (agentId, state) => {
      const live = instances.get(agentId);
      return live !== undefined && live.pid !== state.pid;
    },
  });
  let poller: NodeJS.Timeout | null = null;
  let closed = false;

  // ---- events ------------------------------------------------------------------------------

  const emit = createEventEmitter(options.onEvent, log, () => closed);

  // ---- helpers -----------------------------------------------------------------------------

  function ensureOpen(): void {
    if (closed) throw permanentError('DRIVER_CLOSED', 'the local driver is closed');
  }

  const folderOf = (agentId: string) => store.folderOf(agentId);

  function stateOf(inst: Instance, exit?: { code: number | null; signal: string | null }): LocalAgentState {
    return {
      version: 1,
      agentId: inst.agentId,
      pid: inst.pid,
      generation: inst.fence.generation,
      attempt: inst.fence.attempt,
      instanceId: inst.instanceId,
      startedAt: inst.startedAt,
      processStart: inst.processStart,
      ready: inst.ready,
      ...(exit ? { exitedAt: new Date().toISOString(), exitCode: exit.code, signal: exit.signal } : {}),
    };
  }

  function alive(inst: Instance): boolean {
    if (inst.exited) return false;
    if (inst.child !== null) return inst.child.exitCode === null && inst.child.signalCode === null;
    return isAlive(inst.pid, inst.processStart);
  }

  function signalGroup(inst: Instance, signal: NodeJS.Signals): void {
    signalPid(inst.agentId, inst.pid, signal, log);
  }

  function clearTimers(inst: Instance): void {
    if (inst.killTimer) clearTimeout(inst.killTimer);
    if (inst.readyTimer) clearTimeout(inst.readyTimer);
    inst.killTimer = null;
    inst.readyTimer = null;
  }

  /** The instance ended (exit event of our child, or an adopted pid found dead). Runs once. */
  function onGone(inst: Instance, code: number | null, signal: string | null): void {
    if (inst.exited) return;
    inst.exited = true;
    clearTimers(inst);
    // Whatever the agent started in its group goes with it.
    killGroupRemains(inst.pid);
    if (instances.get(inst.agentId) === inst) instances.delete(inst.agentId);
    if (inst.child) {
      inst.child.removeAllListeners('message');
      if (inst.child.connected) inst.child.disconnect();
    }
    log.info({ agentId: inst.agentId, pid: inst.pid, exitCode: code, signal, stop: inst.stopRequested }, 'agent process ended');
    void store.write(inst.agentId, stateOf(inst, { code, signal }));
    if (inst.stopRequested) emit(inst.agentId, { type: 'STOPPED', exitCode: code, signal });
    else if (!inst.suppressExit) {
      emit(inst.agentId, { type: 'PROCESS_EXITED', generation: inst.fence.generation, attempt: inst.fence.attempt, exitCode: code, signal });
    }
    for (const resolveGone of inst.gone.splice(0)) resolveGone();
  }

  /** Polls the adopted instances (not our children, so no exit event) while there are any. */
  function ensurePoller(): void {
    if (poller !== null || closed) return;
    poller = setInterval(() => {
      let adopted = 0;
      for (const inst of [...instances.values()]) {
        if (inst.child !== null || inst.exited) continue;
        if (isAlive(inst.pid, inst.processStart)) adopted += 1;
        else onGone(inst, null, null);
      }
      if (adopted === 0 && poller !== null) {
        clearInterval(poller);
        poller = null;
      }
    }, livenessPollMs);
    poller.unref();
  }

  /** Resolves true once the instance is gone, false after `timeoutMs`. */
  async function waitGone(inst: Instance, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!inst.exited) {
      if (inst.child === null && !isAlive(inst.pid, inst.processStart)) onGone(inst, null, null);
      if (inst.exited) break;
      if (Date.now() >= deadline) return false;
      await Promise.race([new Promise<void>((r) => inst.gone.push(r)), sleep(50)]);
    }
    return true;
  }

  /** The agent's live instance: ours, or adopted from its state.json; null when none runs. */
  async function current(agentId: string): Promise<Instance | null> {
    const known = instances.get(agentId);
    if (known && !known.exited) {
      if (alive(known)) return known;
      // Our child's exit event is on its way; an adopted one is found dead now.
      if (known.child === null) onGone(known, null, null);
      return null;
    }
    const state = await store.read(agentId);
    if (state === null || state.exitedAt !== undefined || state.agentId !== agentId) return null;
    if (!isAlive(state.pid, state.processStart)) return null;
    const inst: Instance = {
      agentId,
      pid: state.pid,
      fence: { generation: state.generation, attempt: state.attempt },
      instanceId: state.instanceId,
      startedAt: state.startedAt,
      processStart: state.processStart,
      ready: state.ready,
      child: null,
      exited: false,
      stopRequested: false,
      suppressExit: false,
      killAt: null,
      killTimer: null,
      readyTimer: null,
      gone: [],
    };
    instances.set(agentId, inst);
    log.info({ agentId, pid: inst.pid, fence: inst.fence }, 'adopted a running agent');
    ensurePoller();
    return inst;
  }

  /** At start-up: adopt every agent that outlived the previous provisioner, so its end is reported. */
  const adoption = (async () => {
    await mkdir(stateDir, { recursive: true });
    for (const agentId of await store.owned()) await current(agentId);
  })().catch((error: unknown) => log.error({ stateDir, err: errorMessage(error) }, 'could not scan the state folder for running agents'));

  // ---- launching ---------------------------------------------------------------------------

  function onMessage(inst: Instance, message: unknown): void {
    const ready = typeof message === 'object' && message !== null && (message as { type?: unknown }).type === 'ready';
    if (!ready || inst.ready || inst.exited) return;
    const reported = (message as { instanceId?: unknown }).instanceId;
    if (typeof reported === 'string' && reported !== '') inst.instanceId = reported;
    inst.ready = true;
    if (inst.readyTimer) clearTimeout(inst.readyTimer);
    inst.readyTimer = null;
    if (inst.child?.connected) inst.child.disconnect();
    log.info({ agentId: inst.agentId, pid: inst.pid, instanceId: inst.instanceId }, 'agent ready');
    // Reported once state.json says ready: a provisioner that restarts after STARTED adopts a ready agent.
    void store.write(inst.agentId, stateOf(inst)).then(() => {
      if (!inst.stopRequested && !inst.suppressExit) {
        emit(inst.agentId, { type: 'STARTED', generation: inst.fence.generation, attempt: inst.fence.attempt, instanceId: inst.instanceId });
      }
    });
  }

  async function launch(agentId: string, dir: string, fence: StartFence): Promise<void> {
    // Closed while this start waited: launching now would leave an agent nobody watches.
    ensureOpen();
    await store.claim(agentId);
    const logFd = openSync(join(dir, LOG_FILE), 'a', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(nodePath, [agentProgram], {
        cwd: dir,
        detached: true,
        stdio: ['ignore', logFd, logFd, 'ipc'],
        env: agentEnvironment(agentId, fence, options.agentEnv),
      });
    } finally {
      // The child has its own copy of the descriptor once spawn returns.
      closeSync(logFd);
    }
    const pid = child.pid;
    if (pid === undefined) {
      // Spawning failed (ENOENT, EAGAIN…): the reason comes as an 'error' event.
      child.once('error', (error) => {
        log.error({ agentId, nodePath, err: errorMessage(error) }, 'could not spawn the agent');
        emit(agentId, { type: 'DRIVER_FAILED', generation: fence.generation, attempt: fence.attempt, reason: `could not spawn ${nodePath}: ${errorMessage(error)}`, retryable: true });
      });
      return;
    }
    const inst: Instance = {
      agentId,
      pid,
      fence: { generation: fence.generation, attempt: fence.attempt },
      instanceId: `${hostname()}:${pid}`,
      startedAt: new Date().toISOString(),
      processStart: processStartOf(pid),
      ready: false,
      child,
      exited: false,
      stopRequested: false,
      suppressExit: false,
      killAt: null,
      killTimer: null,
      readyTimer: null,
      gone: [],
    };
    instances.set(agentId, inst);
    child.on('message', (message) => onMessage(inst, message));
    child.on('error', (error) => log.warn({ agentId, pid, err: errorMessage(error) }, 'agent process error'));
    child.once('exit', (code, signal) => onGone(inst, code, signal));
    // Neither the process nor its IPC channel keeps the provisioner alive.
    child.unref();
    child.channel?.unref();
    inst.readyTimer = setTimeout(() => {
      inst.readyTimer = null;
      if (inst.ready || inst.exited || inst.stopRequested) return;
      log.error({ agentId, pid, readyTimeoutMs }, 'agent did not say ready in time; killing it');
      inst.suppressExit = true;
      signalGroup(inst, 'SIGKILL');
      emit(agentId, {
        type: 'DRIVER_FAILED',
        generation: fence.generation,
        attempt: fence.attempt,
        reason: `the agent did not report ready within ${readyTimeoutMs} ms (see ${join(dir, LOG_FILE)})`,
        retryable: true,
      });
    }, readyTimeoutMs);
    inst.readyTimer.unref();
    // Recorded at once, synchronously: a provisioner killed right after the spawn must still find
    // (adopt, stop, replace) this agent after its restart, never leave an orphan nobody knows.
    store.writeNow(agentId, stateOf(inst));
    log.info({ agentId, pid, fence }, 'agent spawned');
  }

  // ---- the driver --------------------------------------------------------------------------

  return {
    name: 'local',

    async provision(workload: AgentWorkload) {
      ensureOpen();
      const dir = folderOf(workload.agentId);
      try {
        await mkdir(dir, { recursive: true, mode: 0o700 });
        await store.claim(workload.agentId);
      } catch (error) {
        const message = `cannot create the agent folder ${dir}: ${errorMessage(error)}`;
        const code = (error as NodeJS.ErrnoException).code;
        throw code === 'EACCES' || code === 'EROFS' || code === 'ENOTDIR' ? permanentError('PROVISION_FAILED', message, error) : retryableError('PROVISION_FAILED', message, error);
      }
    },

    async start(workload: AgentWorkload, fence: StartFence) {
      ensureOpen();
      const { agentId } = workload;
      await adoption;
      await perAgent.run(agentId, async () => {
        try {
          const dir = folderOf(agentId);
          await mkdir(dir, { recursive: true, mode: 0o700 });
          const running = await current(agentId);
          if (running !== null && !running.stopRequested) {
            if (sameFence(running.fence, fence)) {
              // A repeat: nothing to launch. If it already said ready, say it again (the first report may be lost).
              if (running.ready) emit(agentId, { type: 'STARTED', generation: fence.generation, attempt: fence.attempt, instanceId: running.instanceId });
              return;
            }
            if (!isOlder(running.fence, fence)) {
              log.warn({ agentId, running: running.fence, requested: fence }, 'start of an older fence ignored: a newer instance runs');
              return;
            }
          }
          if (running !== null) {
            log.info({ agentId, pid: running.pid, old: running.fence, fence }, 'replacing the running instance');
            running.suppressExit = true;
            signalGroup(running, 'SIGKILL');
            if (!(await waitGone(running, killWaitMs))) {
              throw retryableError('AGENT_KILL_TIMEOUT', `the previous instance (pid ${running.pid}) did not end within ${killWaitMs} ms of SIGKILL`);
            }
          }
          // The old instance's last record goes to disk before the new one's first.
          await store.settled(agentId);
          await launch(agentId, dir, fence);
        } catch (error) {
          log.error({ agentId, fence, code: errorCode(error), err: errorMessage(error) }, 'start failed');
          emit(agentId, {
            type: 'DRIVER_FAILED',
            generation: fence.generation,
            attempt: fence.attempt,
            reason: errorMessage(error),
            retryable: isAppError(error) ? error.retryable : isRetryable(error),
          });
        }
      });
    },

    async stop(agentId: string, graceMs: number) {
      ensureOpen();
      folderOf(agentId);
      await adoption;
      await perAgent.run(agentId, async () => {
        const inst = await current(agentId);
        if (inst === null) {
          emit(agentId, { type: 'STOPPED', exitCode: null, signal: null });
          return;
        }
        const grace = Math.max(0, Number.isFinite(graceMs) ? graceMs : 0);
        const killAt = Date.now() + grace;
        if (inst.stopRequested) {
          // Already stopping: a shorter grace brings the kill forward.
          if (inst.killAt !== null && killAt >= inst.killAt) return;
        } else {
          inst.stopRequested = true;
          if (inst.readyTimer) clearTimeout(inst.readyTimer);
          inst.readyTimer = null;
          signalGroup(inst, grace === 0 ? 'SIGKILL' : 'SIGTERM');
        }
        if (inst.killTimer) clearTimeout(inst.killTimer);
        inst.killAt = killAt;
        inst.killTimer =
          grace === 0
            ? null
            : setTimeout(() => {
                inst.killTimer = null;
                if (alive(inst)) {
                  log.warn({ agentId, pid: inst.pid, graceMs: grace }, 'agent still running after the grace: SIGKILL');
                  signalGroup(inst, 'SIGKILL');
                }
              }, Math.max(0, killAt - Date.now()));
        if (inst.child === null) ensurePoller();
      });
    },

    async destroy(agentId: string) {
      ensureOpen();
      const dir = folderOf(agentId);
      await adoption;
      await perAgent.run(agentId, async () => {
        const inst = await current(agentId);
        if (inst !== null) {
          inst.suppressExit = true;
          signalGroup(inst, 'SIGKILL');
          if (!(await waitGone(inst, killWaitMs))) {
            throw retryableError('AGENT_KILL_TIMEOUT', `agent ${agentId} (pid ${inst.pid}) did not end within ${killWaitMs} ms of SIGKILL`);
          }
        }
        await store.settled(agentId);
        try {
          await rm(dir, { recursive: true, force: true });
        } catch (error) {
          throw retryableError('DESTROY_FAILED', `cannot remove ${dir}: ${errorMessage(error)}`, error);
        }
        log.info({ agentId }, 'agent destroyed');
      });
    },

    async observe(agentId: string): Promise<ObservedAgent> {
      ensureOpen();
      const dir = folderOf(agentId);
      await adoption;
      return perAgent.run(agentId, async () => {
        const inst = await current(agentId);
        const running = inst !== null && alive(inst);
        return {
          agentId,
          provisioned: existsSync(dir),
          running,
          fence: running ? { generation: inst.fence.generation, attempt: inst.fence.attempt } : null,
          instanceId: running ? inst.instanceId : null,
        };
      });
    },

    async list() {
      ensureOpen();
      await adoption;
      return store.owned();
    },

    async close() {
      if (closed) return;
      closed = true;
      await adoption;
      // Operations under way finish first (a start about to launch sees `closed` and does not).
      await perAgent.idle();
      if (poller !== null) clearInterval(poller);
      poller = null;
      for (const inst of instances.values()) {
        clearTimers(inst);
        const child = inst.child;
        if (child !== null) {
          child.removeAllListeners();
          // Later errors of a child nobody watches must not become uncaught exceptions.
          child.on('error', () => undefined);
          if (child.connected) child.disconnect();
          child.unref();
        }
        for (const resolveGone of inst.gone.splice(0)) resolveGone();
      }
      instances.clear();
      await store.idle();
      log.info({ stateDir }, 'local driver closed; agents keep running');
    },
  };
}
