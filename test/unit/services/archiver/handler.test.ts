import { buildAuditEvent } from '../../../../lib/audit.ts';
import { errorCode } from '../../../../lib/errors.ts';
import { loadArchiverConfig } from '../../../../services/archiver/config.ts';
import { indexEntriesOf, validateAuditEvent } from '../../../../services/archiver/handler.ts';

const event = buildAuditEvent({ actor: 'service:provisioner', action: 'agent.state_changed', agentId: '7D2A1C2E-0000-4000-8000-000000000001', requestId: null, traceId: 'ab'.repeat(16), payload: { to: 'RUNNING' } });

describe('archiver: events to index rows', () => {
  it('makes one index row per record, at its partition and offset', () => {
    const rows = indexEntriesOf({ partition: 3, records: [{ value: validateAuditEvent(event), offset: '41' }] });
    expect(rows).toEqual([
      {
        eventId: event.eventId,
        time: event.time,
        action: 'agent.state_changed',
        actor: 'service:provisioner',
        agentId: '7d2a1c2e-0000-4000-8000-000000000001',
        requestId: null,
        traceId: 'ab'.repeat(16),
        partition: 3,
        offset: 41,
        payloadHash: event.hash,
      },
    ]);
  });

  it.each([
    ['eventId', { ...event, eventId: 'nope' }],
    ['agentId', { ...event, agentId: 'agent-1' }],
    ['hash', { ...event, hash: 'XYZ' }],
    ['time', { ...event, time: new Date('x') }],
  ])('dead-letters an event with a bad %s', (_field, value) => {
    expect(errorCode(catching(() => validateAuditEvent(value)))).toBe('VALIDATION_FAILED');
  });

  it('loads its settings with the issue\'s defaults', () => {
    const config = loadArchiverConfig({ S3_REGION: 'us-east-1', ARCHIVE_BUCKET: 'agent-manager-audit' });
    expect(config).toMatchObject({ ARCHIVE_PREFIX: 'audit-events', ARCHIVE_FLUSH_INTERVAL_MS: 60_000, ARCHIVE_DAY_GRACE_MS: 300_000 });
    expect(() => loadArchiverConfig({ S3_REGION: 'us-east-1', ARCHIVE_BUCKET: 'agent-manager-audit', ARCHIVE_PREFIX: '/x/' })).toThrow(/ARCHIVE_PREFIX/);
  });
});

function catching(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}
