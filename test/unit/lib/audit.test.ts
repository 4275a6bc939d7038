import { auditHash, buildAuditEvent, canonicalJson } from '../../../lib/audit.ts';

describe('audit events', () => {
  it('canonical JSON sorts keys at every depth and writes dates as ISO strings', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { z: 1, y: 2 }], c: new Date(0) }, u: undefined })).toBe('{"a":{"c":"1970-01-01T00:00:00.000Z","d":[2,{"y":2,"z":1}]},"b":1}');
  });

  it('hashes every field but the hash, so any change is detected', () => {
    const event = buildAuditEvent({ actor: 'kernel', action: 'agent.state_changed', agentId: null, requestId: null, traceId: null, payload: { to: 'RUNNING' }, time: new Date(0), eventId: 'e1' });
    expect(event.hash).toMatch(/^[0-9a-f]{64}$/);
    const { hash, ...rest } = event;
    expect(auditHash(rest)).toBe(hash);
    expect(auditHash({ ...rest, actor: 'someone else' })).not.toBe(hash);
    expect(event.payload).toBe('{"to":"RUNNING"}');
  });
});
