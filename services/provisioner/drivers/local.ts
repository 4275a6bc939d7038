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
 * This file is the driver (per-agent ordering, idempotency, fences); the instances are supervised by
 * ./local-supervisor.ts (spawn, ready, stop, kill, exit, adoption), the folders and their records
 * are ./local-state.ts, the process primitives ./local-process.ts. Agents of another
 * deployment sharing the state folder (its `instance` file says so) are neither adopted nor listed.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { createKeyedQueue } from '../../../lib/keyed-queue.ts';
import { createEventEmitter } from './emit.ts';
import type { Logger } from '../../../lib/logger.ts';
import { errorCode, errorMessage, isAppError, isRetryable, permanentError, retryableError } from '../../../lib/errors.ts';
import { createStateStore } from './local-state.ts';
import { createSupervisor } from './local-supervisor.ts';
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

export function createLocalDriver(options: LocalDriverOptions): AllocatorDriver {
  const log = options.logger.child({ component: 'driver', driver: 'local' });
  const stateDir = resolve(options.stateDir);
  const agentProgram = resolve(options.agentProgram ?? join(process.cwd(), 'agents', 'heartbeat-agent.ts'));
  const nodePath = options.nodePath ?? process.execPath;
  const readyTimeoutMs = options.readyTimeoutMs ?? 60_000;
  const livenessPollMs = options.livenessPollMs ?? 1_000;
  const killWaitMs = options.killWaitMs ?? 10_000;
  if (!isAbsolute(nodePath)) throw permanentError('CONFIG_INVALID', `nodePath must be an absolute path, got ${nodePath}`);

  // The operations on one agent (start, stop, destroy, observe) never interleave.
  const perAgent = createKeyedQueue();
  const instance = options.instance ?? DEFAULT_LOCAL_INSTANCE;
  const store = createStateStore({
    stateDir,
    instance,
    isDefaultInstance: instance === DEFAULT_LOCAL_INSTANCE,
    log,
    superseded: (agentId, state) => supervisor.superseded(agentId, state),
  });
  let closed = false;

  // ---- events ------------------------------------------------------------------------------

  const emit = createEventEmitter(options.onEvent, log, () => closed);

  // ---- helpers -----------------------------------------------------------------------------

  function ensureOpen(): void {
    if (closed) throw permanentError('DRIVER_CLOSED', 'the local driver is closed');
  }

  const folderOf = (agentId: string) => store.folderOf(agentId);

  const supervisor = createSupervisor({
    store,
    log,
    emit,
    ensureOpen,
    isClosed: () => closed,
    agentProgram,
    nodePath,
    agentEnv: options.agentEnv,
    readyTimeoutMs,
    livenessPollMs,
  });
  const current = (agentId: string) => supervisor.current(agentId);

  /** At start-up: adopt every agent that outlived the previous provisioner, so its end is reported. */
  const adoption = (async () => {
    await mkdir(stateDir, { recursive: true });
    for (const agentId of await store.owned()) await current(agentId);
  })().catch((error: unknown) => log.error({ stateDir, err: errorMessage(error) }, 'could not scan the state folder for running agents'));

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
            if (!(await supervisor.kill(running, killWaitMs))) {
              throw retryableError('AGENT_KILL_TIMEOUT', `the previous instance (pid ${running.pid}) did not end within ${killWaitMs} ms of SIGKILL`);
            }
          }
          // The old instance's last record goes to disk before the new one's first.
          await store.settled(agentId);
          await supervisor.launch(agentId, dir, fence);
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
        supervisor.requestStop(inst, graceMs);
      });
    },

    async destroy(agentId: string) {
      ensureOpen();
      const dir = folderOf(agentId);
      await adoption;
      await perAgent.run(agentId, async () => {
        const inst = await current(agentId);
        if (inst !== null) {
          if (!(await supervisor.kill(inst, killWaitMs))) {
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
        const running = inst !== null && supervisor.alive(inst);
        return {
          agentId,
          provisioned: existsSync(dir),
          running,
          ready: running && inst.ready,
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
      supervisor.release();
      await store.idle();
      log.info({ stateDir }, 'local driver closed; agents keep running');
    },
  };
}
