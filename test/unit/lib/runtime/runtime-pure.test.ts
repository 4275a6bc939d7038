import { backoffDelayMs, DEFAULT_RETRY_POLICY } from '../../../../lib/runtime/retry.ts';
import { deadLetterRecord, DLQ_HEADERS, dlqTopicOf } from '../../../../lib/runtime/dlq.ts';
import { childTrace, formatTraceparent, parseTraceparent } from '../../../../lib/tracing.ts';
import { loadConfig, commonConfigShape, databaseConfigShape, redisConfigShape } from '../../../../lib/config.ts';
import { isRetryable, permanentError, retryableError, errorCode } from '../../../../lib/errors.ts';

describe('retry backoff', () => {
  const policy = { ...DEFAULT_RETRY_POLICY, initialDelayMs: 100, multiplier: 2, maxDelayMs: 1000 };
  it('grows exponentially within [half, full] of the step and stops at the cap', () => {
    expect(backoffDelayMs(1, policy, () => 0)).toBe(50);
    expect(backoffDelayMs(1, policy, () => 1)).toBe(100);
    expect(backoffDelayMs(3, policy, () => 1)).toBe(400);
    expect(backoffDelayMs(10, policy, () => 1)).toBe(1000);
    expect(backoffDelayMs(10, policy, () => 0)).toBe(500);
  });
});

describe('dead-letter record', () => {
  it('keeps key, value and headers and adds the reason and the origin', () => {
    const record = { topic: 'agent-requests', partition: 4, offset: '17', key: Buffer.from('a-1'), value: Buffer.from([1, 2, 3]), headers: { traceparent: 'x' }, timestamp: '0' };
    const dead = deadLetterRecord(record, { code: 'DECODE_FAILED', message: 'bad', attempts: 1, service: 'ingest', failedAt: new Date(0) });
    expect(dead.key).toBe(record.key);
    expect(dead.value).toBe(record.value);
    expect(dead.headers).toMatchObject({
      traceparent: 'x',
      [DLQ_HEADERS.errorCode]: 'DECODE_FAILED',
      [DLQ_HEADERS.sourceTopic]: 'agent-requests',
      [DLQ_HEADERS.sourcePartition]: '4',
      [DLQ_HEADERS.sourceOffset]: '17',
      [DLQ_HEADERS.attempts]: '1',
      [DLQ_HEADERS.service]: 'ingest',
      [DLQ_HEADERS.failedAt]: '1970-01-01T00:00:00.000Z',
    });
    expect(dlqTopicOf('agent-requests')).toBe('agent-requests.dlq');
  });
});

describe('W3C trace context', () => {
  it('parses, continues and formats a traceparent', () => {
    const header = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const parent = parseTraceparent(header);
    expect(parent).toEqual({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', flags: '01' });
    const child = childTrace(parent);
    expect(child.traceId).toBe(parent?.traceId);
    expect(child.spanId).not.toBe(parent?.spanId);
    expect(parseTraceparent(formatTraceparent(child))).toEqual(child);
  });
  it('rejects malformed or all-zero ids and starts a new trace instead', () => {
    expect(parseTraceparent('garbage')).toBeUndefined();
    expect(parseTraceparent('00-00000000000000000000000000000000-00f067aa0ba902b7-01')).toBeUndefined();
    expect(childTrace(undefined).traceId).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe('configuration', () => {
  it('refuses to start without addresses (never falls back to the local stack), and defaults the rest', () => {
    expect(() => loadConfig({ ...commonConfigShape, ...databaseConfigShape, ...redisConfigShape }, {})).toThrow(
      /KAFKA_BROKERS: .*\(not set\)[\s\S]*SCHEMA_REGISTRY_URL: .*\(not set\)[\s\S]*DATABASE_URL: .*\(not set\)[\s\S]*REDIS_URL: .*\(not set\)/,
    );
    const config = loadConfig(commonConfigShape, { KAFKA_BROKERS: 'kafka:9092', SCHEMA_REGISTRY_URL: 'http://registry:8081' });
    expect(config.KAFKA_BROKERS).toEqual(['kafka:9092']);
    expect(config.HTTP_PORT).toBe(9464);
  });
  it('names every bad variable and what it expected, never echoing secrets', () => {
    let error: unknown;
    try {
      loadConfig({ ...commonConfigShape }, { KAFKA_BROKERS: 'no-port', HTTP_PORT: 'eighty', SCHEMA_REGISTRY_URL: 'not a url' });
    } catch (e) {
      error = e;
    }
    expect(errorCode(error)).toBe('CONFIG_INVALID');
    expect(isRetryable(error)).toBe(false);
    const message = (error as Error).message;
    expect(message).toMatch(/KAFKA_BROKERS: expected a comma-separated list of host:port \(got "no-port"\)/);
    expect(message).toMatch(/HTTP_PORT/);
    expect(message).toMatch(/SCHEMA_REGISTRY_URL: expected a URL/);
  });
});

describe('error taxonomy', () => {
  it('says whether an error is retryable; unknown errors are', () => {
    expect(isRetryable(retryableError('X', 'x'))).toBe(true);
    expect(isRetryable(permanentError('Y', 'y'))).toBe(false);
    expect(isRetryable(new Error('bug'))).toBe(true);
    expect(errorCode(new Error('bug'))).toBe('UNEXPECTED');
  });
});
