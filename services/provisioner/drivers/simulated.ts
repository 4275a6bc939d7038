/**
 * The `simulated` allocator driver: agents that exist only in memory, for benchmarks and tests of
 * the services around the driver. Every step succeeds at once; `start` reports STARTED and `stop`
 * reports STOPPED on the next turn of the event loop (never inside the call, as a real driver
 * would not either). `crash()` makes a running agent exit as if its process had died.
 */
import type { Logger } from '../../../lib/logger.ts';
import { errorMessage, permanentError } from '../../../lib/errors.ts';
import { isOlder, sameFence } from './start-fence.ts';
import type { AgentWorkload, AllocatorDriver, DriverEvent, DriverEventListener, ObservedAgent, StartFence } from './types.ts';

export interface SimulatedDriverOptions {
  readonly onEvent: DriverEventListener;
  readonly logger: Logger;
  /** Delay before STARTED; 0 (the default) = the next turn of the event loop. */
  readonly startDelayMs?: number;
  /** Delay before STOPPED; 0 (the default) = the next turn of the event loop. */
  readonly stopDelayMs?: number;
}

export interface SimulatedDriver extends AllocatorDriver {
  /** Ends a running agent as if its process had died (PROCESS_EXITED with its fence). */
  crash(agentId: string, exitCode?: number | null, signal?: string | null): void;
}

interface SimulatedAgent {
  running: boolean;
  fence: StartFence | null;
  instanceId: string | null;
  /** Set while a start has not reported yet; cancelled by stop/destroy/newer start. */
  pending: (() => void) | null;
}

export function createSimulatedDriver(options: SimulatedDriverOptions): SimulatedDriver {
  const log = options.logger.child({ component: 'driver', driver: 'simulated' });
  const agents = new Map<string, SimulatedAgent>();
  const timers = new Set<() => void>();
  let closed = false;
  let instances = 0;

  function emit(agentId: string, event: DriverEvent): void {
    if (closed) return;
    try {
      options.onEvent(agentId, event);
    } catch (error) {
      log.error({ agentId, event: event.type, err: errorMessage(error) }, 'driver event listener threw');
    }
  }

  /** Runs `fn` later (setImmediate for 0); returns the cancel function. */
  function later(delayMs: number, fn: () => void): () => void {
    let cancel: () => void;
    if (delayMs <= 0) {
      const handle = setImmediate(() => {
        timers.delete(cancel);
        fn();
      });
      cancel = () => {
        clearImmediate(handle);
        timers.delete(cancel);
      };
    } else {
      const handle = setTimeout(() => {
        timers.delete(cancel);
        fn();
      }, delayMs);
      handle.unref();
      cancel = () => {
        clearTimeout(handle);
        timers.delete(cancel);
      };
    }
    timers.add(cancel);
    return cancel;
  }

  function ensureOpen(): void {
    if (closed) throw permanentError('DRIVER_CLOSED', 'the simulated driver is closed');
  }

  function agentOf(agentId: string): SimulatedAgent {
    let agent = agents.get(agentId);
    if (!agent) {
      agent = { running: false, fence: null, instanceId: null, pending: null };
      agents.set(agentId, agent);
    }
    return agent;
  }

  return {
    name: 'simulated',

    async provision(workload: AgentWorkload) {
      ensureOpen();
      agentOf(workload.agentId);
    },

    async start(workload: AgentWorkload, fence: StartFence) {
      ensureOpen();
      const agent = agentOf(workload.agentId);
      if ((agent.running || agent.pending) && agent.fence !== null) {
        if (sameFence(agent.fence, fence)) return;
        if (!isOlder(agent.fence, fence)) {
          log.warn({ agentId: workload.agentId, running: agent.fence, requested: fence }, 'start of an older fence ignored');
          return;
        }
      }
      agent.pending?.();
      instances += 1;
      const instanceId = `simulated-${instances}`;
      agent.fence = { generation: fence.generation, attempt: fence.attempt };
      agent.instanceId = instanceId;
      agent.running = false;
      agent.pending = later(options.startDelayMs ?? 0, () => {
        agent.pending = null;
        agent.running = true;
        emit(workload.agentId, { type: 'STARTED', generation: fence.generation, attempt: fence.attempt, instanceId });
      });
    },

    async stop(agentId: string) {
      ensureOpen();
      const agent = agents.get(agentId);
      const wasRunning = agent !== undefined && (agent.running || agent.pending !== null);
      if (agent) {
        agent.pending?.();
        agent.pending = null;
        agent.running = false;
        agent.fence = null;
        agent.instanceId = null;
      }
      later(options.stopDelayMs ?? 0, () => emit(agentId, { type: 'STOPPED', exitCode: wasRunning ? 0 : null, signal: null }));
    },

    async destroy(agentId: string) {
      ensureOpen();
      agents.get(agentId)?.pending?.();
      agents.delete(agentId);
    },

    async observe(agentId: string): Promise<ObservedAgent> {
      ensureOpen();
      const agent = agents.get(agentId);
      if (!agent) return { agentId, provisioned: false, running: false, ready: false, fence: null, instanceId: null };
      return {
        agentId,
        provisioned: true,
        running: agent.running,
        // Its STARTED comes as it starts running.
        ready: agent.running,
        fence: agent.running ? agent.fence : null,
        instanceId: agent.running ? agent.instanceId : null,
      };
    },

    async list() {
      ensureOpen();
      return [...agents.keys()];
    },

    async close() {
      for (const cancel of [...timers]) cancel();
      closed = true;
    },

    crash(agentId, exitCode = 1, signal = null) {
      const agent = agents.get(agentId);
      if (!agent || !agent.running || agent.fence === null) return;
      const fence = agent.fence;
      agent.running = false;
      agent.fence = null;
      agent.instanceId = null;
      later(0, () => emit(agentId, { type: 'PROCESS_EXITED', generation: fence.generation, attempt: fence.attempt, exitCode, signal }));
    },
  };
}
