/**
 * The signed daily manifest of the audit archive (the design is /work/brief's integrity spec; the
 * README's "Audit integrity" section is the auditor's copy). When a day is closed on every partition
 * the archiver writes, next to the day's files and under Object Lock:
 *
 * - `<root>/dt=DAY/manifest.json`: the RFC 8785 canonical JSON of an `AuditManifest` (every file of
 *   the day per partition with its version id, SHA-256, offsets, count and first/last chain value; the
 *   chain value before the day on each partition; the previous day's manifest hash; the signing key);
 * - `<root>/dt=DAY/manifest.json.sig`: the canonical JSON of a `ManifestSignature`, a detached
 *   Ed25519 signature over the exact bytes of manifest.json;
 * - `<root>/dt=DAY/manifest.json.resign-v<N>.sig`: a counter-signature by key version N of a manifest
 *   whose signing version was revoked (`agent-manager audit resign`), never overwriting anything.
 *
 * None of these is a `p=<n>/` file: the reader, reindex and replay skip them (layout.ts parses only
 * archive file keys).
 */
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { z } from 'zod';
import { errorMessage, permanentError } from '../errors.ts';
import type { SignatureEnvelope } from '../signing/signer.ts';
import { isArchiveDay } from './layout.ts';

export const MANIFEST_FORMAT = 'agent-manager.audit-manifest/v1';
export const MANIFEST_NAME = 'manifest.json';

export interface ManifestFile {
  readonly key: string;
  /** The S3 version id of the archived bytes (null on an unversioned bucket). */
  readonly versionId: string | null;
  /** Base64 SHA-256 of the object, as S3's x-amz-checksum-sha256. */
  readonly sha256: string;
  readonly firstOffset: number;
  readonly lastOffset: number;
  readonly eventCount: number;
  /** Hex chain values of the file's first and last records. */
  readonly firstChain: string;
  readonly lastChain: string;
}

export interface ManifestPartition {
  readonly partition: number;
  readonly eventCount: number;
  /** Hex chain value before the day's first record on the partition (GENESIS_CHAIN when none came before). */
  readonly chainBefore: string;
  /** In firstOffset order. */
  readonly files: readonly ManifestFile[];
}

export interface ManifestLink {
  readonly day: string;
  readonly key: string;
  /** Hex SHA-256 of that manifest.json's bytes. */
  readonly sha256: string;
}

export interface ManifestSigningKey {
  readonly keyId: string;
  readonly version: number;
  readonly algorithm: 'ed25519';
}

export interface AuditManifest {
  readonly format: typeof MANIFEST_FORMAT;
  readonly bucket: string;
  readonly root: string;
  readonly day: string;
  /** In partition order; every partition of the topic, including those with no file that day. */
  readonly partitions: readonly ManifestPartition[];
  /** The previous day's manifest (null for the archive's first signed day). */
  readonly previousManifest: ManifestLink | null;
  readonly signingKey: ManifestSigningKey;
  readonly createdAt: string;
}

/** manifest.json.sig (and the resign counter-signatures): the envelope plus when it was signed. */
export interface ManifestSignature extends SignatureEnvelope {
  readonly signedAt: string;
  /** Only on a counter-signature: the revoked key version whose signature this one stands in for. */
  readonly counterSigns?: number;
}

function checkRoot(root: string): void {
  if (root === '' || root.startsWith('/') || root.endsWith('/')) {
    throw permanentError('ARCHIVE_PREFIX_INVALID', `archive root '${root}': expected a non-empty key prefix without a leading or trailing slash`);
  }
}

function dayFolder(root: string, day: string): string {
  checkRoot(root);
  if (!isArchiveDay(day)) throw permanentError('ARCHIVE_DAY_INVALID', `not a day: '${day}' (expected YYYY-MM-DD)`);
  return `${root}/dt=${day}/`;
}

export function manifestKey(root: string, day: string): string {
  return `${dayFolder(root, day)}${MANIFEST_NAME}`;
}

export function signatureKey(root: string, day: string): string {
  return `${manifestKey(root, day)}.sig`;
}

/** The counter-signature of `day`'s manifest by key version `version`. */
export function resignKey(root: string, day: string, version: number): string {
  if (!Number.isInteger(version) || version < 1) throw permanentError('MANIFEST_INVALID', `not a key version: ${version}`);
  return `${manifestKey(root, day)}.resign-v${version}.sig`;
}

const RESIGN = /\/manifest\.json\.resign-v([1-9]\d*)\.sig$/;

/** The key version of a counter-signature's object key, or undefined for any other key. */
export function parseResignKey(key: string): number | undefined {
  const match = RESIGN.exec(key);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

/** Whether `key` is one of the manifest objects of a day folder (manifest, signature, counter-signature). */
export function isManifestObjectKey(key: string): boolean {
  return /\/dt=\d{4}-\d{2}-\d{2}\/manifest\.json(\.sig|\.resign-v[1-9]\d*\.sig)?$/.test(key);
}

function canonicalBytes(value: unknown, what: string): Buffer {
  const text = canonicalize(value);
  if (text === undefined) throw permanentError('MANIFEST_INVALID', `${what} has no JSON form`);
  return Buffer.from(text, 'utf8');
}

/** The exact bytes of manifest.json: RFC 8785 (JCS) canonical JSON, UTF-8. */
export function canonicalManifestBytes(manifest: AuditManifest): Buffer {
  return canonicalBytes(manifest, 'the manifest');
}

/** The exact bytes of a .sig object. */
export function canonicalSignatureBytes(signature: ManifestSignature): Buffer {
  return canonicalBytes(signature, 'the signature');
}

/** Hex SHA-256 of manifest bytes: what the next day's `previousManifest.sha256` names. */
export function manifestSha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

const hex32 = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lower-case hex characters');
const base64Sha256 = z.string().regex(/^[A-Za-z0-9+/]{43}=$/, 'expected a base64 SHA-256');
const offset = z.number().int().nonnegative().refine(Number.isSafeInteger, 'not a safe integer');
const day = z.string().refine(isArchiveDay, 'expected a day YYYY-MM-DD');
const isoTime = z.iso.datetime({ offset: true });

const fileSchema = z.strictObject({
  key: z.string().min(1),
  versionId: z.string().min(1).nullable(),
  sha256: base64Sha256,
  firstOffset: offset,
  lastOffset: offset,
  eventCount: z.number().int().positive(),
  firstChain: hex32,
  lastChain: hex32,
}).refine((f) => f.lastOffset >= f.firstOffset, 'lastOffset before firstOffset');

const partitionSchema = z.strictObject({
  partition: z.number().int().nonnegative(),
  eventCount: z.number().int().nonnegative(),
  chainBefore: hex32,
  files: z.array(fileSchema),
});

const manifestSchema = z.strictObject({
  format: z.literal(MANIFEST_FORMAT),
  bucket: z.string().min(1),
  root: z.string().min(1),
  day,
  partitions: z.array(partitionSchema),
  previousManifest: z.strictObject({ day, key: z.string().min(1), sha256: hex32 }).nullable(),
  signingKey: z.strictObject({ keyId: z.string().min(1), version: z.number().int().positive(), algorithm: z.literal('ed25519') }),
  createdAt: isoTime,
});

const signatureSchema = z.strictObject({
  algorithm: z.literal('ed25519'),
  keyId: z.string().min(1),
  keyVersion: z.number().int().positive(),
  signature: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, 'expected a base64 64-byte Ed25519 signature'),
  signedAt: isoTime,
  counterSigns: z.number().int().positive().optional(),
});

function parseJson(bytes: Uint8Array | string, what: string): unknown {
  try {
    return JSON.parse(typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8')) as unknown;
  } catch (error) {
    throw permanentError('MANIFEST_INVALID', `${what} is not JSON: ${errorMessage(error)}`, error);
  }
}

/**
 * Reads manifest.json. Checks the shape (zod), not the content against the archive (that is
 * `audit verify`'s job) nor that the bytes are canonical (compare with canonicalManifestBytes).
 */
export function parseManifest(bytes: Uint8Array | string): AuditManifest {
  const result = manifestSchema.safeParse(parseJson(bytes, 'manifest.json'));
  if (!result.success) throw permanentError('MANIFEST_INVALID', `manifest.json is not an ${MANIFEST_FORMAT} manifest: ${z.prettifyError(result.error)}`, result.error);
  return result.data;
}

/** Reads a manifest.json.sig or counter-signature object. */
export function parseManifestSignature(bytes: Uint8Array | string): ManifestSignature {
  const result = signatureSchema.safeParse(parseJson(bytes, 'the manifest signature'));
  if (!result.success) throw permanentError('MANIFEST_INVALID', `not a manifest signature: ${z.prettifyError(result.error)}`, result.error);
  const { counterSigns, ...rest } = result.data;
  return counterSigns === undefined ? rest : { ...rest, counterSigns };
}
