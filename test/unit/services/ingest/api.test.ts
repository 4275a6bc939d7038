import { errorCode, errorMessage, isAppError } from '../../../../lib/errors.ts';
import { decodeCursor, encodeCursor, outcomeResponse, parseListQuery, requestFromBody, REJECTION_STATUS } from '../../../../services/ingest/api.ts';
import { REJECTION_CODES, type RequestOutcome } from '../../../../services/ingest/process-request.ts';

const now = new Date('2025-02-03T04:05:06.789Z');
const newId = () => '11111111-2222-4333-8444-555555555555';

function refusal(run: () => unknown): { status: unknown; code: string; message: string } {
  try {
    run();
  } catch (error) {
    if (!isAppError(error)) throw error;
    return { status: error.context.httpStatus, code: errorCode(error), message: errorMessage(error) };
  }
  throw new Error('expected a refusal');
}

const body = {
  idempotencyKey: 'k-1',
  action: 'INSTANTIATE',
  spec: { image: 'ghcr.io/agent-manager/echo:1', resources: { cpuMillicores: 100, memoryMiB: 128 } },
  division: 'research',
  region: 'eu-west-1',
};

describe('requestFromBody', () => {
  it('fills the Avro defaults, a new requestId, createdAt = now and requestedBy = the certificate identity', () => {
    expect(requestFromBody(body, 'kernel', now, newId)).toEqual({
      requestId: newId(),
      idempotencyKey: 'k-1',
      action: 'INSTANTIATE',
      agentId: null,
      spec: { template: null, image: 'ghcr.io/agent-manager/echo:1', command: [], environment: [], resources: { cpuMillicores: 100, memoryMiB: 128, gpuCount: 0, gpuType: null } },
      division: 'research',
      region: 'eu-west-1',
      labels: {},
      requestedBy: 'kernel',
      createdAt: now,
    });
  });

  it('keeps a given requestId and ignores a given createdAt', () => {
    const request = requestFromBody({ ...body, requestId: '0b8e9a0e-1111-4222-8333-444455556666', createdAt: '1999-01-01T00:00:00Z' }, 'kernel', now);
    expect(request.requestId).toBe('0b8e9a0e-1111-4222-8333-444455556666');
    expect(request.createdAt).toBe(now);
  });

  it('accepts requestedBy equal to the identity and refuses another one with 400 REQUESTED_BY_MISMATCH', () => {
    expect(requestFromBody({ ...body, requestedBy: 'kernel' }, 'kernel', now).requestedBy).toBe('kernel');
    expect(refusal(() => requestFromBody({ ...body, requestedBy: 'research-bot' }, 'kernel', now))).toEqual({
      status: 400,
      code: 'REQUESTED_BY_MISMATCH',
      message: 'requestedBy "research-bot" differs from the identity of the client certificate ("kernel"); omit it or send the same value',
    });
  });

  it('refuses bodies that are not an AgentRequest with 400 VALIDATION_FAILED naming the fields', () => {
    expect(refusal(() => requestFromBody(undefined, 'kernel', now))).toMatchObject({ status: 400, code: 'VALIDATION_FAILED' });
    const wrong = refusal(() => requestFromBody({ ...body, action: 'LAUNCH', extra: 1 }, 'kernel', now));
    expect(wrong.status).toBe(400);
    expect(wrong.message).toMatch(/action/);
    expect(wrong.message).toMatch(/extra/);
    expect(refusal(() => requestFromBody({ ...body, requestId: 'not-a-uuid' }, 'kernel', now)).message).toMatch(/requestId: must be a lower-case uuid/);
  });
});

describe('outcomeResponse', () => {
  const base: RequestOutcome = {
    outcome: 'ACCEPTED',
    requestId: 'r',
    idempotencyKey: 'k',
    agentId: 'a',
    commandId: 'c',
    code: null,
    reason: '',
    replayed: false,
    stored: true,
  };

  it('answers 202 with the ids when accepted', () => {
    expect(outcomeResponse(base)).toEqual({ status: 202, body: { requestId: 'r', agentId: 'a', replayed: false, outcome: 'ACCEPTED', commandId: 'c' } });
  });

  it('answers a rejection with its status and { error: { code, message } }', () => {
    const rejected = { ...base, outcome: 'REJECTED' as const, commandId: null, code: 'IDEMPOTENCY_CONFLICT' as const, reason: 'IDEMPOTENCY_CONFLICT: key k was used' };
    expect(outcomeResponse(rejected)).toEqual({
      status: 409,
      body: { error: { code: 'IDEMPOTENCY_CONFLICT', message: 'key k was used', requestId: 'r', agentId: 'a', replayed: false } },
    });
  });

  it('maps every rejection code to a 4xx', () => {
    for (const code of REJECTION_CODES) expect(REJECTION_STATUS[code]).toBeGreaterThanOrEqual(400);
    expect([REJECTION_STATUS.VALIDATION_FAILED, REJECTION_STATUS.UNAUTHORIZED, REJECTION_STATUS.UNKNOWN_AGENT, REJECTION_STATUS.IDEMPOTENCY_CONFLICT]).toEqual([400, 403, 404, 409]);
  });
});

describe('list query and cursor', () => {
  it('round-trips a cursor and refuses anything else', () => {
    const cursor = { createdAt: '2025-01-01T00:00:00.123456Z', id: '7d444840-9dc0-11d1-b245-5ffdce74fad2' };
    expect(decodeCursor(encodeCursor(cursor))).toEqual(cursor);
    expect(decodeCursor('garbage')).toBeUndefined();
    expect(decodeCursor(Buffer.from('["yesterday","x"]').toString('base64url'))).toBeUndefined();
  });

  it('defaults limit to 50, bounds it to 1..500 and validates state', () => {
    expect(parseListQuery({})).toEqual({ state: undefined, division: undefined, cursor: undefined, limit: 50 });
    expect(parseListQuery({ limit: '500', state: 'RUNNING', division: 'research' })).toMatchObject({ limit: 500, state: 'RUNNING', division: 'research' });
    expect(refusal(() => parseListQuery({ limit: '501' }))).toMatchObject({ status: 400, code: 'INVALID_QUERY' });
    expect(refusal(() => parseListQuery({ limit: '0' }))).toMatchObject({ status: 400 });
    expect(refusal(() => parseListQuery({ state: 'ASLEEP' })).message).toMatch(/state: must be one of PENDING/);
    expect(refusal(() => parseListQuery({ status: 'RUNNING' })).message).toMatch(/status/);
    expect(refusal(() => parseListQuery({ cursor: 'nope' }))).toMatchObject({ status: 400, code: 'INVALID_CURSOR' });
  });
});
