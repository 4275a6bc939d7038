/**
 * The agent SDK: what an agent links to prove it is alive. `createAgentHeartbeater` sends an
 * `AgentHeartbeat` (Avro through the Schema Registry, subject `<topic>-value`, key = agentId, a W3C
 * `traceparent` header) on an idempotent producer (`acks=all`):
 *
 * - `start()` connects, sends heartbeat #0 at once and resolves when Kafka acknowledged it (so the
 *   caller can tell its supervisor it is ready), then keeps sending one per `intervalMs`;
 * - the sequence grows by one per ACKNOWLEDGED heartbeat: a failed send is logged and the same
 *   sequence number is sent again (fresh `sentAt` and metrics) at the next tick, so the heartbeat
 *   consumer sees no gap for a send that never reached Kafka. A failure never throws out of the
 *   timer: an agent is not crashed by its heartbeat;
 * - `stop()` cancels the timer, waits for the send in flight, then sends one last heartbeat marked
 *   `stopping` (so the heartbeat service stops expecting this instance at once, before the
 *   provisioner's STOPPING reaches it: an intended stop is never taken for a hang) and disconnects.
 *   That last send waits at most `stopTimeoutMs`: a stop is never held up by Kafka being away.
 *
 * Each heartbeat announces `intervalMs`, from which the heartbeat service derives the agent's
 * deadline. The schedule is jittered (each gap is `intervalMs` minus up to `jitterRatio` of it, never
 * more: the deadline stays met) so a fleet started at once does not heartbeat in lockstep.
 *
 * Metrics on every heartbeat: `cpuPercent` = CPU time used by this process (user + system) since the
 * previous heartbeat, in percent of one core; `memoryRssBytes` = resident set size.
 */
import type { KafkaTls } from '../config.ts';
import { createAvroCodec, type AvroCodec } from '../kafka/avro.ts';
import { createKafkajsClient } from '../kafka/kafkajs.ts';
import type { ProducerClient } from '../kafka/types.ts';
import { avroTypeOptions } from '../contracts/schemas.ts';
import type { AgentHeartbeat, HeartbeatMetrics } from '../contracts/types.ts';
import { createLogger, type Logger } from '../logger.ts';
import { errorCode, errorMessage, permanentError, retryableError } from '../errors.ts';
import { createEventProducer, type EventProducer } from '../runtime/producer.ts';
import { settlesWithin } from '../runtime/shutdown.ts';

export const DEFAULT_HEARTBEAT_TOPIC = 'agent-heartbeats';
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000;
export const DEFAULT_JITTER_RATIO = 0.1;
export const DEFAULT_STOP_TIMEOUT_MS = 2_000;

export interface AgentHeartbeaterOptions {
  readonly agentId: string;
  /** This run of the agent (pod name, or host:pid); a new value tells the fleet the agent restarted. */
  readonly instanceId: string;
  readonly brokers: readonly string[];
  /**
   * TLS with the agent's client certificate (its principal may only write heartbeats); undefined
   * connects in plaintext. See `kafkaTlsOf` for reading it from KAFKA_SECURITY_PROTOCOL and KAFKA_SSL_*.
   */
  readonly tls?: KafkaTls | undefined;
  /** Base URL of the Confluent-compatible registry API. */
  readonly registryUrl: string;
  /** Defaults to `agent-heartbeats`. */
  readonly topic?: string;
  /** Defaults to 2000 ms. */
  readonly intervalMs?: number;
  /** Up to this fraction of the interval is taken off each gap, at random (0 ≤ ratio < 1). Default 0.1. */
  readonly jitterRatio?: number;
  /** Injectable randomness for the jitter (0 ≤ value < 1). */
  readonly random?: () => number;
  /** Silent when omitted. */
  readonly logger?: Logger;
  /** Agent-specific gauges reported under `metrics.custom` (e.g. queue depth). */
  readonly customMetrics?: () => Record<string, number>;
  /** The process id reported (default `process.pid`; null for none). */
  readonly pid?: number | null;
  /** Injectable for tests: the producer and codec (default: kafkajs and the registry). */
  readonly producer?: ProducerClient;
  readonly codec?: AvroCodec;
  /** Injectable clock (ms since the epoch). */
  readonly now?: () => number;
  /** How long `stop()` waits for the last (`stopping`) heartbeat to be acknowledged. Default 2000 ms. */
  readonly stopTimeoutMs?: number;
}

export interface AgentHeartbeater {
  /** Connects and sends heartbeat #0; resolves once it is acknowledged. Rejects only if `stop()` comes first. */
  start(): Promise<void>;
  /** Stops the timer, flushes the send in flight, announces the stop (a `stopping` heartbeat) and disconnects. Idempotent. */
  stop(): Promise<void>;
  /** The sequence number of the next heartbeat (= heartbeats acknowledged so far). */
  readonly sequence: number;
  /** Consecutive failed sends (0 when the last one was acknowledged). */
  readonly consecutiveFailures: number;
}

interface CpuSample {
  readonly usage: NodeJS.CpuUsage;
  readonly at: bigint;
}

/** The gap before the next heartbeat: the interval less up to `ratio` of it (early, never late), for `random` in [0, 1). */
export function jitteredGapMs(intervalMs: number, ratio: number, random: number): number {
  return Math.round(intervalMs * (1 - ratio * random));
}

function validate(options: AgentHeartbeaterOptions): void {
  const problems: string[] = [];
  if (typeof options.agentId !== 'string' || options.agentId === '') problems.push('agentId must be a non-empty string');
  if (typeof options.instanceId !== 'string' || options.instanceId === '') problems.push('instanceId must be a non-empty string');
  if (options.producer === undefined && (!Array.isArray(options.brokers) || options.brokers.length === 0)) problems.push('brokers must list at least one host:port');
  if (options.codec === undefined && (typeof options.registryUrl !== 'string' || options.registryUrl === '')) problems.push('registryUrl must be set');
  if (options.intervalMs !== undefined && !(Number.isFinite(options.intervalMs) && options.intervalMs > 0)) problems.push('intervalMs must be a positive number');
  if (options.topic !== undefined && (typeof options.topic !== 'string' || options.topic === '')) problems.push('topic must be a non-empty string');
  if (options.stopTimeoutMs !== undefined && !(Number.isFinite(options.stopTimeoutMs) && options.stopTimeoutMs >= 0)) problems.push('stopTimeoutMs must be 0 or more');
  if (options.jitterRatio !== undefined && !(Number.isFinite(options.jitterRatio) && options.jitterRatio >= 0 && options.jitterRatio < 1)) problems.push('jitterRatio must be at least 0 and below 1');
  if (problems.length > 0) throw permanentError('CONFIG_INVALID', `invalid heartbeater options: ${problems.join('; ')}`);
}

export function createAgentHeartbeater(options: AgentHeartbeaterOptions): AgentHeartbeater {
  validate(options);
  const topic = options.topic ?? DEFAULT_HEARTBEAT_TOPIC;
  const intervalMs = options.intervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
  const jitterRatio = options.jitterRatio ?? DEFAULT_JITTER_RATIO;
  const random = options.random ?? Math.random;
  const nextGapMs = () => jitteredGapMs(intervalMs, jitterRatio, random());
  // The agent's own logger usually carries agentId and instanceId already: bind them only when not.
  const given = options.logger ?? createLogger('agent-sdk', 'silent');
  const bound = given.bindings();
  const base = given.child({
    ...(bound.agentId === undefined ? { agentId: options.agentId } : {}),
    ...(bound.instanceId === undefined ? { instanceId: options.instanceId } : {}),
  });
  const log = base.child({ component: 'heartbeater' });
  const now = options.now ?? Date.now;
  const pid = options.pid === undefined ? process.pid : options.pid;

  const producer: ProducerClient =
    options.producer ?? createKafkajsClient({ clientId: `agent-${options.agentId}`, brokers: options.brokers, tls: options.tls, logger: base }).producer();
  // timestamp-millis ↔ Date, like every other producer of the contracts.
  const codec = options.codec ?? createAvroCodec({ registryUrl: options.registryUrl, avroOptions: avroTypeOptions() });
  const events: EventProducer = createEventProducer(producer, codec);

  let sequence = 0;
  let failures = 0;
  let connected = false;
  let started = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<boolean> | undefined;
  let lastCpu: CpuSample = { usage: process.cpuUsage(), at: process.hrtime.bigint() };
  let wakeStart: (() => void) | undefined;

  function sampleMetrics(): HeartbeatMetrics {
    const current: CpuSample = { usage: process.cpuUsage(), at: process.hrtime.bigint() };
    const elapsedMicros = Number(current.at - lastCpu.at) / 1_000;
    const usedMicros = current.usage.user - lastCpu.usage.user + (current.usage.system - lastCpu.usage.system);
    lastCpu = current;
    const cpuPercent = elapsedMicros > 0 ? Math.round((usedMicros / elapsedMicros) * 100 * 100) / 100 : null;
    let custom: Record<string, number> = {};
    if (options.customMetrics) {
      try {
        custom = Object.fromEntries(Object.entries(options.customMetrics()).filter(([, v]) => typeof v === 'number' && Number.isFinite(v)));
      } catch (error) {
        log.warn({ err: errorMessage(error) }, 'custom metrics failed; reporting none');
      }
    }
    return { cpuPercent, memoryRssBytes: process.memoryUsage.rss(), custom };
  }

  /** One attempt: connect if needed, send the current sequence. True when acknowledged. */
  async function sendOnce(stopping = false): Promise<boolean> {
    try {
      if (!connected) {
        await producer.connect();
        connected = true;
        log.info({ topic }, 'heartbeat producer connected');
      }
      const heartbeat: AgentHeartbeat = {
        agentId: options.agentId,
        instanceId: options.instanceId,
        pid,
        sequence,
        sentAt: new Date(now()),
        metrics: sampleMetrics(),
        intervalMs: Math.round(intervalMs),
        stopping,
      };
      await events.send(topic, [{ key: options.agentId, value: heartbeat }]);
      log.debug({ sequence, cpuPercent: heartbeat.metrics?.cpuPercent, rss: heartbeat.metrics?.memoryRssBytes }, 'heartbeat sent');
      if (failures > 0) log.info({ sequence, after: failures }, 'heartbeat delivered again after failures');
      sequence += 1;
      failures = 0;
      return true;
    } catch (error) {
      failures += 1;
      // Logged, never thrown: the next tick sends the same sequence number again.
      log.error({ sequence, failures, code: errorCode(error), err: errorMessage(error) }, 'heartbeat send failed; retrying at the next tick');
      return false;
    }
  }

  function tick(): Promise<boolean> {
    inFlight ??= sendOnce().finally(() => {
      inFlight = undefined;
    });
    return inFlight;
  }

  /** Fixed rate: the next tick is due one (jittered) gap after this one began (at once if the send took longer). */
  function schedule(dueAt: number): void {
    if (stopped) return;
    timer = setTimeout(() => {
      timer = undefined;
      const began = Date.now();
      void tick().then(() => schedule(Math.max(began + nextGapMs(), Date.now())));
    }, Math.max(0, dueAt - Date.now()));
  }

  return {
    get sequence() {
      return sequence;
    },
    get consecutiveFailures() {
      return failures;
    },

    async start() {
      if (stopped) throw permanentError('HEARTBEATER_STOPPED', 'the heartbeater was stopped; create a new one');
      if (started) throw permanentError('HEARTBEATER_STARTED', 'the heartbeater is already started');
      started = true;
      lastCpu = { usage: process.cpuUsage(), at: process.hrtime.bigint() };
      // Heartbeat #0 at once, again every interval until Kafka acknowledges it.
      for (;;) {
        const began = Date.now();
        const acknowledged = await tick();
        if (stopped) throw retryableError('HEARTBEATER_STOPPED', 'the heartbeater was stopped before the first heartbeat was acknowledged');
        if (acknowledged) {
          schedule(began + nextGapMs());
          return;
        }
        await new Promise<void>((resolve) => {
          const wait = setTimeout(resolve, Math.max(0, began + intervalMs - Date.now()));
          wakeStart = () => {
            clearTimeout(wait);
            resolve();
          };
        });
        wakeStart = undefined;
        if (stopped) throw retryableError('HEARTBEATER_STOPPED', 'the heartbeater was stopped before the first heartbeat was acknowledged');
      }
    },

    async stop() {
      if (stopped) return;
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
      wakeStart?.();
      // The final flush: the send in flight completes (or fails) before the producer goes away.
      if (inFlight) await inFlight;
      if (connected) {
        // Only an instance that was heard from announces its stop; bounded, since Kafka may be away.
        let announced = false;
        await settlesWithin(
          sendOnce(true).then((acknowledged) => {
            announced = acknowledged;
          }),
          options.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS,
        );
        if (!announced) log.warn({ sequence }, 'the stopping heartbeat was not acknowledged in time; the heartbeat service learns of the stop from the provisioner');
        connected = false;
        try {
          await producer.disconnect();
        } catch (error) {
          log.warn({ err: errorMessage(error) }, 'heartbeat producer disconnect failed');
        }
      }
      log.info({ sequence }, 'heartbeater stopped');
    },
  };
}
