import { randomUUID } from 'node:crypto';
import { Kafka } from 'kafkajs';
import pg from 'pg';
import type { AgentRequest } from '../../../lib/contracts/types.ts';
import { DLQ_HEADERS } from '../../../lib/runtime/dlq.ts';
import type { ServiceContext } from '../../../lib/service/context.ts';
import { startServices } from '../../../cli/services.ts';
import { stackCredentials } from '../../../dev/stack/endpoints.ts';
import { eventually, readRecords } from '../../support/runtime.ts';
import { testKafkaConfig, uniqueName } from '../../support/stack.ts';
import { connectKernel, createFleetWorld, watchStatus, within, type FleetWorld, type KernelClient, type StatusWatcher } from '../../support/fleet.ts';
import { agentActionRequest, instantiateRequest } from '../../../dev/kernel/client.ts';

// The request path under the real per-service principals, as the demo runs it: the other fleet tests
// run the services as the operator (a super user), so only here does a missing ACL (lib/contracts/acls.ts)
// show. Ingest runs as User:ingest and the provisioner as User:provisioner, each on its own context;
// the Kernel is User:kernel. The simulated driver keeps agent processes (User:agent) out of it.
jest.setTimeout(180_000);

const instantiate = (key: string, gpuCount = 0): AgentRequest => instantiateRequest(key, { labels: { test: 'acl-fleet' }, gpuCount });
const destroy = (agentId: string, key: string): AgentRequest => agentActionRequest(agentId, 'DESTROY', key);

describe('request path under least-privilege principals (ingest, provisioner, kernel)', () => {
  let world: FleetWorld;
  let ingest: ServiceContext | undefined;
  let provisioner: ServiceContext | undefined;
  let kernel: KernelClient;
  let status: StatusWatcher;
  let db: pg.Client;

  const agentOf = (requestId: string) => [...status.states.values()].flat().find((s) => s.requestId === requestId)?.agentId;

  /** Records on every dead-letter topic of the world, by topic (high watermarks: no consumer needed). */
  async function deadLetters(): Promise<Record<string, number>> {
    const admin = new Kafka(testKafkaConfig('acl-fleet-dlq')).admin();
    await admin.connect();
    try {
      const counts: Record<string, number> = {};
      for (const topic of (await admin.listTopics()).filter((t) => t.startsWith(world.env.TOPIC_PREFIX ?? '') && t.endsWith('.dlq'))) {
        counts[topic] = (await admin.fetchTopicOffsets(topic)).reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0);
      }
      return counts;
    } finally {
      await admin.disconnect();
    }
  }

  beforeAll(async () => {
    // The bootstrap (as the operator) creates the prefix's topics and grants every role its ACLs on them.
    world = await createFleetWorld('aclfleet', { PROVISIONER_DRIVER: 'simulated' });
    const as = (principal: 'ingest' | 'provisioner') => ({ ...world.env, ...stackCredentials(process.cwd(), principal) });
    ingest = await within('ingest start (User:ingest)', 60_000, startServices(['ingest'], as('ingest'), { opsServer: false }));
    provisioner = await within('provisioner start (User:provisioner)', 60_000, startServices(['provisioner'], as('provisioner'), { opsServer: false }));
    kernel = await connectKernel(world);
    status = await watchStatus(world);
    db = new pg.Client({ connectionString: world.env.DATABASE_URL, options: `-c search_path=${world.schema}` });
    await db.connect();
  });

  afterAll(async () => {
    await status?.stop();
    await kernel?.disconnect();
    await provisioner?.shutdown();
    await ingest?.shutdown();
    await db?.end();
    if (world) {
      // Consumer groups outlive their topics: remove the world's (services', watcher's, reader's: all prefixed).
      const admin = new Kafka(testKafkaConfig('acl-fleet-teardown')).admin();
      try {
        await admin.connect();
        const prefix = world.env.TOPIC_PREFIX ?? '';
        const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(prefix));
        if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
      } finally {
        await admin.disconnect().catch(() => undefined);
        await world.teardown();
      }
    }
  });

  it('instantiates and destroys agents, rejects an invalid request and dead-letters garbage, with no authorization failure', async () => {
    const run = randomUUID().slice(0, 8);
    const requests = Array.from({ length: 3 }, (_, i) => instantiate(`acl-${run}-${i}`));
    const invalid = instantiate(`acl-${run}-invalid`, 99);
    await kernel.send([...requests, invalid]);
    // The Kernel's principal writes an undecodable record: ingest (User:ingest) must dead-letter it.
    await kernel.sendRaw(Buffer.from('definitely not avro'), `garbage-${run}`);

    await eventually(() => [...requests, invalid].every((r) => agentOf(r.requestId) !== undefined), 60_000, 'every request answered');
    const rejected = agentOf(invalid.requestId) ?? '';
    expect(status.lastState(rejected)).toBe('REJECTED');
    expect(status.last(rejected)?.reason).toMatch(/gpu/i);

    const agents = requests.map((r) => agentOf(r.requestId) ?? '');
    await eventually(() => agents.every((id) => status.lastState(id) === 'RUNNING'), 60_000, 'agents RUNNING');
    await kernel.send(agents.map((id, i) => destroy(id, `acl-${run}-destroy-${i}`)));
    await eventually(() => agents.every((id) => status.lastState(id) === 'DESTROYED'), 60_000, 'agents DESTROYED');

    for (const id of agents) {
      // The provisioner's transitions, in version order (ingest's acknowledgements repeat a version).
      const byVersion = new Map<number, string>();
      for (const event of status.states.get(id) ?? []) if (event.version > 0 && !byVersion.has(event.version)) byVersion.set(event.version, event.state);
      const versions = [...byVersion.keys()];
      expect(versions).toEqual([...versions].sort((a, b) => a - b));
      expect(versions.map((v) => byVersion.get(v))).toEqual(['PENDING', 'PROVISIONING', 'STARTING', 'RUNNING', 'STOPPING', 'DESTROYING', 'DESTROYED']);
    }

    // Every outbox row (commands, status, audit) was published by a least-privilege principal.
    await eventually(async () => Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM outbox WHERE published_at IS NULL')).rows[0]?.n) === 0, 30_000, 'outbox drained');

    // Exactly one dead letter in the whole world: the garbage, on agent-requests.dlq, written by User:ingest.
    const dlq = `${world.topics['agent-requests']}.dlq`;
    const [dead] = await readRecords(dlq, 1, uniqueName(`${world.env.TOPIC_PREFIX ?? ''}dlq-reader`));
    expect(dead?.key?.toString()).toBe(`garbage-${run}`);
    expect(dead?.headers).toMatchObject({ [DLQ_HEADERS.errorCode]: 'DECODE_BAD_FRAMING', [DLQ_HEADERS.service]: 'ingest' });
    const counts = await deadLetters();
    expect(Object.entries(counts).filter(([, n]) => n > 0)).toEqual([[dlq, 1]]);
  });
});
