/**
 * The signing interface the audit archiver (manifests), `audit resign` and `audit verify` share.
 * Two implementations: a local Ed25519 keyring (development, tests) and Vault Transit (production);
 * see `createSignerFromConfig` in ./config.ts. Signatures are detached, over exact bytes, and
 * checkable offline with a version's published public key alone (./verify.ts).
 */
export type SigningAlgorithm = 'ed25519';

/** A detached signature over exact bytes. `signature` is base64 of the raw 64-byte Ed25519 signature. */
export interface SignatureEnvelope {
  readonly algorithm: SigningAlgorithm;
  /** e.g. 'agent-manager-audit' (Transit key name, or the local key's id). */
  readonly keyId: string;
  /** 1, 2, ... */
  readonly keyVersion: number;
  readonly signature: string;
}

/** One version's public key: base64 of the raw 32-byte Ed25519 public key. */
export interface PublicKeyVersion {
  readonly keyId: string;
  readonly version: number;
  readonly publicKey: string;
  readonly createdAt?: string;
}

export interface Signer {
  readonly keyId: string;
  readonly kind: 'local' | 'vault-transit';
  /** The version sign() would use now (Transit: latest_version). */
  currentVersion(): Promise<number>;
  /** Signs with `version` (default: current). Throws AppError: retryable when Vault is unreachable/5xx. */
  sign(data: Uint8Array, version?: number): Promise<SignatureEnvelope>;
  /** Every version's public key, oldest first. */
  publicKeys(): Promise<PublicKeyVersion[]>;
  /** Creates a new version and returns its number. */
  rotate(): Promise<number>;
}
