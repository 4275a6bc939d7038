import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Counter, Registry } from 'prom-client';
import type { AgentRequest } from '../../../../lib/contracts/types.ts';
import { createPool, type Pool } from '../../../../lib/db/pool.ts';
import { errorCode, isRetryable, unavailableDependency } from '../../../../lib/errors.ts';
import { createLogger } from '../../../../lib/logger.ts';
import type { DecodedBatch } from '../../../../lib/runtime/batch-worker.ts';
import { loadIdentitiesConfig } from '../../../../services/ingest/authz.ts';
import { createIngestBatchHandler, validateAgentRequestRecord, type FailedRequest, type IngestDeps } from '../../../../services/ingest/handler.ts';
import { agentIdFor } from '../../../../services/ingest/idempotency.ts';
import { createIngestWorld, type IngestWorld } from './world.ts';

// The batch handler against real Postgres and the real registry (no Kafka: the handler is called as
// the batch runtime calls it): one batch mixing valid, duplicate, conflicting, invalid and failing
// requests for the same and different agents ends in the same rows, events, answers and dead letters
// as the same requests applied one by one, each in a batch of its own.
jest.setTimeout(180_000);

const RESEARCH_AGENT = randomUUID();
const PLATFORM_AGENT = randomUUID();

function instantiate(key: string, overrides: Partial<AgentRequest> = {}, cpuMillicores = 500): AgentRequest {
  return {
    requestId: randomUUID(),
    idempotencyKey: key,
    action: 'INSTANTIATE',
    agentId: null,
    spec: { template: 'echo', image: null, command: [], environment: [], resources: { cpuMillicores, memoryMiB: 256, gpuCount: 0, gpuType: null } },
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

/** One schema of the world with its pool, the handler's deps, and what the handler logged and dead-lettered. */
interface Run {
  readonly world: IngestWorld;
  readonly pool: Pool;
  readonly deps: IngestDeps;
  readonly logs: Record<string, unknown>[];
  readonly dead: FailedRequest[];
  readonly registry: Registry;
}

async function createRun(name: string): Promise<Run> {
  const world = await createIngestWorld(name, { topics: false });
  const pool = createPool({ connectionString: world.env.DATABASE_URL ?? '', schema: world.schema, max: 2 });
  await pool.query(`INSERT INTO agents (id, state, spec, lifecycle, division, version) VALUES ($1, 'RUNNING', '{}', '{}', 'research', 3), ($2, 'STOPPED', '{}', '{}', 'platform', 7)`, [RESEARCH_AGENT, PLATFORM_AGENT]);
  const registry = new Registry();
  const dead: FailedRequest[] = [];
  const deps: IngestDeps = {
    pool,
    codec: world.codec,
    topics: world.topics,
    authz: loadIdentitiesConfig(join(process.cwd(), 'config', 'identities.json')),
    rules: { knownTemplates: ['echo'] },
    metrics: { requestsDecided: new Counter({ name: 'requests_total', help: 'decisions', labelNames: ['source', 'outcome', 'code'], registers: [registry] }) },
    maxAttempts: 5,
    deadLetter: (_topic, failed) => {
      dead.push(...failed);
      return Promise.resolve();
    },
  };
  return { world, pool, deps, logs: [], dead, registry };
}

async function handle(run: Run, requests: readonly { request: AgentRequest; offset: number }[], attempt = 1): Promise<void> {
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') run.logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger('ingest', 'info', stream);
  const batch: DecodedBatch<AgentRequest> = {
    topic: run.world.topics['agent-requests'],
    partition: 0,
    highWatermark: String(requests.length),
    attempt,
    // What the runtime's `validate` lets through.
    records: requests.map(({ request, offset }) => ({ value: validateAgentRequestRecord(request), offset: String(offset), key: request.idempotencyKey, timestamp: String(Date.now()) })),
  };
  await createIngestBatchHandler()(batch, { deps: run.deps, log });
  await new Promise((resolve) => setImmediate(resolve));
}

/** What the run left, with the random parts (event ids, command ids, times, trace ids, the prefix) left out. */
async function outcome(run: Run) {
  const prefix = run.world.prefix;
  const rows = (
    await run.pool.query<Record<string, unknown>>(
      'SELECT request_id, idempotency_key, payload_hash, action, agent_id, division, requested_by, outcome, reason, command_id IS NOT NULL AS has_command FROM requests ORDER BY request_id',
    )
  ).rows;
  const outbox = (await run.pool.query<{ topic: string; key: string; value: Buffer }>('SELECT topic, key, value FROM outbox ORDER BY id')).rows;
  const events = await Promise.all(
    outbox.map(async ({ topic, key, value }) => {
      const decoded = (await run.world.codec.decode(value)) as Record<string, unknown>;
      const { eventId: _e, commandId, time: _t, issuedAt: _i, traceId: _tr, hash: _h, previousHash: _p, payload, ...rest } = decoded;
      const parsedPayload = typeof payload === 'string' ? (JSON.parse(payload) as Record<string, unknown>) : undefined;
      if (parsedPayload) delete parsedPayload.commandId;
      return { topic: topic.slice(prefix.length), key, ...rest, hasCommand: commandId !== null && commandId !== undefined, ...(parsedPayload ? { payload: parsedPayload } : {}) };
    }),
  );
  // Events in order per agent (the order consumers of one key see).
  const byAgent: Record<string, unknown[]> = {};
  for (const event of events) (byAgent[event.key] ??= []).push(event);
  const answers = run.logs
    .filter((l) => typeof l.requestId === 'string')
    .map(({ requestId, msg, outcome: o, code, reason, originalRequestId, action, commandId }) => ({ requestId, msg, outcome: o, code, reason, originalRequestId, action, hasCommand: typeof commandId === 'string' }));
  const dead = run.dead.map((d) => ({ offset: d.record.offset, code: errorCode(d.error) }));
  const decisions = (await run.registry.getMetricsAsJSON()).flatMap((m) => m.values.map((v) => ({ labels: v.labels, value: v.value })));
  return { rows, byAgent, answers, dead, decisions };
}

describe('ingest: a batch decided in one transaction answers as requests one by one', () => {
  let sequential: Run;
  let batched: Run;
  let flaky: Run;

  beforeAll(async () => {
    sequential = await createRun('it-ingest-seq');
    batched = await createRun('it-ingest-batch');
    flaky = await createRun('it-ingest-flaky');
    // A request Postgres refuses with a retryable error (a serialization failure) every time.
    await flaky.pool.query(`
      CREATE FUNCTION refuse_flaky() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.idempotency_key LIKE 'flaky-%' THEN RAISE EXCEPTION 'could not serialize (test)' USING ERRCODE = '40001'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER refuse_flaky BEFORE INSERT ON requests FOR EACH ROW EXECUTE FUNCTION refuse_flaky();`);
  }, 300_000);

  afterAll(async () => {
    for (const run of [sequential, batched, flaky]) {
      await run?.pool.end();
      await run?.world.teardown();
    }
  });

  it('gives every request of a mixed batch the result it gets alone, and dead-letters only the request Postgres refuses', async () => {
    const first = instantiate(`batch-${randomUUID()}`);
    const agentA = agentIdFor('kernel', first.idempotencyKey);
    const stopResearch = act('STOP', RESEARCH_AGENT);
    const requests: AgentRequest[] = [
      first,
      // The same key and payload: the first outcome again, nothing written.
      { ...first, requestId: randomUUID(), createdAt: new Date(Date.now() + 1000) },
      // The same key, another payload: a conflict naming the first request (the agent is PENDING).
      instantiate(first.idempotencyKey, {}, 1000),
      // The same key from another identity: another, independent request and agent.
      instantiate(first.idempotencyKey, { requestedBy: 'research-bot' }),
      // Acting on the agent accepted earlier in the same batch (PENDING, not created yet).
      act('STOP', agentA),
      // Invalid, then unauthorized, stored as rejections.
      instantiate(`invalid-${randomUUID()}`, {}, 999_999),
      instantiate(`viewer-${randomUUID()}`, { requestedBy: 'viewer' }),
      // A row Postgres refuses (a NUL in a text column): rolled back and dead-lettered alone.
      instantiate(`nul-${randomUUID()}`, { division: 're\u0000search' }),
      stopResearch,
      // stopResearch again (replay), then its key with another action on another agent (conflict).
      { ...stopResearch, requestId: randomUUID() },
      act('DESTROY', PLATFORM_AGENT, { idempotencyKey: stopResearch.idempotencyKey }),
      // research-bot's right in research does not reach the platform agent; the kernel's division is wrong.
      act('DESTROY', PLATFORM_AGENT, { requestedBy: 'research-bot' }),
      act('STOP', PLATFORM_AGENT),
      act('STOP', randomUUID()),
      // A requestId already used, with a new key.
      instantiate(`reused-${randomUUID()}`, { requestId: first.requestId }),
      // An unusable key (control characters).
      instantiate('bad\u0001key'),
      // A new agent after all that, and an action on the existing one in its division.
      instantiate(`late-${randomUUID()}`),
      act('STOP', PLATFORM_AGENT, { division: 'platform' }),
    ];
    const numbered = requests.map((request, offset) => ({ request, offset }));

    for (const one of numbered) await handle(sequential, [one]);
    await handle(batched, numbered);

    const alone = await outcome(sequential);
    const together = await outcome(batched);
    expect(together).toEqual(alone);

    // The mix is what it says: the answers of one by one, as ingest gave them before batching.
    const answer = (r: AgentRequest) => alone.answers.filter((a) => a.requestId === r.requestId);
    // (the last answer under its requestId is the reused requestId's refusal)
    expect(answer(first)[0]).toMatchObject({ msg: 'request accepted', hasCommand: true });
    expect(alone.answers.filter((a) => a.msg === 'repeated request: the stored outcome stands')).toHaveLength(2);
    expect(alone.answers.map((a) => a.code).filter(Boolean)).toEqual([
      'IDEMPOTENCY_CONFLICT',
      'VALIDATION_FAILED',
      'UNAUTHORIZED',
      'IDEMPOTENCY_CONFLICT',
      'UNAUTHORIZED',
      'DIVISION_MISMATCH',
      'UNKNOWN_AGENT',
      'DUPLICATE_REQUEST_ID',
      'VALIDATION_FAILED',
    ]);
    expect(alone.answers.filter((a) => a.msg === 'request accepted')).toHaveLength(6);
    expect(alone.dead).toEqual([{ offset: '7', code: 'DATABASE_REJECTED' }]);
    // The batch's transaction failed on that request and was decided again request by request.
    expect(batched.logs.filter((l) => l.msg === 'a request of the batch failed: deciding the batch again request by request')).toHaveLength(1);
    expect(alone.rows.find((r) => r.idempotency_key === requests[7]?.idempotencyKey)).toBeUndefined();
    // The STOP of the agent accepted in the same batch saw it PENDING.
    expect(alone.byAgent[agentA]).toContainEqual(expect.objectContaining({ topic: 'agent-status', requestId: requests[4]?.requestId, state: 'PENDING', version: 0, reason: 'request accepted' }));
  });

  it('retries the whole batch on a retryable failure of one request, and dead-letters that request alone once the attempts are spent', async () => {
    const requests = [instantiate(`good-${randomUUID()}`), instantiate(`flaky-${randomUUID()}`), instantiate(`good-${randomUUID()}`)];
    const numbered = requests.map((request, offset) => ({ request, offset }));

    let error: unknown;
    await handle(flaky, numbered, 1).catch((e: unknown) => {
      error = e;
    });
    // Retryable, not a dependency outage: the runtime retries the batch after a backoff; nothing is stored.
    expect(isRetryable(error)).toBe(true);
    expect(unavailableDependency(error)).toBeUndefined();
    expect((await flaky.pool.query('SELECT 1 FROM requests')).rowCount).toBe(0);
    expect((await flaky.pool.query('SELECT 1 FROM outbox')).rowCount).toBe(0);

    await handle(flaky, numbered, flaky.deps.maxAttempts);
    const stored = await flaky.pool.query<{ idempotency_key: string; outcome: string }>('SELECT idempotency_key, outcome FROM requests ORDER BY idempotency_key');
    expect(stored.rows.map((r) => r.idempotency_key).sort()).toEqual([requests[0]?.idempotencyKey, requests[2]?.idempotencyKey].sort());
    expect(stored.rows.every((r) => r.outcome === 'ACCEPTED')).toBe(true);
    expect((await flaky.pool.query('SELECT 1 FROM outbox')).rowCount).toBe(6);
    expect(flaky.dead.map((d) => ({ offset: d.record.offset, attempts: d.attempts, retryable: isRetryable(d.error) }))).toEqual([{ offset: '1', attempts: flaky.deps.maxAttempts, retryable: true }]);
  });
});
