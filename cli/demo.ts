import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentRequest, AgentState } from '../lib/contracts/types.ts';
import { agentActionRequest, instantiateRequest, kernelTlsFromEnv, KernelClient, StatusWatcher } from '../dev/kernel/client.ts';
import { createLogger } from '../lib/logger.ts';
import { bootstrapFleet } from '../lib/service/bootstrap.ts';
import { loadServiceConfig, topicNames } from '../lib/service/context.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import { runStackUp } from './stack.ts';
import { startServices } from './services.ts';
import { localStackEnv, stackCredentials } from '../dev/stack/endpoints.ts';
import { loadProvisionerConfig } from '../services/provisioner/main.ts';
import { isAlive } from '../services/provisioner/drivers/local-process.ts';
import { parseState } from '../services/provisioner/drivers/local-state.ts';

export interface DemoOptions {
  readonly agents: number;
  /** Per phase (all RUNNING, all STOPPED, all DESTROYED). */
  readonly phaseTimeoutMs: number;
}

export interface DemoSummary {
  readonly instantiated: number;
  readonly reachedRunning: number;
  /** Agents that left RUNNING (hung, killed) and reached it again. */
  readonly recovered: number;
  /** Agents the demo hung (SIGSTOP) or killed (SIGKILL): each should be recovered. */
  readonly faulted: number;
  readonly destroyed: number;
  readonly failed: number;
}

/**
 * The demo's heartbeat settings unless the environment sets them: agents heartbeat every second, one
 * is missed after 3 s of silence and recovered 1 s later, so the hung agent is noticed and replaced
 * within seconds; a process that ignores SIGTERM (a stopped one cannot act on it) is killed after 3 s.
 */
const DEMO_DEFAULTS: Readonly<Record<string, string>> = {
  AGENT_HEARTBEAT_INTERVAL_MS: '1000',
  HEARTBEAT_MISS_FACTOR: '3',
  HEARTBEAT_MIN_TTL_MS: '3000',
  HEARTBEAT_RECOVER_HOLD_MS: '1000',
  STOP_GRACE_MS: '3000',
};

const SHOWN: readonly AgentState[] = ['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING', 'UNHEALTHY', 'STOPPING', 'STOPPED', 'DESTROYING', 'DESTROYED', 'FAILED', 'REJECTED'];
const FINAL_FAILURES: readonly AgentState[] = ['FAILED', 'REJECTED'];

function elapsed(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(1).padStart(5)}s`;
}

/**
 * The demo: the local stack, migrations, topics and schemas, the whole fleet in this process, and a
 * scripted Kernel that instantiates a batch of agents (real processes that heartbeat), watches them
 * reach RUNNING, stops and destroys them, and prints one summary line.
 */
export async function runDemo(root: string, options: DemoOptions): Promise<DemoSummary> {
  const started = Date.now();
  const say = (text: string) => console.log(`[${elapsed(started)}] ${text}`);
  say('demo: bringing up the local stack');
  if (!(await runStackUp(root))) throw new Error('the local stack did not come up; see the messages above');

  // The demo is one of the two places (with `stack env`) where the local stack's addresses are defaults.
  const stackEnv: Record<string, string | undefined> = { ...DEMO_DEFAULTS, ...localStackEnv(root), ...process.env };
  // The stack's OPA stands in for SentinelNet, so the demo's policy decisions come over HTTP.
  const env: Record<string, string | undefined> = { LOG_LEVEL: 'error', ...stackEnv, ...(stackEnv.SENTINELNET_URL || !stackEnv.OPA_URL ? {} : { SENTINELNET_URL: stackEnv.OPA_URL }) };
  const config = loadServiceConfig(env);
  const report = await bootstrapFleet(root, config, env, createLogger('bootstrap', 'warn'));
  say(`demo: database migrated (${report.migrations.length} new), topics ready (${report.topicsCreated} created), schemas registered`);

  // Each service with its own Kafka principal (its own context in this process), as deployed: the
  // stack's ACLs let each do only its part of the data flow. The bootstrap above ran as the operator.
  const as = (principal: 'ingest' | 'provisioner' | 'heartbeat') => ({ ...env, ...stackCredentials(root, principal) });
  const running: { shutdown(): Promise<string[]> }[] = [];
  const fleet = {
    shutdown: async () => {
      const failures: string[] = [];
      // The reverse of the start order: heartbeat, provisioner, ingest.
      for (const service of running.toReversed()) failures.push(...(await service.shutdown()));
      return failures;
    },
  };
  try {
    running.push(await startServices(['ingest'], as('ingest'), { opsServer: false }));
    running.push(await startServices(['provisioner'], as('provisioner')));
    running.push(await startServices(['heartbeat'], as('heartbeat'), { opsServer: false }));
  } catch (error) {
    await fleet.shutdown();
    throw error;
  }
  say(
    `demo: fleet running (ingest, provisioner and heartbeat as Kafka principals User:ingest, User:provisioner and User:heartbeat; local driver: each agent is a real process (User:agent) ` +
      `heartbeating every ${env.AGENT_HEARTBEAT_INTERVAL_MS} ms; policy: ${env.SENTINELNET_URL ? `OPA at ${env.SENTINELNET_URL}` : 'local file'})`,
  );
  const stateDir = loadProvisionerConfig(env).PROVISIONER_STATE_DIR;
  const topics = topicNames(config.TOPIC_PREFIX);
  const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
  const run = randomUUID().slice(0, 8);
  let kernel: KernelClient;
  let status: StatusWatcher;
  try {
    // The Kernel as User:kernel: it may write agent-requests and read agent-status, nothing else.
    const tls = kernelTlsFromEnv(env);
    kernel = await KernelClient.connect({ brokers: config.KAFKA_BROKERS, tls, topics, codec });
    status = await StatusWatcher.start({ brokers: config.KAFKA_BROKERS, tls, topics, codec, groupId: `${config.TOPIC_PREFIX}kernel-demo-status-${run}` });
  } catch (error) {
    await fleet.shutdown();
    throw error;
  }

  const requests: AgentRequest[] = Array.from({ length: options.agents }, (_, i) => instantiateRequest(`demo-${run}-${i}`, { labels: { demo: run }, requestedBy: 'demo-kernel' }));
  const agentOf = new Map<string, string>();
  const agents = () => requests.map((r) => agentOf.get(r.requestId)).filter((id): id is string => id !== undefined);
  const refreshIds = () => {
    for (const list of status.states.values()) for (const s of list) if (s.requestId && !agentOf.has(s.requestId)) agentOf.set(s.requestId, s.agentId);
  };

  async function waitPhase(what: string, done: (state: AgentState | undefined) => boolean): Promise<void> {
    const deadline = Date.now() + options.phaseTimeoutMs;
    let last = '';
    for (;;) {
      refreshIds();
      const ids = agents();
      const counts = new Map<string, number>();
      for (const id of ids) {
        const state = status.lastState(id) ?? 'PENDING';
        counts.set(state, (counts.get(state) ?? 0) + 1);
      }
      const line = SHOWN.filter((s) => counts.has(s)).map((s) => `${s} ${counts.get(s)}`).join(' · ');
      if (line !== last) say(`  ${line || 'waiting for ingest'}`);
      last = line;
      const settled = ids.length === requests.length && ids.every((id) => done(status.lastState(id)) || FINAL_FAILURES.includes(status.lastState(id) ?? 'PENDING'));
      if (settled) return;
      if (Date.now() > deadline) {
        say(`demo: ${what} did not finish within ${options.phaseTimeoutMs / 1000}s; going on`);
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** The agents the demo hung or killed, and the processes it stopped (resumed at the end if still there). */
  const faulted = new Map<string, string>();
  /** Where each faulted agent's status history stood when the demo struck. */
  const since = new Map<string, number>();
  /** Left RUNNING after the fault, then reached it again. */
  const recovered = (id: string) => {
    if (!since.has(id)) return false;
    const after = status.history(id).slice(since.get(id));
    const left = after.findIndex((state) => state !== 'RUNNING');
    return left >= 0 && after.indexOf('RUNNING', left) > left;
  };
  const stopped: { pid: number; processStart: string | null }[] = [];
  /** The faulted agents' transitions are told while the demo waits for them to recover. */
  let telling = false;
  status.onStatus((event) => {
    const what = faulted.get(event.agentId);
    if (!telling || what === undefined || event.previousState === event.state) return;
    const restarted = event.state === 'STARTING' && ['RUNNING', 'UNHEALTHY', 'STOPPING'].includes(event.previousState ?? '') ? ' (restarted)' : '';
    say(`  ${what} ${event.agentId.slice(0, 8)}: ${event.previousState ?? '-'} → ${event.state}${restarted}${event.reason ? `: ${event.reason}` : ''}`);
  });

  /** Hangs one running agent (SIGSTOP: alive, silent) and kills another (SIGKILL); waits until both run again. */
  async function faults(): Promise<void> {
    const [hung, killed] = agents().filter((id) => status.lastState(id) === 'RUNNING');
    const targets: [string | undefined, 'hung agent' | 'killed agent', NodeJS.Signals][] = [
      [hung, 'hung agent', 'SIGSTOP'],
      [killed, 'killed agent', 'SIGKILL'],
    ];
    for (const [agentId, what, signal] of targets) {
      if (agentId === undefined) continue;
      const state = readAgentProcess(stateDir, agentId);
      if (!state || !isAlive(state.pid, state.processStart)) {
        say(`demo: cannot find the process of ${agentId} in ${stateDir}; not ${what === 'hung agent' ? 'hanging' : 'killing'} it`);
        continue;
      }
      faulted.set(agentId, what);
      since.set(agentId, status.history(agentId).length);
      // The agent leads its own process group: the signal reaches all of it.
      process.kill(-state.pid, signal);
      if (signal === 'SIGSTOP') stopped.push(state);
      say(`demo: ${signal} to agent ${agentId.slice(0, 8)} (pid ${state.pid}): ${signal === 'SIGSTOP' ? 'alive but silent; the heartbeat service notices the missed heartbeats' : 'gone; the provisioner notices the exit'}`);
    }
    if (faulted.size === 0) return;
    telling = true;
    const deadline = Date.now() + options.phaseTimeoutMs;
    const settled = (id: string) => recovered(id) || FINAL_FAILURES.includes(status.lastState(id) ?? 'PENDING');
    while (![...faulted.keys()].every(settled)) {
      if (Date.now() > deadline) {
        say(`demo: recovery did not finish within ${options.phaseTimeoutMs / 1000}s; going on`);
        break;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    telling = false;
    say(`demo: ${[...faulted.keys()].filter(recovered).length} of ${faulted.size} recovered`);
  }

  try {
    say(`demo: the Kernel instantiates ${options.agents} agents`);
    await kernel.send(requests);
    await waitPhase('instantiation', (s) => s === 'RUNNING');
    await faults();
    say('demo: agents are running and heartbeating; the Kernel stops them');
    const live = () => agents().filter((id) => !FINAL_FAILURES.includes(status.lastState(id) ?? 'PENDING'));
    const act = (action: 'STOP' | 'DESTROY', ids: string[]): AgentRequest[] => ids.map((agentId) => agentActionRequest(agentId, action, `demo-${run}-${action}-${agentId}`, 'demo-kernel'));
    await kernel.send(act('STOP', live().filter((id) => status.lastState(id) === 'RUNNING')));
    await waitPhase('stop', (s) => s === 'STOPPED' || s === 'DESTROYED');
    say('demo: the Kernel destroys them');
    await kernel.send(act('DESTROY', live().filter((id) => status.lastState(id) !== 'DESTROYED')));
    await waitPhase('destroy', (s) => s === 'DESTROYED');
  } finally {
    // A hung agent the fleet did not replace would stay stopped for ever: let it go on.
    for (const { pid, processStart } of stopped) if (isAlive(pid, processStart)) process.kill(-pid, 'SIGCONT');
    await status.stop().catch(() => undefined);
    await kernel.disconnect().catch(() => undefined);
    const failures = await fleet.shutdown();
    if (failures.length > 0) say(`demo: shutdown problems: ${failures.join('; ')}`);
  }
  const ids = agents();
  return {
    instantiated: ids.length,
    reachedRunning: ids.filter((id) => status.history(id).includes('RUNNING')).length,
    recovered: ids.filter(recovered).length,
    faulted: faulted.size,
    destroyed: ids.filter((id) => status.lastState(id) === 'DESTROYED').length,
    failed: requests.length - ids.filter((id) => status.lastState(id) === 'DESTROYED').length,
  };
}

export function formatSummary(s: DemoSummary): string {
  return `demo: ${s.instantiated} instantiated, ${s.reachedRunning} reached RUNNING, ${s.recovered} recovered, ${s.destroyed} destroyed, ${s.failed} failed`;
}

/** The demo went as it should: every agent destroyed, none failed, every faulted agent recovered. */
export function demoSucceeded(s: DemoSummary, agents: number): boolean {
  return s.failed === 0 && s.destroyed === agents && s.recovered >= s.faulted;
}

/** The pid of an agent's process as the local driver recorded it (`<stateDir>/<agentId>/state.json`). */
function readAgentProcess(stateDir: string, agentId: string): { pid: number; processStart: string | null } | undefined {
  try {
    const state = parseState(readFileSync(join(stateDir, agentId, 'state.json'), 'utf8'));
    return state ? { pid: state.pid, processStart: state.processStart } : undefined;
  } catch {
    return undefined;
  }
}

