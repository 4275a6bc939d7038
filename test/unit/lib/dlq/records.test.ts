import type { KafkaRecord } from '../../../../lib/kafka/types.ts';
import { deadLetterRecord, DLQ_HEADERS } from '../../../../lib/runtime/dlq.ts';
import {
  dlqTopicName,
  keyText,
  matchesFilter,
  parseCodes,
  parseDlqRecord,
  parseRecordRefs,
  parseSince,
  printableText,
  REPLAY_HEADER,
  replayRecord,
  shortReason,
  sourceTopicOf,
  summarize,
  UNKNOWN_CODE,
} from '../../../../lib/dlq/records.ts';
import { replayTarget } from '../../../../lib/dlq/replay.ts';
import { viewValue } from '../../../../lib/dlq/value.ts';
import { isAppError, permanentError } from '../../../../lib/errors.ts';

/** The code of the error `work` throws (undefined when it does not throw). */
function codeOf(work: () => unknown): string | undefined {
  try {
    work();
  } catch (error) {
    return isAppError(error) ? error.code : `not an AppError: ${String(error)}`;
  }
  return undefined;
}

const failedAt = new Date('2026-12-01T08:00:00.000Z');

/** A DLQ record exactly as the runtime writes it, read back from `orders.dlq` at 2/41. */
function dlqRecord(overrides: Partial<KafkaRecord> = {}): KafkaRecord {
  const original: KafkaRecord = {
    topic: 'orders',
    partition: 5,
    offset: '1234',
    key: Buffer.from('agent-1'),
    value: Buffer.from('not avro'),
    headers: { origin: 'kernel', traceparent: '00-abc-def-01', 'event-id': 'e-1' },
    timestamp: '1764576000000',
  };
  const written = deadLetterRecord(original, { code: 'DECODE_BAD_FRAMING', message: 'not a Confluent-framed Avro record', attempts: 1, service: 'ingest', failedAt });
  return {
    topic: 'orders.dlq',
    partition: 2,
    offset: '41',
    key: written.key as Buffer,
    value: written.value,
    headers: written.headers ?? {},
    timestamp: String(failedAt.getTime() + 5),
    ...overrides,
  };
}

describe('parseDlqRecord', () => {
  it('reads the reason and the source out of the runtime’s headers', () => {
    const record = parseDlqRecord(dlqRecord());
    expect(record).toMatchObject({
      topic: 'orders.dlq',
      partition: 2,
      offset: '41',
      time: failedAt,
      code: 'DECODE_BAD_FRAMING',
      reason: 'not a Confluent-framed Avro record',
      attempts: 1,
      service: 'ingest',
      source: { topic: 'orders', partition: 5, offset: '1234' },
    });
    expect(summarize(record)).toMatchObject({ valueSize: 8 });
    expect(summarize(record)).not.toHaveProperty('value');
  });

  it('falls back to the Kafka timestamp and UNKNOWN for a record written without the headers', () => {
    const record = parseDlqRecord(dlqRecord({ headers: { origin: 'elsewhere' }, timestamp: String(failedAt.getTime()) }));
    expect(record.code).toBe(UNKNOWN_CODE);
    expect(record.time).toEqual(failedAt);
    expect(record.source).toEqual({ topic: null, partition: null, offset: null });
    expect(record.attempts).toBeNull();
  });
});

describe('replayRecord', () => {
  it('keeps the original key, value and headers, drops the DLQ’s own headers and adds the marker', () => {
    const source = dlqRecord();
    const replayed = replayRecord(parseDlqRecord(source));
    expect(replayed.key).toBe(source.key);
    expect(replayed.value).toBe(source.value);
    expect(replayed.headers).toEqual({ origin: 'kernel', traceparent: '00-abc-def-01', 'event-id': 'e-1', [REPLAY_HEADER]: 'orders.dlq/2/41' });
    for (const name of Object.values(DLQ_HEADERS)) expect(replayed.headers).not.toHaveProperty(name);
  });

  it('replays only to the DLQ’s own topic', () => {
    expect(replayTarget(parseDlqRecord(dlqRecord()))).toBe('orders');
    const elsewhere = dlqRecord();
    const wrong = parseDlqRecord({ ...elsewhere, headers: { ...elsewhere.headers, [DLQ_HEADERS.sourceTopic]: 'payments' } });
    expect(codeOf(() => replayTarget(wrong))).toBe('DLQ_SOURCE_MISMATCH');
  });
});

describe('topic names', () => {
  it('appends .dlq and the prefix only when missing', () => {
    expect(dlqTopicName('agent-requests')).toBe('agent-requests.dlq');
    expect(dlqTopicName('agent-requests.dlq')).toBe('agent-requests.dlq');
    expect(dlqTopicName('agent-requests', 't1.')).toBe('t1.agent-requests.dlq');
    expect(dlqTopicName('t1.agent-requests.dlq', 't1.')).toBe('t1.agent-requests.dlq');
    expect(sourceTopicOf('t1.agent-requests.dlq')).toBe('t1.agent-requests');
    expect(codeOf(() => sourceTopicOf('agent-requests'))).toBe('DLQ_USAGE');
    expect(codeOf(() => sourceTopicOf('.dlq'))).toBe('DLQ_USAGE');
  });
});

describe('filters', () => {
  const now = new Date('2026-12-01T12:00:00.000Z');

  it('reads --since as a duration back from now or an ISO time, and refuses anything else', () => {
    expect(parseSince('1h', now)).toEqual(new Date('2026-12-01T11:00:00.000Z'));
    expect(parseSince('90s', now)).toEqual(new Date('2026-12-01T11:58:30.000Z'));
    expect(parseSince('2d', now)).toEqual(new Date('2026-11-29T12:00:00.000Z'));
    expect(parseSince('2026-12-01T08:00:00Z', now)).toEqual(failedAt);
    expect(parseSince('2026-12-01', now)).toEqual(new Date('2026-12-01T00:00:00.000Z'));
    for (const bad of ['15', 'yesterday', '1 fortnight', '', '2026-13-45']) {
      expect(codeOf(() => parseSince(bad, now))).toBe('DLQ_USAGE');
    }
  });

  it('matches on time and on any of the codes, case-insensitively', () => {
    const record = { time: failedAt, code: 'DECODE_FAILED' };
    expect(matchesFilter(record, {})).toBe(true);
    expect(matchesFilter(record, { since: failedAt })).toBe(true);
    expect(matchesFilter(record, { since: new Date(failedAt.getTime() + 1) })).toBe(false);
    expect(matchesFilter(record, { codes: parseCodes(['validation_failed,decode_failed']) })).toBe(true);
    expect(matchesFilter(record, { codes: parseCodes(['VALIDATION_FAILED']) })).toBe(false);
    expect(matchesFilter(record, { codes: parseCodes([' , ']) })).toBe(true);
  });
});

describe('parseRecordRefs', () => {
  it('takes partition/offset, or bare offsets in --partition or in the only partition', () => {
    expect(parseRecordRefs(['3/17', '0/2,0/2'], undefined, 4)).toEqual([
      { partition: 3, offset: '17' },
      { partition: 0, offset: '2' },
    ]);
    expect(parseRecordRefs(['5', '6'], 2, 4)).toEqual([
      { partition: 2, offset: '5' },
      { partition: 2, offset: '6' },
    ]);
    expect(parseRecordRefs(['007'], undefined, 1)).toEqual([{ partition: 0, offset: '7' }]);
  });

  it('refuses what cannot name one record', () => {
    expect(() => parseRecordRefs(['5'], undefined, 4)).toThrow(/give --partition/);
    expect(() => parseRecordRefs(['4/5'], undefined, 4)).toThrow(/partition 4 does not exist/);
    expect(codeOf(() => parseRecordRefs(['-1'], 0, 1))).toBe('DLQ_USAGE');
    expect(codeOf(() => parseRecordRefs(['a/b'], 0, 1))).toBe('DLQ_USAGE');
  });
});

describe('display', () => {
  it('shows printable keys as text and binary ones in hex', () => {
    expect(keyText(Buffer.from('agent-1'))).toBe('agent-1');
    expect(keyText(Buffer.from([0, 1, 0xff]))).toBe('0x0001ff');
    expect(keyText(null)).toBe('(null)');
    expect(printableText(Buffer.from('two\nlines\t✓'))).toBe('two\nlines\t✓');
    expect(printableText(Buffer.from([0xc3, 0x28]))).toBeNull();
  });

  it('shortens a reason to one line', () => {
    expect(shortReason('a\n  b')).toBe('a b');
    expect(shortReason('x'.repeat(100), 10)).toBe(`${'x'.repeat(9)}…`);
  });

  it('shows a value decoded when the codec can, else its bytes', async () => {
    const avroLike = Buffer.from([0, 0, 0, 0, 7, 1, 2]);
    const decoded = await viewValue(avroLike, { decode: async () => ({ at: failedAt, n: 10n, raw: Buffer.from([1]) }) });
    expect(decoded).toMatchObject({ size: 7, schemaId: 7, decoded: { at: '2026-12-01T08:00:00.000Z', n: '10', raw: '0x01' } });
    const refused = await viewValue(Buffer.from('plain text'), {
      decode: async () => {
        throw permanentError('DECODE_BAD_FRAMING', 'not a Confluent-framed Avro record');
      },
    });
    expect(refused).toMatchObject({ schemaId: null, decodeError: 'not a Confluent-framed Avro record', text: 'plain text', hexPreview: Buffer.from('plain text').toString('hex') });
    expect(refused).not.toHaveProperty('decoded');
    expect(await viewValue(null, { decode: async () => null })).toBeNull();
  });
});
