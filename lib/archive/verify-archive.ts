/**
 * `audit verify`, the I/O part: for each day, every object version under `<root>/dt=DAY/`
 * (ListObjectVersions, so a version added over an archived one or a delete marker shows), the
 * manifest and its signatures, each archive file's bytes (GetObject, a few fetched ahead while one is
 * verified), `audit_days`, `audit_files` and the `audit_index` rows of the files' offsets. The checks
 * themselves are in ./verify.ts.
 */
import { GetObjectCommand, ListObjectVersionsCommand, type S3Client } from '@aws-sdk/client-s3';
import { errorMessage, retryableError } from '../errors.ts';
import type { PublicKeyVersion } from '../signing/signer.ts';
import type { Queryable } from './index-store.ts';
import { listArchiveDays, parseArchiveKey, type ArchiveFileName } from './layout.ts';
import { isManifestObjectKey, manifestKey as manifestKeyOf, manifestSha256, parseManifest, parseResignKey, signatureKey as signatureKeyOf, type AuditManifest, type ManifestFile } from './manifest.ts';
import { s3Failure } from './s3.ts';
import {
  FileVerifier,
  finding,
  isIntact,
  liveVersion,
  signatureFindings,
  versionFindings,
  type Finding,
  type FileVerification,
  type ObjectVersion,
  type IndexRowView,
  type SignatureStatus,
  type VersionListing,
} from './verify.ts';

export interface VerifyArchiveOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly root: string;
  readonly db: Queryable;
  /** Inclusive days, `YYYY-MM-DD`. */
  readonly from: string;
  readonly to: string;
  /** Every published key version (the signer's `publicKeys()`, or the auditor's file). */
  readonly publicKeys: readonly PublicKeyVersion[];
  /** Revoked versions, as `revocationId(keyId, version)`. */
  readonly revoked: ReadonlySet<string>;
  /** Told when each day is done. */
  readonly progress?: (day: DayReport) => void;
  /** Archive files fetched ahead of the one being verified (default 4). */
  readonly prefetch?: number;
}

export type ManifestStatus = 'none' | 'unreadable' | SignatureStatus;

export interface DayReport {
  readonly day: string;
  /** Closed on every partition (in audit_days, or with a manifest), or still open. */
  readonly status: 'closed' | 'open';
  readonly manifest: ManifestStatus;
  /** The key version that signed the manifest, when it names one. */
  readonly signedKeyVersion: number | undefined;
  readonly files: number;
  readonly events: number;
  readonly bytes: number;
  readonly findings: readonly Finding[];
}

export interface VerifyReport {
  readonly bucket: string;
  readonly root: string;
  readonly from: string;
  readonly to: string;
  readonly intact: boolean;
  readonly days: readonly DayReport[];
  readonly files: number;
  readonly events: number;
  readonly bytes: number;
  readonly seconds: number;
  readonly eventsPerSecond: number;
  /** Every finding, in day order. */
  readonly findings: readonly Finding[];
}

interface FileRow {
  readonly key: string;
  readonly partition: number;
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly recordCount: number;
  readonly sha256: string;
  readonly versionId: string | null;
  readonly lastChain: string | undefined;
}

/** What the previous verified (or linked) manifest says a partition ends with. */
interface ManifestInfo {
  readonly day: string;
  readonly key: string;
  readonly sha256: string;
  readonly ends: ReadonlyMap<number, string>;
}

function failed(what: string, error: unknown): Error {
  return retryableError('AUDIT_VERIFY_DB_FAILED', `audit verify: ${what}: ${errorMessage(error)}`, error);
}

async function listVersions(s3: S3Client, bucket: string, prefix: string): Promise<Map<string, ObjectVersion[]>> {
  const listing = new Map<string, ObjectVersion[]>();
  let keyMarker: string | undefined;
  let versionMarker: string | undefined;
  for (;;) {
    let page;
    try {
      page = await s3.send(
        new ListObjectVersionsCommand({ Bucket: bucket, Prefix: prefix, ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}), ...(versionMarker !== undefined ? { VersionIdMarker: versionMarker } : {}) }),
      );
    } catch (error) {
      throw s3Failure(`ListObjectVersions s3://${bucket}/${prefix}`, error, { bucket, prefix });
    }
    const add = (key: string | undefined, version: ObjectVersion) => {
      if (key === undefined) return;
      const list = listing.get(key) ?? [];
      list.push(version);
      listing.set(key, list);
    };
    for (const v of page.Versions ?? []) add(v.Key, { versionId: v.VersionId === 'null' ? undefined : v.VersionId, isLatest: v.IsLatest === true, deleteMarker: false, lastModified: v.LastModified });
    for (const m of page.DeleteMarkers ?? []) add(m.Key, { versionId: m.VersionId === 'null' ? undefined : m.VersionId, isLatest: m.IsLatest === true, deleteMarker: true, lastModified: m.LastModified });
    if (page.IsTruncated !== true) break;
    keyMarker = page.NextKeyMarker;
    versionMarker = page.NextVersionIdMarker;
  }
  // Newest first (S3 lists a key's versions so, but versions and delete markers come in two lists).
  for (const list of listing.values()) list.sort((a, b) => Number(b.isLatest) - Number(a.isLatest) || (b.lastModified?.getTime() ?? 0) - (a.lastModified?.getTime() ?? 0));
  return listing;
}

async function getBytes(s3: S3Client, bucket: string, key: string, versionId: string | undefined): Promise<Buffer> {
  try {
    const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, ...(versionId !== undefined ? { VersionId: versionId } : {}) }));
    const body = object.Body;
    if (body === undefined) return Buffer.alloc(0);
    const bytes = await body.transformToByteArray();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  } catch (error) {
    throw s3Failure(`GetObject s3://${bucket}/${key}${versionId !== undefined ? ` version ${versionId}` : ''}`, error, { bucket, key, versionId });
  }
}

/** The days to verify: every day of the range with a folder in S3, a closed day or a file row. */
async function daysToVerify(options: VerifyArchiveOptions): Promise<string[]> {
  const days = new Set((await listArchiveDays(options.s3, options.bucket, options.root)).filter((d) => d >= options.from && d <= options.to));
  try {
    const { rows } = await options.db.query<{ day: string }>(
      `SELECT to_char(day, 'YYYY-MM-DD') AS day FROM audit_days WHERE day BETWEEN $1::date AND $2::date
       UNION SELECT to_char(day, 'YYYY-MM-DD') FROM audit_files WHERE day BETWEEN $1::date AND $2::date`,
      [options.from, options.to],
    );
    for (const row of rows) days.add(row.day);
  } catch (error) {
    throw failed('reading the days of audit_days and audit_files', error);
  }
  return [...days].sort();
}

async function dayRows(db: Queryable, day: string): Promise<{ closed: boolean; manifestSha256: string | undefined; files: FileRow[] }> {
  try {
    // SELECT *: manifest_sha256 came with the integrity change.
    const closed = await db.query<Record<string, unknown>>('SELECT * FROM audit_days WHERE day = $1::date', [day]);
    const dayRow = closed.rows[0];
    // SELECT *: last_chain came with the integrity change.
    const files = await db.query<Record<string, unknown>>('SELECT * FROM audit_files WHERE day = $1::date ORDER BY kafka_partition, first_offset', [day]);
    return {
      closed: dayRow !== undefined,
      manifestSha256: typeof dayRow?.manifest_sha256 === 'string' ? dayRow.manifest_sha256 : undefined,
      files: files.rows.map((r) => ({
        key: String(r.object_key),
        partition: Number(r.kafka_partition),
        firstOffset: Number(r.first_offset),
        lastOffset: Number(r.last_offset),
        recordCount: Number(r.record_count),
        sha256: String(r.sha256),
        versionId: typeof r.version_id === 'string' ? r.version_id : null,
        lastChain: typeof r.last_chain === 'string' ? r.last_chain : undefined,
      })),
    };
  } catch (error) {
    throw failed(`reading audit_days and audit_files of ${day}`, error);
  }
}

interface IndexRow {
  event_id: string;
  event_ms: number;
  action: string;
  actor: string;
  agent_id: string | null;
  request_id: string | null;
  trace_id: string | null;
  kafka_offset: number;
  payload_hash: string;
}

// The time as epoch milliseconds and the offset as a float8: pg parses numbers far faster than
// timestamptz and bigint text (a verify reads every row of the days).
const INDEX_COLUMNS =
  'event_id, (extract(epoch FROM event_time) * 1000)::float8 AS event_ms, action, actor, agent_id, request_id, trace_id, kafka_offset::float8 AS kafka_offset, payload_hash';

function entryOf(r: IndexRow): IndexRowView {
  return { eventId: r.event_id, timeMs: r.event_ms, action: r.action, actor: r.actor, agentId: r.agent_id, requestId: r.request_id, traceId: r.trace_id, offset: r.kafka_offset, payloadHash: r.payload_hash };
}

/** The index rows of a partition's offsets, by offset; a second row at an offset (one record per offset) is extra whatever the archive holds. */
async function indexRows(db: Queryable, partition: number, from: number, to: number): Promise<{ byOffset: Map<number, IndexRowView>; duplicates: IndexRowView[] }> {
  try {
    const { rows } = await db.query<IndexRow>(`SELECT ${INDEX_COLUMNS} FROM audit_index WHERE kafka_partition = $1 AND kafka_offset BETWEEN $2 AND $3 ORDER BY audit_index.kafka_offset, indexed_at, event_id`, [
      partition,
      String(from),
      String(to),
    ]);
    const byOffset = new Map<number, IndexRowView>();
    const duplicates: IndexRowView[] = [];
    for (const r of rows) {
      const entry = entryOf(r);
      if (byOffset.has(entry.offset)) duplicates.push(entry);
      else byOffset.set(entry.offset, entry);
    }
    return { byOffset, duplicates };
  } catch (error) {
    throw failed(`reading the index of partition ${partition}, offsets ${from}-${to}`, error);
  }
}

async function indexedIds(db: Queryable, ids: readonly string[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (let i = 0; i < ids.length; i += 10_000) {
    try {
      const { rows } = await db.query<{ event_id: string }>('SELECT event_id FROM audit_index WHERE event_id = ANY($1::uuid[])', [ids.slice(i, i + 10_000)]);
      for (const r of rows) found.add(r.event_id);
    } catch (error) {
      throw failed('looking up events by id', error);
    }
  }
  return found;
}

/** Runs `load` for each item with up to `ahead` in flight, handing results over in order. */
async function* prefetched<T, R>(items: readonly T[], ahead: number, load: (item: T) => Promise<R>): AsyncGenerator<R> {
  const pending: Promise<R>[] = [];
  let next = 0;
  const fill = () => {
    while (next < items.length && pending.length < ahead) {
      const promise = load(items[next++] as T);
      // Awaited in order below; a rejection before then must not go unhandled.
      promise.catch(() => undefined);
      pending.push(promise);
    }
  };
  fill();
  while (pending.length > 0) {
    const result = await (pending.shift() as Promise<R>);
    fill();
    yield result;
  }
}

function endsOf(manifest: AuditManifest): Map<number, string> {
  return new Map(manifest.partitions.map((p) => [p.partition, p.files.at(-1)?.lastChain ?? p.chainBefore]));
}

/** One file of a partition's day, as expected (manifest or audit_files) and as found. */
interface PartitionFile {
  readonly key: string;
  readonly name: ArchiveFileName;
  readonly manifest: ManifestFile | undefined;
  readonly row: FileRow | undefined;
  /** The version read; undefined when the file cannot be read (missing, hidden). */
  readonly version: ObjectVersion | undefined;
  /** Not among the closed day's files: verified on its own (no chain carried through it, no index rows). */
  readonly extra: boolean;
}

/**
 * Verifies the days from `from` to `to`. Never throws for what it finds (that is the report); throws
 * typed errors when S3 or Postgres cannot be read.
 */
export async function verifyArchive(options: VerifyArchiveOptions): Promise<VerifyReport> {
  const { s3, bucket, root, db } = options;
  const started = process.hrtime.bigint();
  const verifier = new FileVerifier();
  const ahead = Math.max(1, options.prefetch ?? 4);
  const days = await daysToVerify(options);
  const reports: DayReport[] = [];
  /** Each partition's chain at the end of the last verified day. */
  const carried = new Map<number, string>();
  let previous: ManifestInfo | undefined;
  const manifestCache = new Map<string, ManifestInfo | null>();

  /** A manifest a later one links to, read (latest version) when it is not one verified in this run. */
  async function linkedManifest(key: string, day: string): Promise<ManifestInfo | null> {
    const cached = manifestCache.get(key);
    if (cached !== undefined) return cached;
    let info: ManifestInfo | null = null;
    const versions = (await listVersions(s3, bucket, key)).get(key);
    const live = liveVersion(versions);
    if (live !== undefined) {
      const bytes = await getBytes(s3, bucket, key, live.versionId);
      let ends = new Map<number, string>();
      try {
        ends = endsOf(parseManifest(bytes));
      } catch {
        // An unreadable linked manifest is that day's finding when it is verified; its hash still links.
      }
      info = { day, key, sha256: manifestSha256(bytes), ends };
    }
    manifestCache.set(key, info);
    return info;
  }

  for (const day of days) {
    const findings: Finding[] = [];
    const listing: VersionListing = await listVersions(s3, bucket, `${root}/dt=${day}/`);
    const { closed: closedInDb, manifestSha256: recordedManifestSha256, files: rows } = await dayRows(db, day);
    const mKey = manifestKeyOf(root, day);
    const sKey = signatureKeyOf(root, day);

    // The manifest and its signatures.
    let manifest: AuditManifest | undefined;
    let manifestStatus: ManifestStatus = 'none';
    let signedKeyVersion: number | undefined;
    const mVersions = listing.get(mKey);
    if (mVersions !== undefined) {
      findings.push(...versionFindings({ day, key: mKey }, mVersions, undefined, 'manifest_missing'));
      const live = liveVersion(mVersions);
      if (live !== undefined) {
        const bytes = await getBytes(s3, bucket, mKey, live.versionId);
        try {
          manifest = parseManifest(bytes);
          if (manifest.day !== day || manifest.root !== root || manifest.bucket !== bucket) {
            findings.push(finding('file_extra', { day, key: mKey }, `out of place: ${mKey} is the manifest of s3://${manifest.bucket}/${manifest.root} day ${manifest.day}`));
          }
        } catch (error) {
          manifestStatus = 'unreadable';
          findings.push(finding('manifest_missing', { day, key: mKey }, `${mKey} is not a readable manifest: ${errorMessage(error)}`));
        }
        const sVersions = listing.get(sKey);
        if (sVersions !== undefined) findings.push(...versionFindings({ day, key: sKey }, sVersions, undefined).filter((f) => f.kind === 'newer_version'));
        const sLive = liveVersion(sVersions);
        const resigns: { key: string; bytes: Uint8Array }[] = [];
        for (const [key, versions] of listing) {
          const live = parseResignKey(key) !== undefined && key.startsWith(`${root}/dt=${day}/`) ? liveVersion(versions) : undefined;
          if (live !== undefined) resigns.push({ key, bytes: await getBytes(s3, bucket, key, live.versionId) });
        }
        const signed = signatureFindings({
          day,
          manifestKey: mKey,
          manifestBytes: bytes,
          manifestSigningKey: manifest === undefined ? undefined : { keyId: manifest.signingKey.keyId, version: manifest.signingKey.version },
          signature: sLive === undefined ? undefined : { key: sKey, bytes: await getBytes(s3, bucket, sKey, sLive.versionId) },
          resigns,
          publicKeys: options.publicKeys,
          revoked: options.revoked,
        });
        findings.push(...signed.findings);
        if (manifestStatus !== 'unreadable') manifestStatus = signed.status;
        signedKeyVersion = signed.keyVersion;

        // The chain of manifests.
        if (manifest !== undefined) {
          const link = manifest.previousManifest;
          if (link !== null) {
            const linked = previous?.key === link.key ? previous : await linkedManifest(link.key, link.day);
            if (linked === null) findings.push(finding('chain_broken', { day, key: mKey }, `${mKey} links to the manifest ${link.key} of ${link.day}, which is not in the bucket`));
            else if (linked.sha256 !== link.sha256) findings.push(finding('chain_broken', { day, key: mKey }, `${mKey} links to ${link.key} with SHA-256 ${link.sha256}, but that manifest's bytes hash to ${linked.sha256}`));
            else if (previous === undefined) previous = linked;
          } else if (previous !== undefined) {
            findings.push(finding('chain_broken', { day, key: mKey }, `${mKey} links to no previous manifest, but ${previous.key} (${previous.day}) comes before it`));
          }
        }
        const sha256 = manifestSha256(bytes);
        if (recordedManifestSha256 !== undefined && recordedManifestSha256 !== sha256) {
          findings.push(finding('index_row_altered', { day, key: mKey }, `audit_days records manifest SHA-256 ${recordedManifestSha256} for ${day}; ${mKey} hashes to ${sha256}`));
        }
        manifestCache.set(mKey, { day, key: mKey, sha256, ends: manifest === undefined ? new Map() : endsOf(manifest) });
      }
    } else if (listing.has(sKey)) {
      findings.push(finding('manifest_missing', { day, key: mKey }, `${sKey} is there but ${mKey} is not`));
    }
    const closed = closedInDb || manifest !== undefined;
    if (mVersions === undefined && closedInDb) findings.push(finding('manifest_missing', { day, key: mKey }, `${day} is closed (audit_days) but has no manifest: not signed yet (safe mode, or the signer unreachable?) or removed`));
    if (!closed) findings.push(finding('day_open', { day }, `${day} is still open: its files, chains and index are verified as far as they go; no manifest yet`));

    // Expected files (the manifest, else audit_files) and what the bucket holds.
    const manifestFiles = new Map<string, { partition: number; file: ManifestFile }>();
    for (const p of manifest?.partitions ?? []) for (const file of p.files) manifestFiles.set(file.key, { partition: p.partition, file });
    const rowsByKey = new Map(rows.map((r) => [r.key, r]));
    const byPartition = new Map<number, PartitionFile[]>();
    const add = (file: PartitionFile) => byPartition.set(file.name.partition, [...(byPartition.get(file.name.partition) ?? []), file]);
    const expectedKeys = manifest !== undefined ? [...manifestFiles.keys()] : rows.map((r) => r.key);
    const seen = new Set<string>();
    for (const key of expectedKeys) {
      seen.add(key);
      const name = parseArchiveKey(key);
      const m = manifestFiles.get(key);
      const row = rowsByKey.get(key);
      if (name === undefined || name.prefix !== root || name.day !== day) {
        findings.push(finding('file_extra', { day, key }, `out of place: ${key} is listed for ${day} but is not an archive file of ${root}/dt=${day}/`));
        continue;
      }
      const versions = listing.get(key);
      const expectedVersion = m?.file.versionId ?? row?.versionId ?? undefined;
      findings.push(...versionFindings({ day, partition: name.partition, key }, versions, expectedVersion));
      add({ key, name, manifest: m?.file, row, version: liveVersion(versions), extra: false });
      if (m !== undefined && m.partition !== name.partition) findings.push(finding('file_extra', { day, partition: m.partition, key }, `out of place: the manifest lists ${key} under partition ${m.partition}`));
    }
    for (const [key, versions] of listing) {
      if (seen.has(key) || key === mKey || key === sKey || isManifestObjectKey(key)) continue;
      const name = parseArchiveKey(key);
      const live = liveVersion(versions);
      if (name === undefined || name.prefix !== root || name.day !== day) {
        if (live !== undefined) findings.push(finding('file_extra', { day, key, versionId: live.versionId }, `${key} is not an archive file of ${root}/dt=${day}/`));
        continue;
      }
      if (live === undefined) continue;
      // On an open day a file may be uploaded and not recorded yet: verified, not called extra.
      if (closed) findings.push(finding('file_extra', { day, partition: name.partition, key, versionId: live.versionId }, `${key} is in the bucket but not in the ${manifest !== undefined ? 'manifest' : 'audit_files rows'} of ${day}`));
      if (versions.length > 1) findings.push(...versionFindings({ day, partition: name.partition, key }, versions, undefined).filter((f) => f.kind === 'newer_version'));
      add({ key, name, manifest: undefined, row: rowsByKey.get(key), version: live, extra: closed });
    }

    // audit_files against the manifest (closed days).
    if (manifest !== undefined) {
      for (const [key, { partition, file }] of manifestFiles) {
        const row = rowsByKey.get(key);
        if (row === undefined) findings.push(finding('index_row_missing', { day, partition, key }, `audit_files has no row for ${key}`));
        else if (row.sha256 !== file.sha256 || row.firstOffset !== file.firstOffset || row.lastOffset !== file.lastOffset || row.recordCount !== file.eventCount || (row.versionId ?? null) !== file.versionId) {
          findings.push(finding('index_row_altered', { day, partition, key }, `audit_files row of ${key} differs from the manifest (sha256 ${row.sha256}, offsets ${row.firstOffset}-${row.lastOffset}, ${row.recordCount} records, version ${row.versionId ?? 'null'})`));
        }
      }
      for (const row of rows) if (!manifestFiles.has(row.key)) findings.push(finding('index_row_extra', { day, partition: row.partition, key: row.key }, `audit_files has a row for ${row.key}, which the manifest of ${day} does not list`));
    }

    // Partition by partition: files in offset order, the chain through them, the index rows of their offsets.
    const partitions = new Set<number>([...byPartition.keys(), ...(manifest?.partitions.map((p) => p.partition) ?? [])]);
    let dayFiles = 0;
    let dayEvents = 0;
    let dayBytes = 0;
    for (const partition of [...partitions].sort((a, b) => a - b)) {
      const files = (byPartition.get(partition) ?? []).sort((a, b) => a.name.firstOffset - b.name.firstOffset || a.name.lastOffset - b.name.lastOffset);
      const mp = manifest?.partitions.find((p) => p.partition === partition);
      // Where the chain starts: the manifest's chain before the day, checked against the previous day's end.
      const before = carried.get(partition) ?? previous?.ends.get(partition);
      let chain: string | undefined = mp?.chainBefore ?? before;
      const firstFile = files[0];
      if (mp !== undefined && before !== undefined && mp.chainBefore !== before) {
        findings.push(
          finding(
            'chain_broken',
            { day, partition, key: firstFile?.key ?? mKey, offset: firstFile?.name.firstOffset },
            `across the day boundary: the previous day ends partition ${partition} at chain ${before}, ${day} starts it from ${mp.chainBefore}`,
          ),
        );
      }
      const boundaryUnchecked = mp === undefined && before !== undefined;
      const indexed = files.filter((f) => !f.extra);
      const low = indexed[0]?.name.firstOffset;
      const high = indexed.reduce((max, f) => Math.max(max, f.name.lastOffset), -1);
      const { byOffset: index, duplicates } = low === undefined ? { byOffset: new Map<number, IndexRowView>(), duplicates: [] } : await indexRows(db, partition, low, high);
      const unindexed: { eventId: string; offset: number; key: string }[] = [];
      let prior: { key: string; lastOffset: number } | undefined;
      let events = 0;
      const readable = files.filter((f) => f.version !== undefined);
      const loaded = prefetched(readable, ahead, async (f) => ({ file: f, bytes: await getBytes(s3, bucket, f.key, f.version?.versionId) }));
      let nextLoaded = await loaded.next();
      for (const file of files) {
        const { key, name } = file;
        const where = { day, partition, key };
        if (prior !== undefined && name.firstOffset <= prior.lastOffset) {
          findings.push(finding('offset_overlap', { ...where, offset: name.firstOffset }, `${key} starts at offset ${name.firstOffset}, within ${prior.key} (up to ${prior.lastOffset})`));
        }
        const gap = prior !== undefined && name.firstOffset > prior.lastOffset + 1;
        if (file.version === undefined) {
          // Unreadable: its offsets' index rows cannot be checked; the chain goes on from what it recorded.
          for (const offset of [...index.keys()]) if (offset >= name.firstOffset && offset <= name.lastOffset) index.delete(offset);
          chain = file.manifest?.lastChain ?? file.row?.lastChain;
          prior = { key, lastOffset: name.lastOffset };
          continue;
        }
        const item = nextLoaded.done === true ? undefined : nextLoaded.value;
        if (item?.file !== file) throw new Error('audit verify: prefetch out of order');
        nextLoaded = await loaded.next();
        if (file.extra) {
          // Its own content only: it is not part of the day's chain or index.
          const result = verifier.verify({ key, versionId: file.version.versionId, name, bytes: item.bytes, chainBefore: undefined });
          findings.push(...result.findings);
          dayFiles += 1;
          dayBytes += item.bytes.length;
          continue;
        }
        const result: FileVerification = verifier.verify({
          key,
          versionId: file.version.versionId,
          name,
          bytes: item.bytes,
          chainBefore: chain === undefined ? undefined : Buffer.from(chain, 'hex'),
          index,
        });
        dayFiles += 1;
        dayBytes += item.bytes.length;
        events += result.records;
        for (const f of result.findings) {
          // A chain that does not continue after a hole in the offsets: records are missing there.
          if (f.kind === 'chain_broken' && gap && f.offset === result.firstOffset && prior !== undefined) {
            findings.push(finding('offset_gap', { ...where, offset: name.firstOffset }, `offsets ${prior.lastOffset + 1}-${name.firstOffset - 1} between ${prior.key} and ${key} are missing, and the chain does not continue across them`));
          } else if (f.kind === 'chain_broken' && boundaryUnchecked && prior === undefined && f.offset === result.firstOffset) {
            findings.push(finding('chain_broken', f, `across the day boundary: ${f.message}`));
          } else findings.push(f);
        }
        for (const u of result.unindexed) unindexed.push({ ...u, key });
        const expectedSha = file.manifest?.sha256 ?? file.row?.sha256;
        if (expectedSha !== undefined && expectedSha !== result.sha256) {
          findings.push(
            finding(
              'file_modified',
              { ...where, versionId: file.version.versionId },
              `${key} (version ${file.version.versionId ?? 'null'}) has SHA-256 ${result.sha256}; the ${file.manifest !== undefined ? 'manifest' : 'audit_files row'} says ${expectedSha}`,
            ),
          );
        }
        const m = file.manifest;
        if (m !== undefined) {
          if (result.readable && (result.firstOffset !== m.firstOffset || result.lastOffset !== m.lastOffset || result.records !== m.eventCount)) {
            findings.push(finding('file_modified', where, `${key} holds offsets ${result.firstOffset ?? '-'}-${result.lastOffset ?? '-'} (${result.records} events); the manifest says ${m.firstOffset}-${m.lastOffset} (${m.eventCount})`));
          }
          if (result.lastChain !== undefined && (result.firstChain !== m.firstChain || result.lastChain !== m.lastChain)) {
            findings.push(finding('chain_broken', { ...where, offset: result.firstChain !== m.firstChain ? result.firstOffset : result.lastOffset }, `${key}'s records chain to ${result.firstChain ?? '-'}…${result.lastChain}; the manifest says ${m.firstChain}…${m.lastChain}`));
          }
        } else if (file.row !== undefined && !manifest && result.readable && (result.firstOffset !== file.row.firstOffset || result.lastOffset !== file.row.lastOffset || result.records !== file.row.recordCount)) {
          findings.push(finding('index_row_altered', where, `audit_files says ${key} holds offsets ${file.row.firstOffset}-${file.row.lastOffset} (${file.row.recordCount} records); it holds ${result.firstOffset ?? '-'}-${result.lastOffset ?? '-'} (${result.records})`));
        }
        // Go on from what the file's records give, else from what was recorded for it.
        chain = result.lastChain ?? m?.lastChain ?? result.recordedLastChain ?? file.row?.lastChain;
        prior = { key, lastOffset: name.lastOffset };
      }
      if (mp !== undefined && mp.eventCount !== mp.files.reduce((sum, f) => sum + f.eventCount, 0)) {
        findings.push(finding('file_modified', { day, partition, key: mKey }, `the manifest counts ${mp.eventCount} events on partition ${partition}, its files ${mp.files.reduce((sum, f) => sum + f.eventCount, 0)}`));
      }
      // Index rows of these offsets that no archived record matched; archived events the index lacks.
      for (const row of duplicates) {
        findings.push(finding('index_row_extra', { day, partition, offset: row.offset, eventId: row.eventId }, `audit_index has a second row at partition ${partition} offset ${row.offset} (event ${row.eventId}); the archive holds one record there`));
      }
      for (const [offset, row] of index) {
        findings.push(finding('index_row_extra', { day, partition, offset, eventId: row.eventId }, `audit_index has event ${row.eventId} at partition ${partition} offset ${offset}, which no archived record of ${day} holds`));
      }
      if (unindexed.length > 0) {
        const found = await indexedIds(
          db,
          unindexed.map((u) => u.eventId),
        );
        for (const u of unindexed) {
          if (!found.has(u.eventId)) findings.push(finding('index_row_missing', { day, partition, key: u.key, offset: u.offset, eventId: u.eventId }, `audit_index has no row for event ${u.eventId} (partition ${partition} offset ${u.offset})`));
        }
      }
      dayEvents += events;
      if (chain !== undefined) carried.set(partition, chain);
    }
    if (manifest !== undefined) previous = manifestCache.get(mKey) ?? undefined;

    const report: DayReport = { day, status: closed ? 'closed' : 'open', manifest: manifestStatus, signedKeyVersion, files: dayFiles, events: dayEvents, bytes: dayBytes, findings };
    reports.push(report);
    options.progress?.(report);
  }

  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const all = reports.flatMap((r) => r.findings);
  const events = reports.reduce((sum, r) => sum + r.events, 0);
  return {
    bucket,
    root,
    from: options.from,
    to: options.to,
    intact: isIntact(all),
    days: reports,
    files: reports.reduce((sum, r) => sum + r.files, 0),
    events,
    bytes: reports.reduce((sum, r) => sum + r.bytes, 0),
    seconds,
    eventsPerSecond: seconds > 0 ? events / seconds : 0,
    findings: all,
  };
}
