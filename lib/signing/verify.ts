/**
 * Offline signature checks: what an auditor does with the published public keys alone (no Vault, no
 * database). Pure node:crypto; an Ed25519 public key is the raw 32 bytes, wrapped in its SPKI DER.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { permanentError } from '../errors.ts';
import type { PublicKeyVersion, SignatureEnvelope } from './signer.ts';

/** The fixed SPKI DER header of an Ed25519 public key (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** The KeyObject of a raw 32-byte Ed25519 public key given in base64; undefined when it is not one. */
export function ed25519PublicKey(base64: string): KeyObject | undefined {
  const raw = Buffer.from(base64, 'base64');
  if (raw.length !== 32 || raw.toString('base64') !== base64.replace(/\s+/g, '')) return undefined;
  try {
    return createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, raw]), format: 'der', type: 'spki' });
  } catch {
    return undefined;
  }
}

/** The raw 32-byte public key (base64) of an Ed25519 KeyObject (public or private). */
export function rawPublicKey(key: KeyObject): string {
  const der = (key.type === 'public' ? key : createPublicKey(key)).export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32).toString('base64');
}

/** The published key the envelope names (same keyId and version), if any. */
export function findPublicKey(envelope: Pick<SignatureEnvelope, 'keyId' | 'keyVersion'>, publicKeys: readonly PublicKeyVersion[]): PublicKeyVersion | undefined {
  return publicKeys.find((key) => key.keyId === envelope.keyId && key.version === envelope.keyVersion);
}

/**
 * True when `envelope` is a valid Ed25519 signature of exactly `data` by the key version it names.
 * False for a bad signature, a key not in `publicKeys` (tell the two apart with `findPublicKey`), or
 * a malformed key or signature. Revocation is not this function's business (lib/signing/revocations.ts).
 */
export function verifySignature(data: Uint8Array, envelope: SignatureEnvelope, publicKeys: readonly PublicKeyVersion[]): boolean {
  if (envelope.algorithm !== 'ed25519') return false;
  const published = findPublicKey(envelope, publicKeys);
  if (published === undefined) return false;
  const key = ed25519PublicKey(published.publicKey);
  const signature = Buffer.from(envelope.signature, 'base64');
  if (key === undefined || signature.length !== 64) return false;
  // Ed25519 takes no digest argument: null.
  return verify(null, data, key, signature);
}

const envelopeSchema = z.object({
  algorithm: z.literal('ed25519'),
  keyId: z.string().min(1),
  keyVersion: z.number().int().positive(),
  signature: z.string().min(1),
});

/** A `SignatureEnvelope` from parsed JSON (a `.sig` object); extra fields (`signedAt`, `counterSigns`) are ignored. Throws SIGNATURE_MALFORMED. */
export function parseSignatureEnvelope(value: unknown): SignatureEnvelope {
  const result = envelopeSchema.safeParse(value);
  if (!result.success) throw permanentError('SIGNATURE_MALFORMED', `not a signature envelope: ${result.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return result.data;
}

const publicKeySchema = z.object({
  keyId: z.string().min(1),
  version: z.number().int().positive(),
  publicKey: z.string().refine((value) => ed25519PublicKey(value) !== undefined, 'expected the base64 of a raw 32-byte Ed25519 public key'),
  createdAt: z.string().optional(),
});

/** A published key version with its revocation, as `agent-manager keys public --json` writes it. */
export interface PublishedKeyVersion extends PublicKeyVersion {
  readonly revoked?: { readonly at: string; readonly reason: string } | undefined;
}

/** What `agent-manager keys public --json` prints: the file an auditor verifies with (`audit verify --public-keys FILE`). */
export interface PublicKeysDocument {
  readonly format: 'agent-manager.public-keys/v1';
  readonly algorithm: 'ed25519';
  readonly keys: readonly PublishedKeyVersion[];
}

const documentSchema = z.union([
  z.object({
    format: z.literal('agent-manager.public-keys/v1'),
    algorithm: z.literal('ed25519'),
    keys: z.array(publicKeySchema.extend({ revoked: z.object({ at: z.string(), reason: z.string() }).optional() })),
  }),
  // A bare array of versions (what `Signer.publicKeys()` returns, as JSON).
  z.array(publicKeySchema),
]);

/** The public keys of a file written by `keys public --json` (or a bare JSON array of versions). Throws PUBLIC_KEYS_INVALID. */
export function parsePublicKeysDocument(text: string): PublishedKeyVersion[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw permanentError('PUBLIC_KEYS_INVALID', 'the public keys file is not JSON (write it with `agent-manager keys public --json`)');
  }
  const result = documentSchema.safeParse(json);
  if (!result.success) throw permanentError('PUBLIC_KEYS_INVALID', `not a public keys file: ${result.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return Array.isArray(result.data) ? result.data : result.data.keys;
}
