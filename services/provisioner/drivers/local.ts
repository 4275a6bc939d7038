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
 * Agents do NOT inherit the provisioner's environment (it holds database passwords and the like):
 * they get PATH, HOME, LANG, LC_ALL, TZ and TMPDIR when set, `agentEnv`, and AGENT_ID,
 * AGENT_GENERATION, AGENT_ATTEMPT. The workload's spec (image, command, environment references) is
 * not used: this driver always runs `agentProgram`, never a command taken from a message.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { createKeyedQueue } from '../../../lib/keyed-queue.ts';
import { createEventEmitter } from './emit.ts';
import type { Logger } from '../../../lib/logger.ts';
import { errorCode, errorMessage, isAppError, isRetryable, permanentError, retryableError } from '../../../lib/errors.ts';
import type { AgentWorkload, AllocatorDriver, DriverEventListener, ObservedAgent, StartFence } from './types.ts';

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
}

/** What `state.json` holds about the last instance started in an agent's folder. */
export interface LocalAgentState {
  readonly version: 1;
  readonly agentId: string;
  readonly pid: number;
  readonly generation: number;
  readonly attempt: number;
  readonly instanceId: string;
  readonly startedAt: string;
  /** Start time of the process in clock ticks since boot (Linux `/proc/<pid>/stat`), null elsewhere. */
  readonly processStart: string | null;
  /** The agent said ready (its first heartbeat was acknowledged). */
  readonly ready: boolean;
  readonly exitedAt?: string;
  readonly exitCode?: number | null;
  readonly signal?: string | null;
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

const STATE_FILE = 'state.json';
const LOG_FILE = 'agent.log';
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;
const INHERITED_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'];

function sameFence(a: StartFence, b: StartFence): boolean {
  return a.generation === b.generation && a.attempt === b.attempt;
}

function isOlder(a: StartFence, b: StartFence): boolean {
  return a.generation < b.generation || (a.generation === b.generation && a.attempt < b.attempt);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `[state, starttime]` of a process from `/proc/<pid>/stat`; null when unreadable (gone, or no procfs). */
function procStat(pid: number): { state: string; start: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const start = fields[19];
  return state !== undefined && start !== undefined ? { state, start } : null;
}

const HAS_PROCFS = existsSync('/proc/self/stat');

function processStartOf(pid: number): string | null {
  return HAS_PROCFS ? (procStat(pid)?.start ?? null) : null;
}

/** Alive and still the same process (not a zombie, not a later process that reused the pid). */
function isAlive(pid: number, processStart: string | null): boolean {
  if (!Number.isInteger(pid) || pid <= 1) return false;
  try {
    process.kill(pid, 0);
  } catch {
    // ESRCH: gone. EPERM: a process of another user holds the pid, so it is not our agent any more.
    return false;
  }
  if (!HAS_PROCFS) return true;
  const stat = procStat(pid);
  if (stat === null || stat.state === 'Z' || stat.state === 'X') return false;
  return processStart === null || stat.start === processStart;
}

function parseState(text: string): LocalAgentState | null {
  try {
    const value = JSON.parse(text) as Partial<LocalAgentState>;
    if (
      typeof value === 'object' &&
      value !== null &&
      typeof value.agentId === 'string' &&
      Number.isInteger(value.pid) &&
      Number.isInteger(value.generation) &&
      Number.isInteger(value.attempt) &&
      typeof value.instanceId === 'string'
    ) {
      return value as LocalAgentState;
    }
  } catch {
    // An unreadable state file is treated as no state.
  }
  return null;
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
  const writes = createKeyedQueue();
  let poller: NodeJS.Timeout | null = null;
  let closed = false;

  // ---- events ------------------------------------------------------------------------------

  const emit = createEventEmitter(options.onEvent, log, () => closed);

  // ---- helpers -----------------------------------------------------------------------------

  function ensureOpen(): void {
    if (closed) throw permanentError('DRIVER_CLOSED', 'the local driver is closed');
  }

  function folderOf(agentId: string): string {
    if (typeof agentId !== 'string' || !SAFE_ID.test(agentId) || agentId === '.' || agentId === '..') {
      throw permanentError('INVALID_AGENT_ID', `agent id ${JSON.stringify(agentId)} cannot name a folder (letters, digits, '.', '_', '-')`);
    }
    return join(stateDir, agentId);
  }


  /** Writes state.json atomically (temp file + rename), in order per agent; never throws. */
  function writeState(agentId: string, state: LocalAgentState): Promise<void> {
    const dir = join(stateDir, agentId);
    return writes.run(agentId, async () => {
      // A record of an instance already replaced by a newer one must not overwrite the newer one's.
      const live = instances.get(agentId);
      if (live !== undefined && live.pid !== state.pid) return;
      const temp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}`);
      try {
        await writeFile(temp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
        await rename(temp, join(dir, STATE_FILE));
      } catch (error) {
        // The folder may be gone (destroyed); nothing to record then.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ agentId, err: errorMessage(error) }, 'could not write state.json');
        await rm(temp, { force: true }).catch(() => undefined);
      }
    });
  }

  /** The synchronous form of writeState, for the record that must exist before anything else happens. */
  function writeStateNow(agentId: string, state: LocalAgentState): void {
    const dir = join(stateDir, agentId);
    const temp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}`);
    try {
      writeFileSync(temp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
      renameSync(temp, join(dir, STATE_FILE));
    } catch (error) {
      log.warn({ agentId, err: errorMessage(error) }, 'could not write state.json');
      rmSync(temp, { force: true });
    }
  }

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

  async function readState(agentId: string): Promise<LocalAgentState | null> {
    try {
      return parseState(await readFile(join(stateDir, agentId, STATE_FILE), 'utf8'));
    } catch {
      return null;
    }
  }

  function alive(inst: Instance): boolean {
    if (inst.exited) return false;
    if (inst.child !== null) return inst.child.exitCode === null && inst.child.signalCode === null;
    return isAlive(inst.pid, inst.processStart);
  }

  /** Sends `signal` to the agent's whole process group (it is the group's leader: pgid = pid). */
  function signalGroup(inst: Instance, signal: NodeJS.Signals): void {
    if (!Number.isInteger(inst.pid) || inst.pid <= 1) return;
    try {
      process.kill(-inst.pid, signal);
      log.info({ agentId: inst.agentId, pid: inst.pid, signal }, 'signalled the agent process group');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ESRCH') return;
      // A group we cannot signal: at least the leader.
      try {
        process.kill(inst.pid, signal);
      } catch {
        log.warn({ agentId: inst.agentId, pid: inst.pid, signal, err: errorMessage(error) }, 'could not signal the agent');
      }
    }
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
    // Whatever the agent started in its group goes with it (the leader's pid is not reused while
    // its group still has members, so this cannot hit an unrelated group).
    try {
      process.kill(-inst.pid, 'SIGKILL');
    } catch {
      // ESRCH: nothing left in the group.
    }
    if (instances.get(inst.agentId) === inst) instances.delete(inst.agentId);
    if (inst.child) {
      inst.child.removeAllListeners('message');
      if (inst.child.connected) inst.child.disconnect();
    }
    log.info({ agentId: inst.agentId, pid: inst.pid, exitCode: code, signal, stop: inst.stopRequested }, 'agent process ended');
    void writeState(inst.agentId, stateOf(inst, { code, signal }));
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
    const state = await readState(agentId);
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
    const entries = await readdir(stateDir, { withFileTypes: true });
    for (const entry of entries) {
      if (entry.isDirectory() && SAFE_ID.test(entry.name)) await current(entry.name);
    }
  })().catch((error: unknown) => log.error({ stateDir, err: errorMessage(error) }, 'could not scan the state folder for running agents'));

  // ---- launching ---------------------------------------------------------------------------

  function agentEnvironment(agentId: string, fence: StartFence): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    for (const name of INHERITED_ENV) if (process.env[name] !== undefined) env[name] = process.env[name];
    Object.assign(env, options.agentEnv);
    env.AGENT_ID = agentId;
    env.AGENT_GENERATION = String(fence.generation);
    env.AGENT_ATTEMPT = String(fence.attempt);
    return env;
  }

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
    void writeState(inst.agentId, stateOf(inst)).then(() => {
      if (!inst.stopRequested && !inst.suppressExit) {
        emit(inst.agentId, { type: 'STARTED', generation: inst.fence.generation, attempt: inst.fence.attempt, instanceId: inst.instanceId });
      }
    });
  }

  async function launch(agentId: string, dir: string, fence: StartFence): Promise<void> {
    // Closed while this start waited: launching now would leave an agent nobody watches.
    ensureOpen();
    const logFd = openSync(join(dir, LOG_FILE), 'a', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(nodePath, [agentProgram], {
        cwd: dir,
        detached: true,
        stdio: ['ignore', logFd, logFd, 'ipc'],
        env: agentEnvironment(agentId, fence),
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
    writeStateNow(agentId, stateOf(inst));
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
          await writes.settled(agentId);
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
        await writes.settled(agentId);
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
      try {
        const entries = await readdir(stateDir, { withFileTypes: true });
        return entries.filter((e) => e.isDirectory() && SAFE_ID.test(e.name)).map((e) => e.name);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw retryableError('LIST_FAILED', `cannot list ${stateDir}: ${errorMessage(error)}`, error);
      }
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
      await writes.idle();
      log.info({ stateDir }, 'local driver closed; agents keep running');
    },
  };
}
