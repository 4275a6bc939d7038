import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { Admin } from 'kafkajs';
import { auditHash } from '../../../../lib/audit.ts';
import { recordKey } from '../../../../lib/contracts/schemas.ts';
import type { AgentCommand, AgentRequest, AgentStatus, AuditEvent } from '../../../../lib/contracts/types.ts';
import type { KafkaRecord } from '../../../../lib/kafka/types.ts';
import { DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import { resolveSecretFiles } from '../../../../lib/secrets.ts';
import { createServiceContext, loadServiceConfig, type ServiceContext } from '../../../../lib/service/context.ts';
import { agentIdFor } from '../../../../services/ingest/idempotency.ts';
import { startIngest, type RunningIngest } from '../../../../services/ingest/main.ts';
import { createTestPki, mtlsRequest, writeServerFiles, type PkiFiles, type TestPki } from '../../../support/certs.ts';
import { eventually, rawKafka, readRecords } from '../../../support/runtime.ts';
import { uniqueName } from '../../../support/stack.ts';
import { createIngestWorld, type IngestWorld } from './world.ts';

// The Kafka path of ingest on the real stack: Avro AgentRequests on a prefixed agent-requests topic,
// startIngest on a ServiceContext, the outbox relay publishing commands, status and audit events.
jest.setTimeout(180_000);

const RESEARCH_AGENT = randomUUID();
const PLATFORM_AGENT = randomUUID();

function instantiate(key: string, overrides: Partial<AgentRequest> = {}, resources: Partial<NonNullable<AgentRequest['spec']>['resources']> = {}): AgentRequest {
  return {
    requestId: randomUUID(),
    idempotencyKey: key,
    action: 'INSTANTIATE',
    agentId: null,
    spec: {
      template: 'echo',
      image: null,
      command: [],
      environment: [{ name: 'API_KEY', ref: 'vault:kv/agents/echo#api-key' }],
      resources: { cpuMillicores: 500, memoryMiB: 256, gpuCount: 0, gpuType: null, ...resources },
    },
    division: 'research',
    region: 'eu-west-1',
    labels: { team: 'nlp' },
    requestedBy: 'kernel',
    createdAt: new Date(),
    ...overrides,
  };
}

function act(action: AgentRequest['action'], agentId: string, overrides: Partial<AgentRequest> = {}): AgentRequest {
  return { requestId: randomUUID(), idempotencyKey: `${action}-${randomUUID()}`, action, agentId, spec: null, division: 'research', region: null, labels: {}, requestedBy: 'kernel', createdAt: new Date(), ...overrides };
}

describe('ingest: the agent-requests worker on the real stack', () => {
  let world: IngestWorld;
  let ctx: ServiceContext;
  let ingest: RunningIngest;
  let admin: Admin;
  let pki: TestPki;
  let files: PkiFiles;
  const groupId = uniqueName('ingest-group');

  const decode = async <T>(records: KafkaRecord[]) => Promise.all(records.map(async (r) => ({ key: r.key?.toString(), value: (await world.codec.decode(r.value ?? Buffer.alloc(0))) as T })));
  const query = async <T extends Record<string, unknown>>(sql: string, params: unknown[] = []) => (await (ctx.pool ?? { query: () => Promise.reject(new Error('no pool')) }).query<T>(sql, params)).rows;

  /** Produces Avro requests (keyed as the Kernel keys them) and raw records to agent-requests. */
  async function produce(records: Array<AgentRequest | { key: string; raw: Buffer }>): Promise<void> {
    const producer = rawKafka().producer();
    await producer.connect();
    try {
      const messages = await Promise.all(
        records.map(async (r) =>
          'raw' in r ? { key: r.key, value: r.raw } : { key: recordKey('agent-requests', r), value: await world.codec.encode(`${world.topics['agent-requests']}-value`, r) },
        ),
      );
      await producer.send({ topic: world.topics['agent-requests'], acks: -1, messages });
    } finally {
      await producer.disconnect();
    }
  }

  /** Waits until the worker has committed every record of agent-requests and the relay has published every outbox row. */
  async function settled(): Promise<void> {
    const topic = world.topics['agent-requests'];
    await eventually(async () => {
      const ends = await admin.fetchTopicOffsets(topic);
      const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
      return ends.every((end) => end.high === '0' || committed?.partitions.find((p) => p.partition === end.partition)?.offset === end.high);
    }, 60_000, 'every agent-requests record committed');
    await eventually(async () => (await query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL'))[0]?.n === 0, 30_000, 'the outbox published');
  }

  beforeAll(async () => {
    world = await createIngestWorld('it-ingest');
    admin = rawKafka().admin();
    await admin.connect();
    pki = createTestPki();
    files = writeServerFiles(pki);
    // The stack's Kafka credentials are files (KAFKA_SSL_*_FILE), read as a service's start-up reads them.
    const config = loadServiceConfig(resolveSecretFiles({ ...world.env, TOPIC_PREFIX: world.prefix, DATABASE_SCHEMA: world.schema, HTTP_PORT: '0', LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent' }));
    ctx = await createServiceContext({ service: 'ingest', config, database: true, opsServer: false });
    ingest = await startIngest(ctx, {
      identitiesFile: join(process.cwd(), 'config', 'identities.json'),
      groupId,
      api: { port: 0, host: '127.0.0.1', tlsCertFile: files.serverCertFile, tlsKeyFile: files.serverKeyFile, tlsCaFile: files.caFile },
    });
    // Two existing agents (as the provisioner would have written them).
    await query(
      `INSERT INTO agents (id, state, spec, lifecycle, division, version) VALUES ($1, 'RUNNING', '{}', '{}', 'research', 3), ($2, 'STOPPED', '{}', '{}', 'platform', 7)`,
      [RESEARCH_AGENT, PLATFORM_AGENT],
    );
    // Generous: on a busy shared stack, migrations (one node-pg-migrate lock per database) and the
    // relay's start can wait for other test files.
  }, 300_000);

  afterAll(async () => {
    await ingest?.stop();
    await ctx?.shutdown();
    await admin?.disconnect();
    files?.remove();
    await world?.teardown();
  });

  const accepted = instantiate(`kafka-${randomUUID()}`);
  const duplicate = { ...accepted, requestId: randomUUID(), createdAt: new Date(Date.now() + 1000) };
  const conflicting = instantiate(accepted.idempotencyKey, {}, { cpuMillicores: 1000 });
  const invalid = instantiate(`invalid-${randomUUID()}`, {}, { gpuCount: 99, gpuType: 'nvidia-a100' });
  const byViewer = instantiate(`viewer-${randomUUID()}`, { requestedBy: 'viewer' });
  const outOfDivision = instantiate(`bot-${randomUUID()}`, { requestedBy: 'research-bot', division: 'platform' });
  const unknownAgent = act('STOP', randomUUID());
  const stopResearch = act('STOP', RESEARCH_AGENT);
  // research-bot may DESTROY in research, the division it claims, but the agent lives in platform.
  const destroyPlatform = act('DESTROY', PLATFORM_AGENT, { requestedBy: 'research-bot', division: 'research' });
  const badRequestId = { ...instantiate(`bad-id-${randomUUID()}`), requestId: 'not-a-uuid' };

  it('decides each request once, publishes command, status and audit through the outbox, and dead-letters what it cannot read', async () => {
    await produce([
      accepted,
      duplicate,
      conflicting,
      invalid,
      byViewer,
      outOfDivision,
      unknownAgent,
      stopResearch,
      destroyPlatform,
      { key: 'garbage', raw: Buffer.from('definitely not avro') },
      { key: 'bad-id', raw: await world.codec.encode(`${world.topics['agent-requests']}-value`, badRequestId) },
    ]);
    await settled();

    // One row per idempotency key: the duplicate and the conflict stored nothing.
    const rows = await query<{ request_id: string; outcome: string; reason: string; agent_id: string | null }>('SELECT request_id, outcome, reason, agent_id FROM requests');
    expect(rows).toHaveLength(7);
    const row = (r: AgentRequest) => rows.find((x) => x.request_id === r.requestId);
    const agentA = agentIdFor('kernel', accepted.idempotencyKey);
    expect(row(accepted)).toMatchObject({ outcome: 'ACCEPTED', reason: '', agent_id: agentA });
    expect(row(duplicate)).toBeUndefined();
    expect(row(conflicting)).toBeUndefined();
    expect(row(invalid)?.reason).toMatch(/^VALIDATION_FAILED: spec\.resources\.gpuCount: must be at most 16 \(got 99\)/);
    expect(row(byViewer)?.reason).toMatch(/^UNAUTHORIZED: identity "viewer" may not INSTANTIATE/);
    expect(row(outOfDivision)?.reason).toMatch(/^UNAUTHORIZED: identity "research-bot" may not INSTANTIATE agents of division "platform"/);
    expect(row(unknownAgent)?.reason).toMatch(/^UNKNOWN_AGENT: /);
    expect(row(stopResearch)).toMatchObject({ outcome: 'ACCEPTED', agent_id: RESEARCH_AGENT });
    expect(row(destroyPlatform)?.reason).toMatch(/^UNAUTHORIZED: identity "research-bot" may not DESTROY agents of division "platform"/);

    // Commands: only the two accepted requests, keyed by agentId.
    const outbox = await query<{ topic: string; n: number }>('SELECT topic, count(*)::int AS n FROM outbox GROUP BY topic');
    expect(Object.fromEntries(outbox.map((o) => [o.topic, o.n]))).toEqual({ [world.topics['agent-commands']]: 2, [world.topics['agent-status']]: 8, [world.topics['audit-events']]: 8 });
    const commands = await decode<AgentCommand>(await readRecords(world.topics['agent-commands'], 2, uniqueName('cmd-reader')));
    const instantiateCommand = commands.find((c) => c.value.requestId === accepted.requestId);
    expect(instantiateCommand?.key).toBe(agentA);
    expect(instantiateCommand?.value).toMatchObject({ agentId: agentA, command: 'INSTANTIATE', spec: accepted.spec, division: 'research', region: 'eu-west-1', labels: { team: 'nlp' }, issuedBy: 'kernel', attempt: 1, reason: null });
    expect(rows.length && (await query<{ command_id: string }>('SELECT command_id FROM requests WHERE request_id = $1', [accepted.requestId]))[0]?.command_id).toBe(instantiateCommand?.value.commandId);
    expect(commands.find((c) => c.value.requestId === stopResearch.requestId)?.value).toMatchObject({ agentId: RESEARCH_AGENT, command: 'STOP', spec: null, region: null, labels: {} });

    // Status: PENDING for the new agent; rejections with their reason; acknowledgements with the current state.
    const statuses = await decode<AgentStatus>(await readRecords(world.topics['agent-status'], 8, uniqueName('status-reader')));
    const status = (r: AgentRequest) => statuses.find((s) => s.value.requestId === r.requestId);
    expect(status(accepted)?.key).toBe(agentA);
    expect(status(accepted)?.value).toMatchObject({ agentId: agentA, state: 'PENDING', previousState: null, version: 0, reason: 'request accepted', commandId: instantiateCommand?.value.commandId });
    // The conflict does not pretend the first agent was rejected: it is still PENDING.
    expect(status(conflicting)?.value).toMatchObject({ agentId: agentA, state: 'PENDING', version: 0, commandId: null });
    expect(status(conflicting)?.value.reason).toMatch(new RegExp(`^IDEMPOTENCY_CONFLICT: idempotency key "${accepted.idempotencyKey}" was already used by request ${accepted.requestId}`));
    expect(status(invalid)?.value).toMatchObject({ agentId: agentIdFor('kernel', invalid.idempotencyKey), state: 'REJECTED', previousState: null, version: 0 });
    expect(status(invalid)?.value.reason).toMatch(/gpuCount: must be at most 16/);
    expect(status(byViewer)?.value.state).toBe('REJECTED');
    expect(status(outOfDivision)?.value.state).toBe('REJECTED');
    expect(status(unknownAgent)?.value).toMatchObject({ agentId: unknownAgent.agentId, state: 'REJECTED' });
    expect(status(stopResearch)?.value).toMatchObject({ agentId: RESEARCH_AGENT, state: 'RUNNING', previousState: 'RUNNING', version: 3, reason: 'request accepted' });
    expect(status(destroyPlatform)?.value).toMatchObject({ agentId: PLATFORM_AGENT, state: 'STOPPED', version: 7 });
    expect(status(destroyPlatform)?.value.reason).toMatch(/^UNAUTHORIZED: /);
    expect(status(duplicate)).toBeUndefined();

    // Audit: one per decision, actor = the requesting identity, hash verifiable.
    const audits = await decode<AuditEvent>(await readRecords(world.topics['audit-events'], 8, uniqueName('audit-reader')));
    const audit = (r: AgentRequest) => audits.find((a) => a.value.requestId === r.requestId)?.value;
    expect(audit(accepted)).toMatchObject({ action: 'request.accepted', actor: 'kernel', agentId: agentA });
    expect(JSON.parse(audit(accepted)?.payload ?? '{}')).toMatchObject({ source: 'kafka', outcome: 'ACCEPTED', idempotencyKey: accepted.idempotencyKey, commandId: instantiateCommand?.value.commandId });
    expect(audit(conflicting)).toMatchObject({ action: 'request.rejected' });
    expect(JSON.parse(audit(conflicting)?.payload ?? '{}')).toMatchObject({ code: 'IDEMPOTENCY_CONFLICT', stored: false, conflictsWith: accepted.requestId });
    expect(audit(byViewer)).toMatchObject({ action: 'request.rejected', actor: 'viewer' });
    expect(JSON.parse(audit(invalid)?.payload ?? '{}')).toMatchObject({ code: 'VALIDATION_FAILED' });
    for (const { value } of audits) {
      const { hash, ...rest } = value;
      expect(auditHash(rest)).toBe(hash);
    }
    expect(new Set(audits.map((a) => a.key))).toEqual(new Set(audits.map((a) => a.value.agentId)));

    // What cannot be read as a request: dead-lettered with the reason, the original bytes kept.
    const dead = await readRecords(`${world.topics['agent-requests']}.dlq`, 2, uniqueName('dlq-reader'));
    const byKey = new Map(dead.map((r) => [r.key?.toString(), r]));
    expect(byKey.get('garbage')?.value?.toString()).toBe('definitely not avro');
    expect(byKey.get('garbage')?.headers).toMatchObject({
      [DLQ_HEADERS.errorCode]: 'DECODE_BAD_FRAMING',
      [DLQ_HEADERS.sourceTopic]: world.topics['agent-requests'],
      [DLQ_HEADERS.service]: 'ingest',
      [DLQ_HEADERS.attempts]: '1',
    });
    expect(byKey.get('garbage')?.headers[DLQ_HEADERS.errorMessage]).toMatch(/not a Confluent-framed Avro record/);
    expect(byKey.get('bad-id')?.headers[DLQ_HEADERS.errorCode]).toBe('VALIDATION_FAILED');
    expect(byKey.get('bad-id')?.headers[DLQ_HEADERS.errorMessage]).toMatch(/requestId: must be a lower-case uuid/);
  });

  it('serves the mTLS API from startIngest: a POST becomes the same request and events; repeating a Kafka request is answered with its outcome', async () => {
    const port = ingest.apiAddress?.port ?? 0;
    expect(port).toBeGreaterThan(0);
    const key = `api-${randomUUID()}`;
    const body = { idempotencyKey: key, action: 'INSTANTIATE', spec: { template: 'echo', resources: { cpuMillicores: 250, memoryMiB: 128 } }, division: 'research', region: 'eu-west-1' };
    const response = await mtlsRequest(port, { method: 'POST', path: '/v1/requests', ca: pki.ca.cert, client: pki.clients.kernel, body });
    expect(response.status).toBe(202);
    const answer = response.body as { requestId: string; agentId: string };
    expect(answer.agentId).toBe(agentIdFor('kernel', key));

    // The same request the Kernel sent on Kafka, repeated over the API: the stored outcome, no new agent.
    const { requestId: _r, createdAt: _c, requestedBy: _b, ...same } = accepted;
    const repeat = await mtlsRequest(port, { method: 'POST', path: '/v1/requests', ca: pki.ca.cert, client: pki.clients.kernel, body: same });
    expect(repeat).toMatchObject({ status: 202, body: { requestId: accepted.requestId, agentId: agentIdFor('kernel', accepted.idempotencyKey), replayed: true } });

    await settled();
    const commands = await decode<AgentCommand>(await readRecords(world.topics['agent-commands'], 3, uniqueName('cmd-reader-2')));
    expect(commands.filter((c) => c.value.requestId === answer.requestId)).toHaveLength(1);
    expect(commands.filter((c) => c.value.agentId === agentIdFor('kernel', accepted.idempotencyKey))).toHaveLength(1);
    const statuses = await decode<AgentStatus>(await readRecords(world.topics['agent-status'], 9, uniqueName('status-reader-2')));
    expect(statuses.find((s) => s.value.requestId === answer.requestId)?.value).toMatchObject({ state: 'PENDING', agentId: answer.agentId });
    const audits = await decode<AuditEvent>(await readRecords(world.topics['audit-events'], 9, uniqueName('audit-reader-2')));
    expect(JSON.parse(audits.find((a) => a.value.requestId === answer.requestId)?.value.payload ?? '{}')).toMatchObject({ source: 'api', requestedBy: 'kernel' });
  });
});
