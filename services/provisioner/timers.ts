import { DelayedError, Queue, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { errorMessage, retryableError, unavailableDependency } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import { settlesWithin } from '../../lib/runtime/shutdown.ts';
import type { TimerKind, TimerScheduler } from './apply.ts';
import type { LifecycleInput } from './lifecycle.ts';

/**
 * The lifecycle's waits as BullMQ delayed jobs in Redis: a start deadline and the backoff before a
 * retry. Nothing sleeps in a handler, and a pending wait survives a provisioner restart. Job ids are
 * deterministic (kind, agent, fence), so scheduling twice is one job.
 */
export interface TimerJob {
  readonly agentId: string;
  readonly kind: TimerKind;
  readonly generation: number;
  readonly attempt: number;
}

export interface BullmqTimers extends TimerScheduler {
  /** Starts delivering due timers. */
  start(): void;
  /** Stops delivering (waits for the timers being delivered); jobs stay in Redis. */
  pause(): Promise<void>;
  /** Delivers again, starting the worker if it never ran (safe mode at start-up). */
  resume(): void;
  /** Stops delivering for good (shutdown); scheduling still works until `close`. */
  stopDelivering(): Promise<void>;
  close(): Promise<void>;
}

export interface BullmqTimersOptions {
  readonly connection: Redis;
  /** Key prefix in Redis (tests isolate themselves with one). */
  readonly prefix: string;
  readonly queueName?: string;
  /** Applies a due timer as a lifecycle input; a throw retries the job with backoff. */
  readonly onDue: (agentId: string, input: LifecycleInput) => Promise<void>;
  readonly logger: Logger;
  readonly concurrency?: number;
  /** How long a shutdown waits for BullMQ to close cleanly before cutting its connections. Default 5 s. */
  readonly closeWaitMs?: number;
  /** How long a timer that came due while a dependency was down waits before it is delivered again. Default 5 s. */
  readonly unavailableDelayMs?: number;
}

export function timerJobId(job: TimerJob): string {
  return `${job.kind}-${job.agentId}-${job.generation}-${job.attempt}`;
}

export function timerInput(job: TimerJob): LifecycleInput {
  return job.kind === 'start-timeout'
    ? { type: 'START_TIMEOUT', generation: job.generation, attempt: job.attempt }
    : { type: 'RETRY_DUE', generation: job.generation, attempt: job.attempt };
}

export function createBullmqTimers(options: BullmqTimersOptions): BullmqTimers {
  const name = options.queueName ?? 'agent-timers';
  const log = options.logger.child({ component: 'timers' });
  const closeWaitMs = options.closeWaitMs ?? 5_000;
  const unavailableDelayMs = options.unavailableDelayMs ?? 5_000;
  const queue = new Queue<TimerJob>(name, { connection: options.connection, prefix: options.prefix });
  let worker: Worker<TimerJob> | undefined;
  // BullMQ closes only the connections it created; this one is ours to close.
  let workerConnection: Redis | undefined;

  return {
    async schedule(agentId, kind, fence, delayMs) {
      const job: TimerJob = { agentId, kind, generation: fence.generation, attempt: fence.attempt };
      try {
        await queue.add(kind, job, {
          jobId: timerJobId(job),
          delay: Math.max(0, delayMs),
          attempts: 10,
          backoff: { type: 'exponential', delay: 500 },
          removeOnComplete: true,
          removeOnFail: 1000,
        });
      } catch (error) {
        throw retryableError('TIMER_SCHEDULE_FAILED', `could not schedule ${kind} for agent ${agentId}: ${errorMessage(error)}`, error);
      }
    },
    async cancel(agentId, fence) {
      // Both kinds at once: one round trip's wait instead of two.
      await Promise.all(
        (['start-timeout', 'retry'] as const).map((kind) =>
          queue.remove(timerJobId({ agentId, kind, generation: fence.generation, attempt: fence.attempt })).catch((error: unknown) => {
            log.debug({ agentId, kind, err: errorMessage(error) }, 'timer not removed (the fence catches it)');
          }),
        ),
      );
    },
    start() {
      if (worker) return;
      workerConnection = options.connection.duplicate({ maxRetriesPerRequest: null });
      worker = new Worker<TimerJob>(
        name,
        async (job: Job<TimerJob>, token?: string) => {
          try {
            await options.onDue(job.data.agentId, timerInput(job.data));
          } catch (error) {
            // A dependency being down (Postgres, Kafka) must not use up the job's attempts (a timer
            // lost after a long outage): it waits, delayed again, for as long as the outage lasts.
            const dependency = unavailableDependency(error);
            if (dependency === undefined || token === undefined) throw error;
            log.warn({ jobId: job.id, dependency, err: errorMessage(error) }, 'timer due while a dependency is down; delaying it');
            await job.moveToDelayed(Date.now() + unavailableDelayMs, token);
            throw new DelayedError();
          }
        },
        // maxStalledCount stays BullMQ's default (1): a job whose lock expired twice (e.g. Redis down
        // while it was delivered) is failed for good, whatever its attempts. That loses no timer: both
        // kinds are waits of an agent in STARTING, and the reconciler delivers START_TIMEOUT or
        // RETRY_DUE itself once the agent stays there past the deadline (reconciler.ts `repairFor`).
        { connection: workerConnection, prefix: options.prefix, concurrency: options.concurrency ?? 16 },
      );
      worker.on('failed', (job, error) => log.warn({ jobId: job?.id, err: errorMessage(error) }, 'timer job failed; BullMQ retries it within its attempts, else the reconciler delivers it late'));
      worker.on('error', (error) => log.error({ err: errorMessage(error) }, 'timer worker error'));
    },
    async pause() {
      await worker?.pause();
    },
    resume() {
      if (worker) void worker.resume();
      else this.start();
    },
    async stopDelivering() {
      const stopping = worker;
      const connection = workerConnection;
      worker = undefined;
      workerConnection = undefined;
      if (stopping) {
        // A clean close waits for the timers being delivered, then QUITs BullMQ's blocking
        // connection, which queues behind a BZPOPMIN that ioredis re-sent after a Redis restart (or
        // waits in the offline queue while Redis is down): the drain would hang until its grace ran
        // out. Past a short wait the connections are cut instead; a job cut mid-delivery keeps its
        // lock only until it expires and is delivered again (timers are fenced, so twice is harmless).
        const closed = stopping.close();
        if (!(await settlesWithin(closed, closeWaitMs))) {
          log.warn({ waitedMs: closeWaitMs }, 'timer worker did not close in time; disconnecting it');
          // Bounded too: BullMQ waits for ioredis' 'end', which a connection between reconnects never emits.
          await settlesWithin(stopping.disconnect(), closeWaitMs);
          await settlesWithin(closed, closeWaitMs);
        }
      }
      connection?.disconnect();
    },
    async close() {
      await this.stopDelivering();
      // The queue shares the service's connection: closing it sends nothing that could wait.
      await settlesWithin(queue.close(), closeWaitMs);
    },
  };
}
