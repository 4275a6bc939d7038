import { randomUUID } from 'node:crypto';
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

export interface DemoOptions {
  readonly agents: number;
  /** Per phase (all RUNNING, all STOPPED, all DESTROYED). */
  readonly phaseTimeoutMs: number;
}

export interface DemoSummary {
  readonly instantiated: number;
  readonly reachedRunning: number;
  readonly destroyed: number;
  readonly failed: number;
}

const SHOWN: readonly AgentState[] = ['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'DESTROYING', 'DESTROYED', 'FAILED', 'REJECTED'];
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
  const stackEnv: Record<string, string | undefined> = { ...localStackEnv(root), ...process.env };
  // The stack's OPA stands in for SentinelNet, so the demo's policy decisions come over HTTP.
  const env = { LOG_LEVEL: 'error', ...stackEnv, ...(stackEnv.SENTINELNET_URL || !stackEnv.OPA_URL ? {} : { SENTINELNET_URL: stackEnv.OPA_URL }) };
  const config = loadServiceConfig(env);
  const report = await bootstrapFleet(root, config, env, createLogger('bootstrap', 'warn'));
  say(`demo: database migrated (${report.migrations.length} new), topics ready (${report.topicsCreated} created), schemas registered`);

  // Each service with its own Kafka principal (its own context in this process), as deployed: the
  // stack's ACLs let each do only its part of the data flow. The bootstrap above ran as the operator.
  const as = (principal: 'ingest' | 'provisioner') => ({ ...env, ...stackCredentials(root, principal) });
  const ingest = await startServices(['ingest'], as('ingest'), { opsServer: false });
  const provisioner = await startServices(['provisioner'], as('provisioner')).catch(async (error: unknown) => {
    await ingest.shutdown();
    throw error;
  });
  const fleet = { shutdown: async () => [...(await ingest.shutdown()), ...(await provisioner.shutdown())] };
  say(`demo: fleet running (ingest and provisioner as Kafka principals User:ingest and User:provisioner; local driver: each agent is a real process (User:agent); policy: ${env.SENTINELNET_URL ? `OPA at ${env.SENTINELNET_URL}` : 'local file'})`);
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

  try {
    say(`demo: the Kernel instantiates ${options.agents} agents`);
    await kernel.send(requests);
    await waitPhase('instantiation', (s) => s === 'RUNNING');
    say('demo: agents are running and heartbeating; the Kernel stops them');
    const live = () => agents().filter((id) => !FINAL_FAILURES.includes(status.lastState(id) ?? 'PENDING'));
    const act = (action: 'STOP' | 'DESTROY', ids: string[]): AgentRequest[] => ids.map((agentId) => agentActionRequest(agentId, action, `demo-${run}-${action}-${agentId}`, 'demo-kernel'));
    await kernel.send(act('STOP', live().filter((id) => status.lastState(id) === 'RUNNING')));
    await waitPhase('stop', (s) => s === 'STOPPED' || s === 'DESTROYED');
    say('demo: the Kernel destroys them');
    await kernel.send(act('DESTROY', live().filter((id) => status.lastState(id) !== 'DESTROYED')));
    await waitPhase('destroy', (s) => s === 'DESTROYED');
  } finally {
    await status.stop().catch(() => undefined);
    await kernel.disconnect().catch(() => undefined);
    const failures = await fleet.shutdown();
    if (failures.length > 0) say(`demo: shutdown problems: ${failures.join('; ')}`);
  }
  const ids = agents();
  return {
    instantiated: ids.length,
    reachedRunning: ids.filter((id) => status.history(id).includes('RUNNING')).length,
    destroyed: ids.filter((id) => status.lastState(id) === 'DESTROYED').length,
    failed: requests.length - ids.filter((id) => status.lastState(id) === 'DESTROYED').length,
  };
}

export function formatSummary(s: DemoSummary): string {
  return `demo: ${s.instantiated} instantiated, ${s.reachedRunning} reached RUNNING, ${s.destroyed} destroyed, ${s.failed} failed`;
}

