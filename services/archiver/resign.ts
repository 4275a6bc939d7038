/**
 * `audit resign` (the key-compromise runbook's step): for each day whose manifest was signed by a
 * revoked key version, the manifest's content is checked again against the archive itself (every
 * file's object version, SHA-256, offsets, count and chain, continuing from the previous day; no file
 * of the day missing from it; the previous manifest's hash), and only then counter-signed with the
 * current key version: `<root>/dt=DAY/manifest.json.resign-v<N>.sig`, the manifest.json.sig envelope
 * plus `counterSigns: <revoked version>`, written once under Object Lock. Nothing is overwritten.
 */
import { createHash } from 'node:crypto';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { chainOf } from '../../lib/archive/chain.ts';
import { formatArchiveKey, isArchiveDay, listDayFiles, nextDay } from '../../lib/archive/layout.ts';
import {
  canonicalManifestBytes, canonicalSignatureBytes, manifestKey, manifestSha256, parseManifest, parseManifestSignature, resignKey, signatureKey,
  type AuditManifest, type ManifestSignature,
} from '../../lib/archive/manifest.ts';
import { putArchiveObject } from '../../lib/archive/objects.ts';
import { readArchiveRecords } from '../../lib/archive/reader.ts';
import { s3ErrorCode, s3Failure, s3HttpStatus } from '../../lib/archive/s3.ts';
import { errorMessage, permanentError } from '../../lib/errors.ts';
import type { Revocation } from '../../lib/signing/revocations.ts';
import type { Signer } from '../../lib/signing/signer.ts';

export interface ResignOptions {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  readonly signer: Signer;
  /** Every revoked key version (lib/signing/revocations.ts listRevocations). */
  readonly revocations: readonly Pick<Revocation, 'keyId' | 'keyVersion'>[];
  /** Inclusive days. */
  readonly from: string;
  readonly to: string;
  readonly now?: () => Date;
  /** Told after each day. */
  readonly progress?: (day: ResignedDay) => void;
  /** Awaited after each counter-signature is written (the CLI audits it). */
  readonly resigned?: (day: Extract<ResignedDay, { outcome: 'resigned' }>) => Promise<void>;
}

export type ResignedDay =
  | { readonly day: string; readonly outcome: 'no_manifest' }
  /** Signed by a version that is not revoked: nothing to do. */
  | { readonly day: string; readonly outcome: 'not_revoked'; readonly keyVersion: number }
  | { readonly day: string; readonly outcome: 'already_resigned'; readonly keyVersion: number; readonly key: string }
  | { readonly day: string; readonly outcome: 'resigned'; readonly revokedVersion: number; readonly keyVersion: number; readonly key: string }
  /** The manifest does not match the archive (or cannot be read): not counter-signed. */
  | { readonly day: string; readonly outcome: 'refused'; readonly problems: readonly string[] };

export interface ResignSummary {
  readonly days: readonly ResignedDay[];
  readonly resigned: number;
  readonly refused: number;
}

async function objectBytes(s3: S3Client, bucket: string, key: string, versionId?: string | null): Promise<Buffer | undefined> {
  try {
    const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, ...(versionId != null ? { VersionId: versionId } : {}) }));
    return Buffer.from(await (object.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
  } catch (error) {
    const code = s3ErrorCode(error);
    if (code === 'NoSuchKey' || code === 'NoSuchVersion' || s3HttpStatus(error) === 404) return undefined;
    // MinIO answers a malformed or unknown version id with 400 InvalidArgument.
    if (versionId != null && s3HttpStatus(error) === 400) return undefined;
    throw s3Failure(`GetObject s3://${bucket}/${key}${versionId != null ? `?versionId=${versionId}` : ''}`, error, { bucket, key });
  }
}

/** What is wrong between a manifest and the archive (empty: it is true of the archive). */
export async function manifestProblems(s3: S3Client, bucket: string, prefix: string, day: string, manifest: AuditManifest): Promise<string[]> {
  const problems: string[] = [];
  if (manifest.bucket !== bucket || manifest.root !== prefix || manifest.day !== day) problems.push(`the manifest is for s3://${manifest.bucket}/${manifest.root} ${manifest.day}, not s3://${bucket}/${prefix} ${day}`);
  // Its place in the chain of manifests and, per partition, the chain where the previous day's ended.
  let previous: AuditManifest | undefined;
  if (manifest.previousManifest !== null) {
    const link = manifest.previousManifest;
    const bytes = await objectBytes(s3, bucket, link.key);
    if (bytes === undefined) problems.push(`the previous manifest ${link.key} is missing`);
    else if (manifestSha256(bytes) !== link.sha256) problems.push(`the previous manifest ${link.key} has SHA-256 ${manifestSha256(bytes)}, this manifest names ${link.sha256}`);
    else previous = parseManifest(bytes);
  }
  for (const partition of manifest.partitions) {
    const before = previous?.partitions.find((p) => p.partition === partition.partition);
    const end = before === undefined ? undefined : (before.files.at(-1)?.lastChain ?? before.chainBefore);
    if (end !== undefined && end !== partition.chainBefore) problems.push(`p=${partition.partition}: the chain before the day is ${partition.chainBefore}, the previous day's ended at ${end}`);
    let chain = partition.chainBefore;
    let count = 0;
    let lastOffset = -1;
    for (const file of partition.files) {
      const body = await objectBytes(s3, bucket, file.key, file.versionId);
      if (body === undefined) {
        problems.push(`${file.key} (version ${file.versionId ?? 'null'}) is missing`);
        continue;
      }
      const sha256 = createHash('sha256').update(body).digest('base64');
      if (sha256 !== file.sha256) problems.push(`${file.key}: SHA-256 ${sha256}, the manifest says ${file.sha256}`);
      let records;
      try {
        records = (await readArchiveRecords<{ hash?: unknown }>(body, { name: file.key })).records;
      } catch (error) {
        problems.push(`${file.key}: unreadable: ${errorMessage(error)}`);
        continue;
      }
      const hashes = records.map((r) => (typeof r.event.hash === 'string' ? r.event.hash : ''));
      let span;
      try {
        span = chainOf(chain, hashes);
      } catch (error) {
        problems.push(`${file.key}: its events cannot be chained: ${errorMessage(error)}`);
        continue;
      }
      if (span.first !== file.firstChain || span.last !== file.lastChain) problems.push(`${file.key}: the chain recomputed from its events is ${span.first}..${span.last}, the manifest says ${file.firstChain}..${file.lastChain}`);
      const offsets = [records[0]?.offset, records.at(-1)?.offset, records.length];
      if (offsets[0] !== file.firstOffset || offsets[1] !== file.lastOffset || offsets[2] !== file.eventCount) {
        problems.push(`${file.key}: holds offsets ${offsets[0]}..${offsets[1]} (${offsets[2]} events), the manifest says ${file.firstOffset}..${file.lastOffset} (${file.eventCount})`);
      }
      if (file.firstOffset <= lastOffset) problems.push(`${file.key}: overlaps the file before it (offset ${file.firstOffset} <= ${lastOffset})`);
      lastOffset = file.lastOffset;
      chain = file.lastChain;
      count += records.length;
    }
    if (count !== partition.eventCount) problems.push(`p=${partition.partition}: ${count} events in its files, the manifest says ${partition.eventCount}`);
  }
  // A file of the day the manifest leaves out.
  const listed = new Set(manifest.partitions.flatMap((p) => p.files.map((f) => f.key)));
  for (const name of await listDayFiles(s3, bucket, prefix, day)) {
    const key = formatArchiveKey(name);
    if (!listed.has(key)) problems.push(`${key} is in the day's folder but not in the manifest`);
  }
  return problems;
}

/** Counter-signs, day by day from `from` to `to`, the manifests signed by a revoked key version. */
export async function resignManifests(options: ResignOptions): Promise<ResignSummary> {
  const { signer } = options;
  if (!isArchiveDay(options.from) || !isArchiveDay(options.to) || options.from > options.to) {
    throw permanentError('RESIGN_INVALID', `days ${options.from}..${options.to}: expected --from DAY --to DAY (YYYY-MM-DD, from <= to)`);
  }
  const revoked = new Set(options.revocations.map((r) => `${r.keyId}#${r.keyVersion}`));
  const current = await signer.currentVersion();
  if (revoked.has(`${signer.keyId}#${current}`)) {
    throw permanentError('RESIGN_KEY_REVOKED', `the current key version ${signer.keyId} v${current} is itself revoked: rotate first (agent-manager keys rotate), then resign`);
  }
  const days: ResignedDay[] = [];
  for (let day = options.from; day <= options.to; day = nextDay(day)) {
    const result = await resignDay(options, day, revoked, current);
    days.push(result);
    options.progress?.(result);
  }
  return { days, resigned: days.filter((d) => d.outcome === 'resigned').length, refused: days.filter((d) => d.outcome === 'refused').length };
}

async function resignDay(options: ResignOptions, day: string, revoked: ReadonlySet<string>, current: number): Promise<ResignedDay> {
  const { s3, bucket, prefix, signer } = options;
  const bytes = await objectBytes(s3, bucket, manifestKey(prefix, day));
  const sigBytes = await objectBytes(s3, bucket, signatureKey(prefix, day));
  if (bytes === undefined) return { day, outcome: 'no_manifest' };
  let manifest: AuditManifest;
  let signature: ManifestSignature | undefined;
  try {
    manifest = parseManifest(bytes);
    signature = sigBytes === undefined ? undefined : parseManifestSignature(sigBytes);
  } catch (error) {
    return { day, outcome: 'refused', problems: [errorMessage(error)] };
  }
  if (!canonicalManifestBytes(manifest).equals(bytes)) return { day, outcome: 'refused', problems: ['manifest.json is not in canonical form (RFC 8785)'] };
  // Which version signed it: the signature says; without one, the manifest's own claim.
  const signedBy = signature === undefined ? manifest.signingKey : { keyId: signature.keyId, version: signature.keyVersion };
  if (!revoked.has(`${signedBy.keyId}#${signedBy.version}`)) return { day, outcome: 'not_revoked', keyVersion: signedBy.version };
  const key = resignKey(prefix, day, current);
  if ((await objectBytes(s3, bucket, key)) !== undefined) return { day, outcome: 'already_resigned', keyVersion: current, key };
  const problems = await manifestProblems(s3, bucket, prefix, day, manifest);
  if (problems.length > 0) return { day, outcome: 'refused', problems };
  const envelope = await signer.sign(bytes, current);
  const counter: ManifestSignature = { ...envelope, signedAt: (options.now?.() ?? new Date()).toISOString(), counterSigns: signedBy.version };
  await putArchiveObject(s3, { bucket, key, body: canonicalSignatureBytes(counter), contentType: 'application/json' });
  const done = { day, outcome: 'resigned', revokedVersion: signedBy.version, keyVersion: envelope.keyVersion, key } as const;
  await options.resigned?.(done);
  return done;
}
