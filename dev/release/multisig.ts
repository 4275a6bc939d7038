/**
 * Multisig release gating: M of N maintainers sign a release manifest (image digest, chart digest,
 * git commit) with Ed25519 keys, and the release workflow publishes only what `verify` accepts.
 *
 * Pure logic (no files, no process): the CLI (cli/release.ts) reads and writes the files. This is
 * release tooling run from a checkout, never loaded by a deployed service, hence dev/.
 *
 * - A key is identified by the SHA-256 of its public key (SPKI DER), not by its file name: two
 *   files holding one key would otherwise let one maintainer count twice.
 * - What is signed is a fixed domain prefix plus the manifest's canonical JSON, so a maintainer key
 *   never signs anything else by accident and whitespace or key order in the file do not matter.
 * - Verification fails closed: any bad signature in the set (unknown key, forged, over another
 *   manifest, the same key twice) fails it, even when enough good ones are there, because it means
 *   someone tampered with the set.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from 'node:crypto';
import { z } from 'zod';
import { canonicalJson } from '../../lib/audit.ts';
import { permanentError } from '../../lib/errors.ts';

export const MANIFEST_SCHEMA = 'agent-manager.release-manifest/v1';
export const SIGNATURE_SCHEMA = 'agent-manager.release-signature/v1';
/** Prefixed to the canonical manifest before signing (domain separation). */
const SIGNING_DOMAIN = 'agent-manager release manifest v1\n';

const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'a digest sha256:<64 lower-case hex>');
const manifestShape = z.strictObject({
  schema: z.literal(MANIFEST_SCHEMA),
  /** The git commit the image and chart were built from (SHA-1 or SHA-256 object name). */
  commit: z.string().regex(/^([0-9a-f]{40}|[0-9a-f]{64})$/, 'a full git commit (40 or 64 lower-case hex)'),
  /** The ref being released, e.g. refs/tags/v1.4.0 (informational, but signed). */
  ref: z.string().min(1).optional(),
  image: z.strictObject({ repository: z.string().min(1), digest }),
  chart: z.strictObject({ repository: z.string().min(1), version: z.string().min(1), digest }),
});
export type ReleaseManifest = z.infer<typeof manifestShape>;

const signatureShape = z.strictObject({
  schema: z.literal(SIGNATURE_SCHEMA),
  /** The signer's name as they gave it (for people; trust comes from keyId). */
  signer: z.string().min(1),
  keyId: digest,
  /** sha256 of the canonical manifest the signer saw: tells "another manifest" from "forged". */
  manifestDigest: digest,
  signature: z.base64(),
});
export type ReleaseSignature = z.infer<typeof signatureShape>;

export type ProblemCode =
  | 'RELEASE_MANIFEST_MISMATCH'
  | 'RELEASE_SIGNATURE_INVALID'
  | 'RELEASE_UNKNOWN_KEY'
  | 'RELEASE_DUPLICATE_SIGNATURE'
  | 'RELEASE_FORGED_SIGNATURE'
  | 'RELEASE_SIGNATURE_OTHER_MANIFEST'
  | 'RELEASE_TOO_FEW_SIGNATURES'
  | 'RELEASE_BREAK_GLASS_KEYS_NOT_SEPARATE'
  | 'RELEASE_BREAK_GLASS_THRESHOLD_TOO_LOW';

export interface Problem {
  readonly code: ProblemCode;
  readonly message: string;
}

/** One trusted public key: its name is the file it came from (alice.pub → alice). */
export interface TrustedKey {
  readonly name: string;
  readonly keyId: string;
  readonly key: KeyObject;
}

/** Trusted keys by keyId. */
export type KeySet = ReadonlyMap<string, TrustedKey>;

// ---- manifests ----------------------------------------------------------------------------------

function issues(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
}

export interface ManifestInput {
  readonly commit: string;
  readonly ref?: string;
  readonly imageRepository: string;
  readonly imageDigest: string;
  readonly chartRepository: string;
  readonly chartVersion: string;
  readonly chartDigest: string;
}

/** A manifest from its parts; RELEASE_MANIFEST_INVALID naming each bad field. */
export function buildManifest(input: ManifestInput): ReleaseManifest {
  const parsed = manifestShape.safeParse({
    schema: MANIFEST_SCHEMA,
    commit: input.commit,
    ref: input.ref,
    image: { repository: input.imageRepository, digest: input.imageDigest },
    chart: { repository: input.chartRepository, version: input.chartVersion, digest: input.chartDigest },
  });
  if (!parsed.success) throw permanentError('RELEASE_MANIFEST_INVALID', `release manifest: ${issues(parsed.error)}`);
  return parsed.data;
}

/** A manifest file's text; RELEASE_MANIFEST_INVALID when it is not JSON or not a v1 manifest. */
export function parseManifest(text: string, source = 'the manifest'): ReleaseManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw permanentError('RELEASE_MANIFEST_INVALID', `${source} is not JSON`, error);
  }
  const parsed = manifestShape.safeParse(json);
  if (!parsed.success) throw permanentError('RELEASE_MANIFEST_INVALID', `${source} is not a ${MANIFEST_SCHEMA} manifest: ${issues(parsed.error)}`);
  return parsed.data;
}

/** The manifest's canonical JSON: what its file holds and what a signature covers. */
export function canonicalManifest(manifest: ReleaseManifest): string {
  return canonicalJson(manifest);
}

export function manifestDigest(manifest: ReleaseManifest): string {
  return `sha256:${createHash('sha256').update(canonicalManifest(manifest)).digest('hex')}`;
}

const signedBytes = (manifest: ReleaseManifest) => Buffer.from(SIGNING_DOMAIN + canonicalManifest(manifest), 'utf8');

// ---- keys ---------------------------------------------------------------------------------------

export function keyIdOf(publicKey: KeyObject): string {
  return `sha256:${createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex')}`;
}

export interface GeneratedKey {
  readonly keyId: string;
  /** PKCS#8 PEM: stays with the maintainer. */
  readonly privatePem: string;
  /** SPKI PEM: goes into the trusted keys folder. */
  readonly publicPem: string;
}

export function generateKey(): GeneratedKey {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  return {
    keyId: keyIdOf(publicKey),
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/**
 * The trusted keys from PEM files; RELEASE_KEY_INVALID for a file that is not an Ed25519 public key,
 * RELEASE_DUPLICATE_KEY for one key under two names (it would count twice).
 */
export function loadKeySet(files: readonly { readonly name: string; readonly pem: string }[]): KeySet {
  const keys = new Map<string, TrustedKey>();
  for (const file of files) {
    let key: KeyObject;
    try {
      key = createPublicKey(file.pem);
    } catch (error) {
      throw permanentError('RELEASE_KEY_INVALID', `key ${file.name}: not a PEM public key`, error);
    }
    if (key.asymmetricKeyType !== 'ed25519') throw permanentError('RELEASE_KEY_INVALID', `key ${file.name}: an ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519`);
    const keyId = keyIdOf(key);
    const other = keys.get(keyId);
    if (other) throw permanentError('RELEASE_DUPLICATE_KEY', `keys ${other.name} and ${file.name} are the same key (${keyId}): one maintainer would count twice`);
    keys.set(keyId, { name: file.name, keyId, key });
  }
  return keys;
}

// ---- signing ------------------------------------------------------------------------------------

/** The signer's signature over the manifest; RELEASE_KEY_INVALID when the PEM is not an Ed25519 private key. */
export function signManifest(manifest: ReleaseManifest, privatePem: string, signer: string): ReleaseSignature {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(privatePem);
  } catch (error) {
    throw permanentError('RELEASE_KEY_INVALID', `the signing key of ${signer} is not a PEM private key`, error);
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw permanentError('RELEASE_KEY_INVALID', `the signing key of ${signer} is not an Ed25519 key`);
  return {
    schema: SIGNATURE_SCHEMA,
    signer,
    keyId: keyIdOf(createPublicKey(privateKey)),
    manifestDigest: manifestDigest(manifest),
    // Ed25519 takes no separate digest algorithm: null.
    signature: sign(null, signedBytes(manifest), privateKey).toString('base64'),
  };
}

// ---- verification -------------------------------------------------------------------------------

/** What the release actually is, as the workflow resolved it from the registry and git. */
export interface ExpectedRelease {
  readonly imageDigest?: string;
  readonly chartDigest?: string;
  readonly commit?: string;
}

export interface VerifyInput {
  readonly manifest: ReleaseManifest;
  /** Each signature file: where it came from and its text. */
  readonly signatures: readonly { readonly file: string; readonly text: string }[];
  readonly keys: KeySet;
  readonly threshold: number;
  readonly expect?: ExpectedRelease;
}

export interface AcceptedSignature {
  readonly file: string;
  readonly name: string;
  readonly keyId: string;
}

export interface VerifyResult {
  readonly ok: boolean;
  readonly manifestDigest: string;
  readonly threshold: number;
  /** Good signatures from distinct trusted keys. */
  readonly accepted: readonly AcceptedSignature[];
  readonly problems: readonly Problem[];
}

/** RELEASE_THRESHOLD_INVALID unless 1 ≤ threshold ≤ the number of keys (a threshold nobody can reach is a mistake). */
export function checkThreshold(threshold: number, keys: KeySet, what = 'threshold'): void {
  if (!Number.isInteger(threshold) || threshold < 1) throw permanentError('RELEASE_THRESHOLD_INVALID', `the ${what} must be a whole number ≥ 1, not ${threshold}`);
  if (threshold > keys.size) throw permanentError('RELEASE_THRESHOLD_INVALID', `the ${what} ${threshold} is more than the ${keys.size} trusted key(s): it can never be met`);
}

function manifestMismatches(manifest: ReleaseManifest, expect: ExpectedRelease): Problem[] {
  const pairs: [string, string | undefined, string][] = [
    ['image digest', expect.imageDigest, manifest.image.digest],
    ['chart digest', expect.chartDigest, manifest.chart.digest],
    ['commit', expect.commit, manifest.commit],
  ];
  return pairs
    .filter(([, expected, signed]) => expected !== undefined && expected !== signed)
    .map(([what, expected, signed]) => ({
      code: 'RELEASE_MANIFEST_MISMATCH' as const,
      message: `the manifest's ${what} is ${signed}, but what is being released has ${expected ?? ''}: the signatures are for something else`,
    }));
}

/** Checks every signature file against the trusted keys and the threshold; never throws on a bad signature. */
export function verifyRelease(input: VerifyInput): VerifyResult {
  checkThreshold(input.threshold, input.keys);
  const { manifest, keys, threshold } = input;
  const digestOfManifest = manifestDigest(manifest);
  const bytes = signedBytes(manifest);
  const problems: Problem[] = input.expect ? manifestMismatches(manifest, input.expect) : [];
  const good = new Map<string, AcceptedSignature[]>();

  for (const { file, text } of input.signatures) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      problems.push({ code: 'RELEASE_SIGNATURE_INVALID', message: `${file}: not JSON` });
      continue;
    }
    const parsed = signatureShape.safeParse(json);
    if (!parsed.success) {
      problems.push({ code: 'RELEASE_SIGNATURE_INVALID', message: `${file}: not a ${SIGNATURE_SCHEMA} signature: ${issues(parsed.error)}` });
      continue;
    }
    const signature = parsed.data;
    const key = keys.get(signature.keyId);
    if (!key) {
      problems.push({ code: 'RELEASE_UNKNOWN_KEY', message: `${file}: signed by "${signature.signer}" with key ${signature.keyId}, which is not one of the ${keys.size} trusted keys` });
      continue;
    }
    if (signature.manifestDigest !== digestOfManifest) {
      problems.push({
        code: 'RELEASE_SIGNATURE_OTHER_MANIFEST',
        message: `${file}: ${key.name} signed manifest ${signature.manifestDigest}, not this one (${digestOfManifest}): the manifest changed after signing`,
      });
      continue;
    }
    if (!verify(null, bytes, key.key, Buffer.from(signature.signature, 'base64'))) {
      problems.push({ code: 'RELEASE_FORGED_SIGNATURE', message: `${file}: the signature does not verify with ${key.name}'s key (${key.keyId}): forged or corrupted` });
      continue;
    }
    const list = good.get(key.keyId) ?? [];
    list.push({ file, name: key.name, keyId: key.keyId });
    good.set(key.keyId, list);
  }

  for (const list of good.values()) {
    if (list.length > 1) {
      problems.push({
        code: 'RELEASE_DUPLICATE_SIGNATURE',
        message: `${list[0]?.name ?? '?'} signed ${list.length} times (${list.map((s) => s.file).join(', ')}): one key counts once; remove the extra files`,
      });
    }
  }
  const accepted = [...good.values()].flatMap((list) => list.slice(0, 1));
  if (accepted.length < threshold) {
    const who = accepted.length === 0 ? 'none' : accepted.map((s) => s.name).join(', ');
    problems.push({ code: 'RELEASE_TOO_FEW_SIGNATURES', message: `${accepted.length} valid signature(s) from distinct trusted keys (${who}); ${threshold} of ${keys.size} are required` });
  }
  return { ok: problems.length === 0, manifestDigest: digestOfManifest, threshold, accepted, problems };
}

// ---- break-glass --------------------------------------------------------------------------------

/**
 * The emergency path's own rules, checked before its signatures: its key set shares no key with the
 * maintainers' set, and its threshold is higher than theirs (so losing the maintainers' quorum, or
 * one of their keys, never makes an emergency release easier than a normal one).
 */
export function breakGlassPolicyProblems(breakGlass: { keys: KeySet; threshold: number }, normal: { keys: KeySet; threshold: number }): Problem[] {
  const problems: Problem[] = [];
  const shared = [...breakGlass.keys.values()].filter((key) => normal.keys.has(key.keyId));
  if (shared.length > 0) {
    problems.push({
      code: 'RELEASE_BREAK_GLASS_KEYS_NOT_SEPARATE',
      message: `break-glass key(s) ${shared.map((k) => k.name).join(', ')} are also maintainer keys: the emergency key set must be separate`,
    });
  }
  if (breakGlass.threshold <= normal.threshold) {
    problems.push({
      code: 'RELEASE_BREAK_GLASS_THRESHOLD_TOO_LOW',
      message: `the break-glass threshold ${breakGlass.threshold} must be higher than the normal threshold ${normal.threshold}`,
    });
  }
  return problems;
}

export interface BreakGlassRecord {
  readonly time: string;
  readonly action: 'release.break_glass';
  readonly outcome: 'accepted' | 'refused';
  readonly actor: string;
  readonly reason: string;
  readonly manifestDigest: string;
  readonly manifest: ReleaseManifest;
  readonly threshold: number;
  readonly signers: readonly { readonly name: string; readonly keyId: string }[];
  readonly problems: readonly Problem[];
}

/** The audit record of one break-glass verification, accepted or refused (both are kept). */
export function breakGlassRecord(result: VerifyResult, manifest: ReleaseManifest, meta: { actor: string; reason: string; time: Date }): BreakGlassRecord {
  return {
    time: meta.time.toISOString(),
    action: 'release.break_glass',
    outcome: result.ok ? 'accepted' : 'refused',
    actor: meta.actor,
    reason: meta.reason,
    manifestDigest: result.manifestDigest,
    manifest,
    threshold: result.threshold,
    signers: result.accepted.map((s) => ({ name: s.name, keyId: s.keyId })),
    problems: result.problems,
  };
}
