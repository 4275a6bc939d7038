import pg from 'pg';
import { AppError, isRetryable, permanentError, retryableError, unavailableDependency, unavailableError } from '../../../lib/errors.ts';

/** A server error as pg reports it: a DatabaseError with a severity and a SQLSTATE. */
function pgServerError(code: string, message: string): Error {
  const error = new pg.DatabaseError(message, message.length, 'error');
  return Object.assign(error, { severity: 'FATAL', code });
}

function socketError(code: string): Error {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:5432`), { code, syscall: 'connect' });
}

describe('unavailableDependency: an outage is not the record’s fault', () => {
  it('reads an explicit dependency', () => {
    const error = unavailableError('registry', 'REGISTRY_UNAVAILABLE', 'registry answered 503');
    expect(error).toBeInstanceOf(AppError);
    expect(isRetryable(error)).toBe(true);
    expect(unavailableDependency(error)).toBe('registry');
  });

  it.each([
    ['57P01 admin shutdown (pg_ctl stop -m fast)', pgServerError('57P01', 'terminating connection due to administrator command')],
    ['57P02 crash shutdown', pgServerError('57P02', 'terminating connection because of crash of another server process')],
    ['57P03 starting up', pgServerError('57P03', 'the database system is starting up')],
    ['class 08 connection failure', pgServerError('08006', 'connection failure')],
    ['too many connections', pgServerError('53300', 'sorry, too many clients already')],
    ['a dropped connection', new Error('Connection terminated unexpectedly')],
    ['a checkout timeout', new Error('timeout exceeded when trying to connect')],
  ])('maps the Postgres error "%s" to postgres', (_, error) => {
    expect(unavailableDependency(error)).toBe('postgres');
    // Wrapped as services wrap it, with the pg error as the cause.
    expect(unavailableDependency(retryableError('DATABASE_UNAVAILABLE', 'Postgres failed', error))).toBe('postgres');
  });

  it('leaves a Postgres error about the data alone, even wrapped as DATABASE_UNAVAILABLE', () => {
    const syntax = pgServerError('42601', 'syntax error at or near "SELEC"');
    expect(unavailableDependency(syntax)).toBeUndefined();
    expect(unavailableDependency(retryableError('DATABASE_UNAVAILABLE', 'Postgres failed', syntax))).toBeUndefined();
    expect(unavailableDependency(pgServerError('23505', 'duplicate key value'))).toBeUndefined();
  });

  it('names the dependency of a bare socket error from the code that wraps it', () => {
    expect(unavailableDependency(retryableError('DATABASE_UNAVAILABLE', 'x', socketError('ECONNREFUSED')))).toBe('postgres');
    expect(unavailableDependency(retryableError('TIMER_SCHEDULE_FAILED', 'x', socketError('ECONNREFUSED')))).toBe('redis');
    expect(unavailableDependency(socketError('ECONNRESET'))).toBe('network');
    const fetchFailed = new TypeError('fetch failed', { cause: socketError('ECONNREFUSED') });
    expect(unavailableDependency(retryableError('POLICY_UNREACHABLE', 'x', fetchFailed))).toBe('opa');
  });

  it('recognises ioredis, kafkajs and AWS SDK outages', () => {
    expect(unavailableDependency(new Error('Connection is closed.'))).toBe('redis');
    expect(unavailableDependency(Object.assign(new Error('Reached the max retries per request limit (which is 20).'), { name: 'MaxRetriesPerRequestError' }))).toBe('redis');
    expect(unavailableDependency(retryableError('TIMER_SCHEDULE_FAILED', 'x', new Error('Connection is closed.')))).toBe('redis');
    expect(unavailableDependency(Object.assign(new Error('Connection error: connect ECONNREFUSED'), { name: 'KafkaJSConnectionError', retriable: true }))).toBe('kafka');
    expect(unavailableDependency(Object.assign(new Error('bad message'), { name: 'KafkaJSProtocolError', retriable: false }))).toBeUndefined();
    expect(unavailableDependency(Object.assign(new Error('slow down'), { name: 'SlowDown', $metadata: { httpStatusCode: 503 } }))).toBe('s3');
    expect(unavailableDependency(Object.assign(new Error('timed out'), { name: 'TimeoutError', $metadata: {} }))).toBe('s3');
    expect(unavailableDependency(Object.assign(new Error('no such key'), { name: 'NoSuchKey', $metadata: { httpStatusCode: 404 } }))).toBeUndefined();
  });

  it('reads the mark a client wrapper puts on its errors (a failed pool checkout is Postgres’s, whatever the socket says)', () => {
    const refused = socketError('ECONNREFUSED');
    Object.defineProperty(refused, 'dependency', { value: 'postgres', enumerable: false });
    expect(unavailableDependency(refused)).toBe('postgres');
    expect(unavailableDependency(retryableError('TIMER_SCHEDULE_FAILED', 'x', refused))).toBe('postgres');
  });

  it('maps the codes of modules that predate unavailableError', () => {
    expect(unavailableDependency(retryableError('VAULT_TIMEOUT', 'Vault did not answer'))).toBe('vault');
    expect(unavailableDependency(retryableError('SCHEMA_REGISTRY_UNAVAILABLE', 'x'))).toBe('registry');
    expect(unavailableDependency(retryableError('KUBERNETES_UNREACHABLE', 'x'))).toBe('kubernetes');
  });

  it('never calls a bad record, a bug or a permanent error an outage', () => {
    expect(unavailableDependency(permanentError('VALIDATION_FAILED', 'agentId is missing'))).toBeUndefined();
    // Permanent wins even over an outage-looking cause: the thrower decided.
    expect(unavailableDependency(permanentError('DECODE_FAILED', 'x', socketError('ECONNREFUSED')))).toBeUndefined();
    expect(unavailableDependency(new TypeError("Cannot read properties of undefined (reading 'id')"))).toBeUndefined();
    expect(unavailableDependency(retryableError('VERSION_CONFLICT', 'agent changed concurrently'))).toBeUndefined();
    expect(unavailableDependency('a string')).toBeUndefined();
    expect(unavailableDependency(undefined)).toBeUndefined();
  });

  it('stops on a cyclic cause chain', () => {
    const a = new Error('a') as Error & { cause?: unknown };
    const b = new Error('b', { cause: a });
    a.cause = b;
    expect(unavailableDependency(a)).toBeUndefined();
  });
});
