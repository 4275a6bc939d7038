/**
 * Process supervision of the local driver: the instances it knows (its own children, and agents
 * adopted from their state.json after a restart), their launch, readiness, stop, kill and end. What
 * each end means is reported through `emit` (STARTED, PROCESS_EXITED, STOPPED, DRIVER_FAILED).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../../../lib/errors.ts';
import type { Logger } from '../../../lib/logger.ts';
import { agentEnvironment, isAlive, killGroupRemains, processStartOf, signalGroup as signalPid } from './local-process.ts';
import { LOG_FILE, type LocalAgentState, type StateStore } from './local-state.ts';
import type { DriverEvent, StartFence } from './types.ts';

export interface Instance {
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

/** The supervision state of an instance before anything has happened to it. */
function notYetSupervised(): Pick<Instance, 'exited' | 'stopRequested' | 'suppressExit' | 'killAt' | 'killTimer' | 'readyTimer' | 'gone'> {
  return { exited: false, stopRequested: false, suppressExit: false, killAt: null, killTimer: null, readyTimer: null, gone: [] };
}

export interface SupervisorOptions {
  readonly store: StateStore;
  readonly log: Logger;
  readonly emit: (agentId: string, event: DriverEvent) => void;
  /** Throws once the driver is closed (checked right before a launch). */
  readonly ensureOpen: () => void;
  readonly isClosed: () => boolean;
  readonly agentProgram: string;
  readonly nodePath: string;
  readonly agentEnv: Readonly<Record<string, string>>;
  readonly readyTimeoutMs: number;
  readonly livenessPollMs: number;
}

export interface Supervisor {
  /** The agent's live instance: ours, or adopted from its state.json; null when none runs. */
  current(agentId: string): Promise<Instance | null>;
  alive(inst: Instance): boolean;
  /** Spawns the agent for `fence` in `dir` and records it at once. */
  launch(agentId: string, dir: string, fence: StartFence): Promise<void>;
  /** Ends the instance without reporting its end (replaced, destroyed); false if it outlives `timeoutMs`. */
  kill(inst: Instance, timeoutMs: number): Promise<boolean>;
  /** SIGTERM (SIGKILL for no grace), SIGKILL after `graceMs`; STOPPED once gone. A shorter grace brings the kill forward. */
  requestStop(inst: Instance, graceMs: number): void;
  /** A record of an instance already replaced by a newer one (it must not overwrite the newer one's). */
  superseded(agentId: string, state: LocalAgentState): boolean;
  /** Lets go of every instance: they keep running, a later provisioner adopts them. */
  release(): void;
}

export function createSupervisor(options: SupervisorOptions): Supervisor {
  const { store, log, emit, ensureOpen, agentProgram, nodePath, readyTimeoutMs, livenessPollMs } = options;
  const instances = new Map<string, Instance>();
  let poller: NodeJS.Timeout | null = null;

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
    if (poller !== null || options.isClosed()) return;
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
      ...notYetSupervised(),
    };
    instances.set(agentId, inst);
    log.info({ agentId, pid: inst.pid, fence: inst.fence }, 'adopted a running agent');
    ensurePoller();
    return inst;
  }

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
      ...notYetSupervised(),
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

  return {
    current,
    alive,
    launch,
    async kill(inst, timeoutMs) {
      inst.suppressExit = true;
      signalGroup(inst, 'SIGKILL');
      return waitGone(inst, timeoutMs);
    },
    requestStop(inst, graceMs) {
      const agentId = inst.agentId;
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
    },
    superseded(agentId, state) {
      const live = instances.get(agentId);
      return live !== undefined && live.pid !== state.pid;
    },
    release() {
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
    },
  };
}
