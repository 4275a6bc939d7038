/**
 * `audit verify`, the pure part: what one archive file's bytes prove (every event's hash, the hash
 * chain, offsets, the file's SHA-256, the index rows of its offsets) and how a day's listing, manifest,
 * signatures and `audit_files` rows compare. No I/O here: lib/archive/verify-archive.ts reads S3 and
 * Postgres and hands the bytes and rows in, so every check is unit-testable on hand-made inputs.
 *
 * The hot loop decodes each file with one avsc type per writer schema (cached across files) and
 * hashes with `crypto.hash` over one reused 64-byte buffer (chain ‖ event hash): no per-event hash
 * objects, no hex round trips of the chain.
 */
import { hash as oneShotHash } from 'node:crypto';
import { inflateRawSync, zstdDecompressSync } from 'node:zlib';
import avsc from 'avsc';
import { canonicalJson } from '../audit.ts';
import { avroType } from '../contracts/schemas.ts';
import { errorMessage } from '../errors.ts';
import { AVRO_MAGIC, HEADER_TYPE } from './container.ts';
import type { AuditIndexEntry } from './index-store.ts';

/** An audit_index row as the hot loop compares it (the time in epoch milliseconds: no Date per row). */
export interface IndexRowView {
  readonly eventId: string;
  readonly timeMs: number;
  readonly action: string;
  readonly actor: string;
  readonly agentId: string | null;
  readonly requestId: string | null;
  readonly traceId: string | null;
  readonly offset: number;
  readonly payloadHash: string;
}

export function indexRowView(entry: AuditIndexEntry): IndexRowView {
  const { eventId, action, actor, agentId, requestId, traceId, offset, payloadHash } = entry;
  return { eventId, timeMs: entry.time.getTime(), action, actor, agentId, requestId, traceId, offset, payloadHash };
}
import { dayStart, type ArchiveFileName } from './layout.ts';
import type { PublicKeyVersion, SignatureEnvelope } from '../signing/signer.ts';
import { findPublicKey, parseSignatureEnvelope, verifySignature } from '../signing/verify.ts';

/** Every kind of finding. `resigned` and `day_open` are information; every other kind means "not intact". */
export const FINDING_KINDS = [
  'file_missing',
  'file_modified',
  'file_extra',
  'newer_version',
  'offset_gap',
  'offset_overlap',
  'chain_broken',
  'manifest_missing',
  'manifest_unsigned',
  'signature_invalid',
  'signed_by_revoked_key',
  'signed_by_unknown_key',
  'resigned',
  'index_row_missing',
  'index_row_altered',
  'index_row_extra',
  'day_open',
] as const;

export type FindingKind = (typeof FINDING_KINDS)[number];

const INFO_KINDS: ReadonlySet<FindingKind> = new Set<FindingKind>(['resigned', 'day_open']);

export type FindingSeverity = 'error' | 'info';

export interface Finding {
  readonly kind: FindingKind;
  readonly severity: FindingSeverity;
  readonly day: string;
  readonly partition?: number;
  /** The object key concerned (an archive file, the manifest or a signature). */
  readonly key?: string;
  readonly versionId?: string;
  readonly offset?: number;
  readonly eventId?: string;
  readonly message: string;
}

export interface FindingInput {
  readonly day: string;
  readonly partition?: number | undefined;
  readonly key?: string | undefined;
  readonly versionId?: string | undefined;
  readonly offset?: number | undefined;
  readonly eventId?: string | undefined;
}

/** A finding with its severity, and without the fields that do not apply. */
export function finding(kind: FindingKind, where: FindingInput, message: string): Finding {
  const out: { -readonly [K in keyof Finding]: Finding[K] } = { kind, severity: INFO_KINDS.has(kind) ? 'info' : 'error', day: where.day, message };
  if (where.partition !== undefined) out.partition = where.partition;
  if (where.key !== undefined) out.key = where.key;
  if (where.versionId !== undefined) out.versionId = where.versionId;
  if (where.offset !== undefined) out.offset = where.offset;
  if (where.eventId !== undefined) out.eventId = where.eventId;
  return out;
}

/** Whether findings leave the archive intact: nothing but information. */
export function isIntact(findings: readonly Finding[]): boolean {
  return findings.every((f) => f.severity === 'info');
}

/** The header metadata of a file's chain values (B's archiver writes them; older files have none). */
export const CHAIN_METADATA = { first: 'agent-manager.chain.first', last: 'agent-manager.chain.last' } as const;

const HEX_64 = /^[0-9a-f]{64}$/;

/** Per-file settings of a verification. */
export interface FileToVerify {
  readonly key: string;
  readonly versionId?: string | undefined;
  /** Where the file is expected: its folder's day and partition and its name's offsets. */
  readonly name: ArchiveFileName;
  readonly bytes: Uint8Array;
  /** The chain value before the file's first record (32 bytes); undefined when unknown (the file's own recorded first link is then taken as given). */
  readonly chainBefore: Uint8Array | undefined;
  /**
   * The index rows of the partition by offset. Rows of this file's records are compared and removed
   * from the map, so what stays once a partition's files are verified is extra.
   */
  readonly index?: Map<number, IndexRowView> | undefined;
}

export interface FileVerification {
  /** Base64 SHA-256 of the bytes (S3's x-amz-checksum-sha256 form). */
  readonly sha256: string;
  readonly records: number;
  readonly firstOffset: number | undefined;
  readonly lastOffset: number | undefined;
  /** Computed chain values (hex), undefined when the chain could not be computed (no records, or an unknown start and no recorded first link). */
  readonly firstChain: string | undefined;
  readonly lastChain: string | undefined;
  /** What the file's header records. */
  readonly recordedFirstChain: string | undefined;
  readonly recordedLastChain: string | undefined;
  /** Whether the file decoded to its end. */
  readonly readable: boolean;
  readonly findings: Finding[];
  /** Archived events with no index row at their offset: the caller looks them up by event id (a duplicate event is indexed once, at its first offset). */
  readonly unindexed: { readonly eventId: string; readonly offset: number }[];
}

interface EventShape {
  /** The event's fields except `hash`, sorted as canonicalJson sorts keys. */
  readonly fields: readonly string[];
  /** `"name":` of each field. */
  readonly prefixes: readonly string[];
  /** Which fields are timestamp-millis (read as plain longs here; canonicalJson writes them as ISO strings). */
  readonly times: readonly boolean[];
}

interface FileType {
  /** The wrapper without `key` and `headers` (skipped, never allocated), with timestamps as plain longs. */
  readonly reader: avsc.Type;
  readonly resolver: avsc.Resolver;
  readonly event: EventShape | undefined;
}

interface ArchiveRecordValue {
  offset: number;
  timestamp: number;
  event: Record<string, unknown>;
}

// The ISO text of the last second formatted: a file's events are mostly within the same seconds,
// and Date#toISOString is a large share of the per-event cost.
let isoSecond = Number.NaN;
let isoPrefix = '';

/** `new Date(millis).toISOString()`, quoted. */
function isoQuoted(millis: number): string {
  const second = Math.floor(millis / 1000);
  if (second !== isoSecond || millis < 0) {
    const iso = new Date(millis).toISOString();
    // Years beyond 9999 are written ±YYYYYY-: not cached.
    if (iso.length !== 24) return `"${iso}"`;
    isoSecond = second;
    isoPrefix = `"${iso.slice(0, 20)}`;
  }
  const ms = millis - second * 1000;
  return `${isoPrefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
}

/** `canonicalJson` of one field value, with the common types done without a generic walk. */
function canonicalValue(value: unknown, time: boolean): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null) return 'null';
  if (time && typeof value === 'number') return isoQuoted(value);
  return canonicalJson(value);
}

/** `canonicalJson(event without hash)`: lib/audit.ts `auditHash` hashes exactly this text. */
function canonicalEvent(event: Record<string, unknown>, shape: EventShape): string {
  let out = '{';
  const { fields, prefixes, times } = shape;
  for (let i = 0; i < fields.length; i++) {
    const value = event[fields[i] as string];
    if (value === undefined) continue;
    if (out.length > 1) out += ',';
    out += (prefixes[i] as string) + canonicalValue(value, times[i] === true);
  }
  return `${out}}`;
}

type SchemaJson = Record<string, unknown>;

/** Whether an event field's schema is timestamp-millis (alone or in a union); undefined when it is a kind this fast path does not handle (records, arrays, maps). */
function fieldKind(type: unknown): 'time' | 'value' | undefined {
  const branches = Array.isArray(type) ? (type as unknown[]) : [type];
  let time = false;
  for (const branch of branches) {
    if (typeof branch === 'string') continue;
    const b = branch as SchemaJson;
    if (b.logicalType === 'timestamp-millis') time = true;
    else if (b.type === 'record' || b.type === 'array' || b.type === 'map' || b.type === 'fixed' || b.type === 'enum') return undefined;
  }
  return time ? 'time' : 'value';
}

function decompress(codec: string, data: Buffer): Buffer {
  if (codec === 'null') return data;
  if (codec === 'deflate') return inflateRawSync(data);
  if (codec === 'zstandard') return zstdDecompressSync(data);
  throw new Error(`codec ${codec} is not supported (null, deflate, zstandard)`);
}

function readLong(bytes: Buffer, position: number): { value: number; offset: number } {
  // Avro longs are zig-zag varints; offsets and block sizes fit in a double.
  let n = 0;
  let shift = 1;
  let pos = position;
  for (;;) {
    if (pos >= bytes.length) return { value: 0, offset: -1 };
    const b = bytes[pos++] as number;
    n += (b & 0x7f) * shift;
    if ((b & 0x80) === 0) break;
    shift *= 128;
  }
  const value = n % 2 === 0 ? n / 2 : -(n + 1) / 2;
  return { value, offset: pos };
}

/**
 * Verifies archive files. One per run: it keeps the avsc type of each writer schema it has seen, so
 * a schema is parsed once however many files use it.
 */
export class FileVerifier {
  readonly #types = new Map<string, FileType>();
  /** chain ‖ event hash: the input of every link, reused. */
  readonly #link = Buffer.alloc(64);

  #typeOf(schemaText: string): FileType {
    let cached = this.#types.get(schemaText);
    if (cached === undefined) {
      // Checks the schema as readers see it (the project's logical types), then reads it without them.
      avroType(schemaText, 'avro.schema');
      const schema = JSON.parse(schemaText) as SchemaJson;
      const writer = avsc.Type.forSchema(schema as avsc.Schema);
      const fields = (schema.fields as SchemaJson[] | undefined) ?? [];
      const eventField = fields.find((f) => f.name === 'event');
      const eventSchema = eventField?.type as SchemaJson | undefined;
      const reader = avsc.Type.forSchema({ ...schema, fields: fields.filter((f) => f.name !== 'key' && f.name !== 'headers') } as avsc.Schema);
      const eventFields = ((eventSchema?.fields as SchemaJson[] | undefined) ?? []).map((f) => ({ name: String(f.name), kind: fieldKind(f.type) }));
      const hashed = eventFields.filter((f) => f.name !== 'hash').sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const usable = eventFields.some((f) => f.name === 'hash') && hashed.every((f) => f.kind !== undefined);
      cached = {
        reader,
        resolver: reader.createResolver(writer),
        event: usable ? { fields: hashed.map((f) => f.name), prefixes: hashed.map((f) => `${JSON.stringify(f.name)}:`), times: hashed.map((f) => f.kind === 'time') } : undefined,
      };
      this.#types.set(schemaText, cached);
    }
    return cached;
  }

  verify(file: FileToVerify): FileVerification {
    const { key, name, index } = file;
    const bytes = Buffer.isBuffer(file.bytes) ? file.bytes : Buffer.from(file.bytes.buffer, file.bytes.byteOffset, file.bytes.byteLength);
    const where = { day: name.day, partition: name.partition, key, versionId: file.versionId };
    const findings: Finding[] = [];
    const unindexed: { eventId: string; offset: number }[] = [];
    const sha256 = oneShotHash('sha256', bytes, 'base64');
    const result = {
      sha256,
      records: 0,
      firstOffset: undefined as number | undefined,
      lastOffset: undefined as number | undefined,
      firstChain: undefined as string | undefined,
      lastChain: undefined as string | undefined,
      recordedFirstChain: undefined as string | undefined,
      recordedLastChain: undefined as string | undefined,
      readable: false,
      findings,
      unindexed,
    };
    const modified = (message: string, offset?: number, eventId?: string) => findings.push(finding('file_modified', { ...where, offset, eventId }, message));

    // Header.
    let header: { magic: Buffer; meta: Record<string, Buffer>; sync: Buffer };
    let position: number;
    try {
      const decoded: { value: typeof header; offset: number } = HEADER_TYPE.decode(bytes, 0);
      if (decoded.offset < 0) throw new Error('the file ends inside its header');
      header = decoded.value;
      position = decoded.offset;
      if (!header.magic.equals(AVRO_MAGIC)) throw new Error('not an Avro object container file');
    } catch (error) {
      modified(`unreadable archive file: ${errorMessage(error)}`);
      return result;
    }
    const meta = header.meta;
    const recorded = (k: string) => {
      const v = meta[k]?.toString('utf8');
      return v !== undefined && HEX_64.test(v) ? v : undefined;
    };
    result.recordedFirstChain = recorded(CHAIN_METADATA.first);
    result.recordedLastChain = recorded(CHAIN_METADATA.last);
    let fileType: FileType;
    try {
      fileType = this.#typeOf(meta['avro.schema']?.toString('utf8') ?? '');
    } catch (error) {
      modified(`bad avro.schema: ${errorMessage(error)}`);
      return result;
    }
    const shape = fileType.event;
    if (shape === undefined) modified("the events' schema has no hash field or has nested records: their content cannot be checked here");
    const codec = meta['avro.codec']?.toString('utf8') ?? 'null';
    const partitionMeta = meta['agentmanager.partition']?.toString('utf8');
    if (partitionMeta !== undefined && partitionMeta !== String(name.partition)) {
      findings.push(finding('file_extra', where, `out of place: the file says partition ${partitionMeta}, its folder p=${name.partition}`));
    }

    // The chain: known start, else the recorded first link taken as given.
    const link = this.#link;
    let chainKnown = false;
    let seedFromRecorded = false;
    if (file.chainBefore !== undefined) {
      link.set(file.chainBefore, 0);
      chainKnown = true;
    } else if (result.recordedFirstChain !== undefined) {
      seedFromRecorded = true;
    }

    const dayFrom = dayStart(name.day);
    const dayTo = dayFrom + 86_400_000;
    let outOfDay = false;
    let previous = -1;
    let firstChainHex: string | undefined;
    const { reader, resolver } = fileType;
    try {
      while (position < bytes.length) {
        const count = readLong(bytes, position);
        const size = count.offset < 0 ? count : readLong(bytes, count.offset);
        if (size.offset < 0 || count.value < 0 || size.value < 0 || size.offset + size.value + 16 > bytes.length) throw new Error('a block is cut short');
        const bodyEnd = size.offset + size.value;
        if (bytes.compare(header.sync, 0, 16, bodyEnd, bodyEnd + 16) !== 0) throw new Error('a block does not end with the file sync marker');
        const data = decompress(codec, bytes.subarray(size.offset, bodyEnd));
        position = bodyEnd + 16;
        let at = 0;
        for (let i = 0; i < count.value; i++) {
          const decoded: { value: ArchiveRecordValue; offset: number } = reader.decode(data, at, resolver);
          if (decoded.offset < 0) throw new Error('a record is cut short');
          at = decoded.offset;
          const record = decoded.value;
          const offset = record.offset;
          const event = record.event;
          const eventId = event.eventId as string;
          if (offset <= previous) modified(`offset ${offset} after ${previous}: records out of order`, offset, eventId);
          else if (offset < name.firstOffset || offset > name.lastOffset) modified(`offset ${offset} outside the file's range ${name.firstOffset}-${name.lastOffset}`, offset, eventId);
          if (previous < 0) {
            result.firstOffset = offset;
            if (offset !== name.firstOffset) modified(`the first record is at offset ${offset}, the file name says ${name.firstOffset}`, offset, eventId);
          }
          previous = offset;
          result.records += 1;
          const time = record.timestamp;
          if (!outOfDay && (time < dayFrom || time >= dayTo)) {
            outOfDay = true;
            findings.push(finding('file_extra', { ...where, offset, eventId }, `out of place: the record at offset ${offset} was appended at ${new Date(time).toISOString()}, not on ${name.day}`));
          }

          // The event against its own hash (its content as produced).
          const hash = event.hash as string;
          if (shape !== undefined && oneShotHash('sha256', canonicalEvent(event, shape), 'hex') !== hash) {
            modified(`the event at offset ${offset} does not match its hash: its content was altered`, offset, eventId);
          }
          // The chain: SHA-256(chain ‖ event hash).
          if (typeof hash !== 'string' || hash.length !== 64 || link.write(hash, 32, 32, 'hex') !== 32) {
            modified(`the event at offset ${offset} has no valid hash: the chain cannot continue through it`, offset, eventId);
            chainKnown = false;
            seedFromRecorded = false;
          } else if (seedFromRecorded) {
            link.write(result.recordedFirstChain as string, 0, 32, 'hex');
            firstChainHex = result.recordedFirstChain;
            seedFromRecorded = false;
            chainKnown = true;
          } else if (chainKnown) {
            // Hex output: crypto.hash's 'buffer' output costs several times more per call.
            const next = oneShotHash('sha256', link, 'hex');
            link.write(next, 0, 32, 'hex');
            firstChainHex ??= next;
          }

          // The index row of this offset.
          if (index !== undefined) {
            const row = index.get(offset);
            if (row === undefined) unindexed.push({ eventId: eventId.toLowerCase(), offset });
            else {
              index.delete(offset);
              const diff = indexDiff(row, event);
              if (diff !== undefined) findings.push(finding('index_row_altered', { ...where, offset, eventId }, `audit_index row of event ${row.eventId} at offset ${offset} differs from the archive: ${diff}`));
            }
          }
        }
        if (at !== data.length) throw new Error(`a block has ${data.length - at} bytes after its ${count.value} records`);
      }
      result.readable = true;
    } catch (error) {
      modified(`unreadable after ${result.records} records: ${errorMessage(error)}`, previous >= 0 ? previous : undefined);
    }
    result.lastOffset = previous >= 0 ? previous : undefined;
    if (result.readable && previous >= 0 && previous !== name.lastOffset) modified(`the last record is at offset ${previous}, the file name says ${name.lastOffset}`, previous);
    if (result.readable && result.records === 0) modified('the file holds no record');
    const countMeta = meta['agentmanager.count']?.toString('utf8');
    if (result.readable && countMeta !== undefined && countMeta !== String(result.records)) modified(`the header says ${countMeta} records, the file holds ${result.records}`);
    if (chainKnown && result.records > 0) {
      result.firstChain = firstChainHex;
      result.lastChain = link.toString('hex', 0, 32);
      if (result.recordedFirstChain !== undefined && result.recordedFirstChain !== result.firstChain) {
        findings.push(finding('chain_broken', { ...where, offset: result.firstOffset }, `the file records first chain ${result.recordedFirstChain}, the chain from the previous record gives ${result.firstChain}`));
      } else if (result.recordedLastChain !== undefined && result.recordedLastChain !== result.lastChain) {
        findings.push(finding('chain_broken', { ...where, offset: result.lastOffset }, `the file records last chain ${result.recordedLastChain}, its records give ${result.lastChain}`));
      }
    }
    return result;
  }
}

/** What differs between an index row and the archived event at its offset (undefined: nothing). */
export function indexDiff(row: IndexRowView, event: Record<string, unknown>): string | undefined {
  // The common case, without allocating: every column as archived (ids as the index writes them, lower-case).
  const time = event.time instanceof Date ? event.time.getTime() : (event.time as number);
  if (
    row.eventId === event.eventId &&
    row.payloadHash === event.hash &&
    row.timeMs === time &&
    row.action === event.action &&
    row.actor === event.actor &&
    row.agentId === ((event.agentId as string | null | undefined) ?? null) &&
    row.requestId === ((event.requestId as string | null | undefined) ?? null) &&
    row.traceId === ((event.traceId as string | null | undefined) ?? null)
  ) {
    return undefined;
  }
  return describeIndexDiff(row, event, time);
}

function describeIndexDiff(row: IndexRowView, event: Record<string, unknown>, time: number): string | undefined {
  const eventId = event.eventId as string;
  const diffs: string[] = [];
  if (row.eventId !== eventId && row.eventId !== eventId.toLowerCase()) diffs.push(`event_id ${row.eventId} (archive ${eventId})`);
  if (row.payloadHash !== event.hash) diffs.push(`payload_hash ${row.payloadHash} (archive ${String(event.hash)})`);
  if (row.timeMs !== time) diffs.push(`event_time ${Number.isFinite(row.timeMs) ? new Date(row.timeMs).toISOString() : String(row.timeMs)} (archive ${new Date(time).toISOString()})`);
  if (row.action !== event.action) diffs.push(`action ${row.action} (archive ${String(event.action)})`);
  if (row.actor !== event.actor) diffs.push(`actor ${row.actor} (archive ${String(event.actor)})`);
  for (const [column, field] of [
    ['agent_id', 'agentId'],
    ['request_id', 'requestId'],
  ] as const) {
    const value = (event[field] as string | null | undefined) ?? null;
    const rowValue = row[field];
    if (rowValue !== value && rowValue !== value?.toLowerCase()) diffs.push(`${column} ${rowValue ?? 'null'} (archive ${value ?? 'null'})`);
  }
  const traceId = (event.traceId as string | null | undefined) ?? null;
  if (row.traceId !== traceId) diffs.push(`trace_id ${row.traceId ?? 'null'} (archive ${traceId ?? 'null'})`);
  return diffs.length === 0 ? undefined : diffs.join(', ');
}

/** One version (or delete marker) of an object, as ListObjectVersions gives it. */
export interface ObjectVersion {
  readonly versionId: string | undefined;
  readonly isLatest: boolean;
  readonly deleteMarker: boolean;
  readonly lastModified?: Date | undefined;
}

/** Every version of a key, newest first. */
export type VersionListing = ReadonlyMap<string, readonly ObjectVersion[]>;

/** What a reader of `key` gets now: its latest version, unless that is a delete marker or it has none. */
export function liveVersion(versions: readonly ObjectVersion[] | undefined): ObjectVersion | undefined {
  const latest = versions?.find((v) => v.isLatest) ?? versions?.[0];
  return latest === undefined || latest.deleteMarker ? undefined : latest;
}

/**
 * The findings of one object's versions against the version that was archived (`expectedVersionId`,
 * when known): missing (no version, or a delete marker on top) and newer versions over it.
 */
export function versionFindings(
  where: { readonly day: string; readonly partition?: number | undefined; readonly key: string },
  versions: readonly ObjectVersion[] | undefined,
  expectedVersionId: string | null | undefined,
  missingKind: FindingKind = 'file_missing',
): Finding[] {
  const findings: Finding[] = [];
  const live = liveVersion(versions);
  const latest = versions?.find((v) => v.isLatest) ?? versions?.[0];
  if (versions === undefined || versions.length === 0) {
    findings.push(finding(missingKind, where, `${where.key} is not in the bucket`));
    return findings;
  }
  if (live === undefined) {
    const hidden = versions.find((v) => !v.deleteMarker);
    findings.push(
      finding(missingKind, { ...where, versionId: latest?.versionId }, `${where.key} is hidden by a delete marker (${latest?.versionId ?? 'null'})${hidden !== undefined ? `; version ${hidden.versionId ?? 'null'} is still under it` : ''}`),
    );
  }
  const archived = expectedVersionId === undefined || expectedVersionId === null ? versions[versions.length - 1] : versions.find((v) => v.versionId === expectedVersionId);
  if (expectedVersionId !== undefined && expectedVersionId !== null && archived === undefined) {
    findings.push(finding(missingKind, { ...where, versionId: expectedVersionId }, `the archived version ${expectedVersionId} of ${where.key} is gone (the key has ${versions.map((v) => v.versionId ?? 'null').join(', ')})`));
  }
  const newer = versions.filter((v) => v !== archived && !v.deleteMarker);
  if (newer.length > 0) {
    findings.push(
      finding(
        'newer_version',
        { ...where, versionId: newer[0]?.versionId },
        `${where.key} has ${newer.length} version(s) besides the archived one (${archived?.versionId ?? 'unknown'}): ${newer.map((v) => `${v.versionId ?? 'null'}${v.lastModified !== undefined ? ` written ${v.lastModified.toISOString()}` : ''}`).join(', ')}; readers see ${live?.versionId ?? 'nothing'}`,
      ),
    );
  }
  return findings;
}

export interface SignatureInput {
  readonly day: string;
  readonly manifestKey: string;
  /** The exact bytes of manifest.json as read. */
  readonly manifestBytes: Uint8Array;
  /** The key the manifest says signed it, when it parsed. */
  readonly manifestSigningKey: { readonly keyId: string; readonly version: number } | undefined;
  /** manifest.json.sig, when there is one: its key and bytes. */
  readonly signature: { readonly key: string; readonly bytes: Uint8Array } | undefined;
  /** Counter-signatures (`manifest.json.resign-v<N>.sig`). */
  readonly resigns: readonly { readonly key: string; readonly bytes: Uint8Array }[];
  readonly publicKeys: readonly PublicKeyVersion[];
  /** Revoked versions, as `keyId#version`. */
  readonly revoked: ReadonlySet<string>;
}

export type SignatureStatus = 'valid' | 'unsigned' | 'invalid' | 'unknown_key' | 'revoked' | 'resigned';

interface ParsedSignature {
  readonly envelope: SignatureEnvelope;
  readonly counterSigns: number | undefined;
}

function parseSignature(bytes: Uint8Array): ParsedSignature | string {
  try {
    const json = JSON.parse(Buffer.from(bytes).toString('utf8')) as { counterSigns?: unknown };
    const envelope = parseSignatureEnvelope(json);
    return { envelope, counterSigns: typeof json.counterSigns === 'number' ? json.counterSigns : undefined };
  } catch (error) {
    return errorMessage(error);
  }
}

export const revocationId = (keyId: string, version: number): string => `${keyId}#${version}`;

/**
 * The manifest's signature against the published keys and the revocations: unsigned, unreadable or
 * badly signed, by a version nobody published, by a revoked version (unless a valid counter-signature
 * by a version still trusted stands in for it: `resigned`, information).
 */
export function signatureFindings(input: SignatureInput): { status: SignatureStatus; keyVersion: number | undefined; findings: Finding[] } {
  const { day, manifestKey: key } = input;
  if (input.signature === undefined) return { status: 'unsigned', keyVersion: undefined, findings: [finding('manifest_unsigned', { day, key }, `${key} has no signature (manifest.json.sig)`)] };
  const sigKey = input.signature.key;
  const parsed = parseSignature(input.signature.bytes);
  if (typeof parsed === 'string') return { status: 'invalid', keyVersion: undefined, findings: [finding('signature_invalid', { day, key: sigKey }, `${sigKey} is not a signature envelope: ${parsed}`)] };
  const { envelope } = parsed;
  const named = `${envelope.keyId} v${envelope.keyVersion}`;
  if (findPublicKey(envelope, input.publicKeys) === undefined) {
    return { status: 'unknown_key', keyVersion: envelope.keyVersion, findings: [finding('signed_by_unknown_key', { day, key: sigKey }, `${key} is signed by ${named}, which is not among the published keys`)] };
  }
  if (!verifySignature(input.manifestBytes, envelope, input.publicKeys)) {
    return { status: 'invalid', keyVersion: envelope.keyVersion, findings: [finding('signature_invalid', { day, key: sigKey }, `the signature by ${named} does not match the bytes of ${key}`)] };
  }
  const declared = input.manifestSigningKey;
  if (declared !== undefined && (declared.keyId !== envelope.keyId || declared.version !== envelope.keyVersion)) {
    return {
      status: 'invalid',
      keyVersion: envelope.keyVersion,
      findings: [finding('signature_invalid', { day, key: sigKey }, `${key} names ${declared.keyId} v${declared.version} as its signer, but ${named} signed it`)],
    };
  }
  if (!input.revoked.has(revocationId(envelope.keyId, envelope.keyVersion))) return { status: 'valid', keyVersion: envelope.keyVersion, findings: [] };

  // Revoked: a counter-signature of this version by a trusted one stands in for it.
  const problems: string[] = [];
  for (const resign of input.resigns) {
    const counter = parseSignature(resign.bytes);
    if (typeof counter === 'string') {
      problems.push(`${resign.key}: ${counter}`);
      continue;
    }
    const by = `${counter.envelope.keyId} v${counter.envelope.keyVersion}`;
    if (counter.counterSigns !== envelope.keyVersion) problems.push(`${resign.key} counter-signs v${counter.counterSigns ?? '?'}, not v${envelope.keyVersion}`);
    else if (input.revoked.has(revocationId(counter.envelope.keyId, counter.envelope.keyVersion))) problems.push(`${resign.key} is by ${by}, revoked too`);
    else if (!verifySignature(input.manifestBytes, counter.envelope, input.publicKeys)) problems.push(`${resign.key} by ${by} does not verify`);
    else {
      return {
        status: 'resigned',
        keyVersion: envelope.keyVersion,
        findings: [finding('resigned', { day, key: resign.key }, `${key} was signed by ${named}, since revoked, and is counter-signed by ${by} (${resign.key})`)],
      };
    }
  }
  return {
    status: 'revoked',
    keyVersion: envelope.keyVersion,
    findings: [
      finding(
        'signed_by_revoked_key',
        { day, key: sigKey },
        `${key} is signed by ${named}, which is revoked${problems.length > 0 ? `; no valid counter-signature (${problems.join('; ')})` : '; not counter-signed yet (agent-manager audit resign)'}`,
      ),
    ],
  };
}
