import { generateKeyPairSync, sign } from 'node:crypto';
import { join } from 'node:path';
import { buildAuditEvent } from '../../../../lib/audit.ts';
import { chainOf, GENESIS_CHAIN } from '../../../../lib/archive/chain.ts';
import { encodeArchiveFile, encodeChainedArchiveFile } from '../../../../lib/archive/container.ts';
import { formatArchiveKey, type ArchiveFileName } from '../../../../lib/archive/layout.ts';
import { sha256Base64 } from '../../../../lib/archive/objects.ts';
import { FileVerifier, indexRowView, isIntact, revocationId, signatureFindings, versionFindings, type IndexRowView, type SignatureInput } from '../../../../lib/archive/verify.ts';
import { topicContract } from '../../../../lib/contracts/schemas.ts';
import type { AuditEvent } from '../../../../lib/contracts/types.ts';
import { rawPublicKey } from '../../../../lib/signing/verify.ts';

const contract = topicContract('audit-events', join(process.cwd(), 'schemas'));
const DAY = '2026-11-30';
const BASE = Date.parse(`${DAY}T10:00:00Z`);

function events(count: number): AuditEvent[] {
  return Array.from({ length: count }, (_, i) =>
    buildAuditEvent({
      actor: 'service:provisioner',
      action: 'agent.state_changed',
      agentId: i % 2 === 0 ? '6f1c2a52-6f6b-4e8e-9d3a-4f0d6c1b2a3c' : null,
      requestId: null,
      traceId: i % 3 === 0 ? '0123456789abcdef0123456789abcdef' : null,
      // Text that JSON must escape, and a time in another second each few events.
      payload: { i, note: 'quote " backslash \\ tab \t é ✓' },
      time: new Date(BASE + i * 377),
    }),
  );
}

function file(list: readonly AuditEvent[], firstOffset = 0, options: { chainBefore?: string; timestamp?: (i: number) => number; tamper?: (e: AuditEvent, i: number) => AuditEvent } = {}) {
  const name: ArchiveFileName = { prefix: 'audit-events', day: DAY, partition: 3, firstOffset, lastOffset: firstOffset + list.length - 1 };
  const key = formatArchiveKey(name);
  const input = {
    objectKey: key,
    topic: 'audit-events',
    partition: 3,
    schemaId: 7,
    eventSchema: contract.schemaText,
    // Small blocks: several per file.
    blockBytes: 1024,
    records: list.map((event, i) => ({ offset: firstOffset + i, timestamp: options.timestamp?.(i) ?? BASE + i, key: null, headers: [{ key: 'event-id', value: Buffer.from(event.eventId) }], event: contract.toBuffer(options.tamper?.(event, i) ?? event) })),
  };
  const bytes = options.chainBefore !== undefined ? encodeChainedArchiveFile({ ...input, chainBefore: options.chainBefore }).body : encodeArchiveFile(input);
  return { name, key, bytes };
}

function indexOf(list: readonly AuditEvent[], firstOffset = 0): Map<number, IndexRowView> {
  return new Map(
    list.map((e, i) => [
      firstOffset + i,
      indexRowView({ eventId: e.eventId, time: e.time, action: e.action, actor: e.actor, agentId: e.agentId, requestId: e.requestId, traceId: e.traceId, partition: 3, offset: firstOffset + i, payloadHash: e.hash }),
    ]),
  );
}

describe('FileVerifier', () => {
  const verifier = new FileVerifier();

  it('recomputes every event hash and the chain as lib/archive/chain.ts defines it, with the file SHA-256', () => {
    const list = events(40);
    const f = file(list, 10);
    const index = indexOf(list, 10);
    const result = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes, chainBefore: Buffer.alloc(32), index });
    expect(result.findings).toEqual([]);
    expect(result.unindexed).toEqual([]);
    expect(index.size).toBe(0);
    expect(result).toEqual(expect.objectContaining({ sha256: sha256Base64(f.bytes), records: 40, firstOffset: 10, lastOffset: 49, readable: true }));
    expect({ first: result.firstChain, last: result.lastChain }).toEqual(
      chainOf(
        GENESIS_CHAIN,
        list.map((e) => e.hash),
      ),
    );
  });

  it("checks the chain recorded in the file's header against the chain before it", () => {
    const list = events(5);
    const before = chainOf(GENESIS_CHAIN, [list[0]?.hash ?? '']).last;
    const f = file(list, 0, { chainBefore: before });
    const ok = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes, chainBefore: Buffer.from(before, 'hex') });
    expect(ok.findings).toEqual([]);
    expect(ok.recordedLastChain).toBe(ok.lastChain);
    const broken = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes, chainBefore: Buffer.alloc(32) });
    expect(broken.findings).toEqual([expect.objectContaining({ kind: 'chain_broken', partition: 3, key: f.key, offset: 0 })]);
    // Unknown start: the recorded first link is taken as given, the rest still checked.
    const seeded = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes, chainBefore: undefined });
    expect([seeded.findings, seeded.lastChain]).toEqual([[], ok.lastChain]);
  });

  it('names an event whose content no longer matches its hash, at its offset', () => {
    const list = events(6);
    const f = file(list, 100, { tamper: (e, i) => (i === 4 ? { ...e, payload: '{"i":4,"note":"changed"}' } : e) });
    const result = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes, chainBefore: Buffer.alloc(32) });
    expect(result.findings).toEqual([expect.objectContaining({ kind: 'file_modified', severity: 'error', offset: 104, eventId: list[4]?.eventId, message: expect.stringMatching(/does not match its hash/) as unknown })]);
    // The chain is over the hash fields, which did not change.
    expect(result.lastChain).toBe(
      chainOf(
        GENESIS_CHAIN,
        list.map((e) => e.hash),
      ).last,
    );
  });

  it('compares each event with its index row, and hands back the events without one', () => {
    const list = events(4);
    const f = file(list);
    const index = indexOf(list);
    const row = index.get(1);
    if (row === undefined) throw new Error('no row');
    index.set(1, { ...row, action: 'agent.deleted', timeMs: 0 });
    index.delete(3);
    const result = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes, chainBefore: Buffer.alloc(32), index });
    expect(result.findings).toEqual([expect.objectContaining({ kind: 'index_row_altered', offset: 1, message: expect.stringMatching(/event_time 1970-01-01T00:00:00.000Z .*action agent.deleted \(archive agent.state_changed\)/) as unknown })]);
    expect(result.unindexed).toEqual([{ eventId: list[3]?.eventId, offset: 3 }]);
  });

  it('names records appended on another day as out of place, and a name that does not match the offsets', () => {
    const list = events(3);
    const f = file(list, 0, { timestamp: (i) => (i === 2 ? Date.parse('2026-12-01T00:00:00Z') : BASE) });
    const result = verifier.verify({ key: f.key, name: { ...f.name, lastOffset: 5 }, bytes: f.bytes, chainBefore: Buffer.alloc(32) });
    expect(result.findings.map((x) => [x.kind, x.offset])).toEqual([
      ['file_extra', 2],
      ['file_modified', 2],
    ]);
  });

  it('names a truncated or foreign file as modified, without throwing', () => {
    const f = file(events(50));
    const cut = verifier.verify({ key: f.key, name: f.name, bytes: f.bytes.subarray(0, f.bytes.length - 40), chainBefore: Buffer.alloc(32) });
    expect(cut.readable).toBe(false);
    expect(cut.findings).toEqual([expect.objectContaining({ kind: 'file_modified', message: expect.stringMatching(/unreadable after \d+ records/) as unknown })]);
    const foreign = verifier.verify({ key: f.key, name: f.name, bytes: Buffer.from('not an avro file at all'), chainBefore: undefined });
    expect(foreign.findings).toEqual([expect.objectContaining({ kind: 'file_modified', message: expect.stringMatching(/unreadable archive file/) as unknown })]);
  });
});

describe('versionFindings', () => {
  const where = { day: DAY, partition: 0, key: 'r/dt=2026-11-30/p=0/x.avro' };
  const v = (versionId: string, isLatest: boolean, deleteMarker = false) => ({ versionId, isLatest, deleteMarker, lastModified: new Date('2026-12-01T00:00:00Z') });

  it('is quiet for one version, the archived one', () => {
    expect(versionFindings(where, [v('a', true)], 'a')).toEqual([]);
  });

  it('names a version written over the archived one, and a delete marker hiding it', () => {
    expect(versionFindings(where, [v('b', true), v('a', false)], 'a')).toEqual([expect.objectContaining({ kind: 'newer_version', versionId: 'b', message: expect.stringMatching(/readers see b/) as unknown })]);
    expect(versionFindings(where, [v('m', true, true), v('a', false)], 'a')).toEqual([expect.objectContaining({ kind: 'file_missing', message: expect.stringMatching(/delete marker/) as unknown })]);
    expect(versionFindings(where, undefined, 'a')).toEqual([expect.objectContaining({ kind: 'file_missing' })]);
    expect(versionFindings(where, [v('b', true)], 'a').map((f) => f.kind)).toEqual(['file_missing', 'newer_version']);
  });
});

describe('signatureFindings', () => {
  const keyA = generateKeyPairSync('ed25519');
  const keyB = generateKeyPairSync('ed25519');
  const published = [
    { keyId: 'k', version: 1, publicKey: rawPublicKey(keyA.publicKey) },
    { keyId: 'k', version: 2, publicKey: rawPublicKey(keyB.publicKey) },
  ];
  const bytes = Buffer.from('{"day":"2026-11-30"}');
  const sig = (key: typeof keyA, version: number, extra: Record<string, unknown> = {}) =>
    Buffer.from(JSON.stringify({ algorithm: 'ed25519', keyId: 'k', keyVersion: version, signature: sign(null, bytes, key.privateKey).toString('base64'), signedAt: '2026-12-01T00:00:00Z', ...extra }));
  const input = (over: Partial<SignatureInput>): SignatureInput => ({
    day: DAY,
    manifestKey: 'r/dt=2026-11-30/manifest.json',
    manifestBytes: bytes,
    manifestSigningKey: { keyId: 'k', version: 1 },
    signature: { key: 'r/dt=2026-11-30/manifest.json.sig', bytes: sig(keyA, 1) },
    resigns: [],
    publicKeys: published,
    revoked: new Set(),
    ...over,
  });

  it('accepts a valid signature by a published, unrevoked version', () => {
    expect(signatureFindings(input({}))).toEqual({ status: 'valid', keyVersion: 1, findings: [] });
  });

  it('names unsigned, unknown-key, bad and mislabelled signatures', () => {
    expect(signatureFindings(input({ signature: undefined })).findings.map((f) => f.kind)).toEqual(['manifest_unsigned']);
    expect(signatureFindings(input({ signature: { key: 's', bytes: sig(keyA, 3) } })).findings.map((f) => f.kind)).toEqual(['signed_by_unknown_key']);
    expect(signatureFindings(input({ signature: { key: 's', bytes: sig(keyA, 2) } })).findings.map((f) => f.kind)).toEqual(['signature_invalid']);
    expect(signatureFindings(input({ signature: { key: 's', bytes: Buffer.from('{}') } })).findings.map((f) => f.kind)).toEqual(['signature_invalid']);
    expect(signatureFindings(input({ manifestBytes: Buffer.from('{"day":"2026-11-29"}') })).findings.map((f) => f.kind)).toEqual(['signature_invalid']);
    expect(signatureFindings(input({ manifestSigningKey: { keyId: 'k', version: 2 } })).findings.map((f) => f.kind)).toEqual(['signature_invalid']);
  });

  it('names a revoked signer until a trusted version counter-signs; then it is information', () => {
    const revoked = new Set([revocationId('k', 1)]);
    expect(signatureFindings(input({ revoked })).findings.map((f) => f.kind)).toEqual(['signed_by_revoked_key']);
    const counter = { key: 'r/dt=2026-11-30/manifest.json.resign-v2.sig', bytes: sig(keyB, 2, { counterSigns: 1 }) };
    const resigned = signatureFindings(input({ revoked, resigns: [counter] }));
    expect(resigned.status).toBe('resigned');
    expect(isIntact(resigned.findings)).toBe(true);
    // A counter-signature by a revoked version, or of another version, does not stand in.
    expect(signatureFindings(input({ revoked: new Set([...revoked, revocationId('k', 2)]), resigns: [counter] })).status).toBe('revoked');
    expect(signatureFindings(input({ revoked, resigns: [{ ...counter, bytes: sig(keyB, 2, { counterSigns: 3 }) }] })).status).toBe('revoked');
  });
});
