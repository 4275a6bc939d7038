/**
 * The Vault Transit signer: the private key never leaves Vault. `transit/sign/<key>` signs (Ed25519
 * over the raw input, no prehash) with an explicit `key_version`; `transit/keys/<key>` gives
 * `latest_version` and each version's public key and creation time; `transit/keys/<key>/rotate`
 * adds a version. Errors: timeouts, an unreachable server, 429 and 5xx retryable; 403 and other 4xx
 * permanent. The token is never logged nor put in a message.
 */
import { z } from 'zod';
import { permanentError, retryableError } from '../errors.ts';
import { createVaultApi, vaultError, vaultFailureOf, type VaultApi, type VaultConnectionOptions } from '../vault.ts';
import type { PublicKeyVersion, SignatureEnvelope, Signer } from './signer.ts';

export interface TransitSignerOptions extends VaultConnectionOptions {
  /** Transit mount, e.g. `transit`. */
  readonly mount: string;
  /** Transit key name, e.g. `agent-manager-audit`; also the envelopes' `keyId`. */
  readonly key: string;
}

const keyInfoSchema = z.object({
  data: z.object({
    type: z.string(),
    latest_version: z.number().int().positive(),
    keys: z.record(
      z.string(),
      z.object({ public_key: z.string().optional(), creation_time: z.string().optional() }),
    ),
  }),
});
const signSchema = z.object({ data: z.object({ signature: z.string() }) });
/** `vault:v<N>:<base64>`. */
const TRANSIT_SIGNATURE = /^vault:v([1-9]\d*):([A-Za-z0-9+/]+={0,2})$/;

export function createTransitSigner(options: TransitSignerOptions): Signer {
  const api: VaultApi = createVaultApi(options);
  const { mount, key } = options;
  const keyPath = `${encodeURIComponent(mount)}/keys/${encodeURIComponent(key)}`;
  const context = { mount, key };

  /** A failed call's typed error; a missing key (Transit answers 400 or 404) is named as such. */
  function failed(error: unknown, what: string) {
    const failure = vaultFailureOf(error);
    if (failure.kind === 'status' && (failure.status === 404 || (failure.status === 400 && /key not found/i.test(failure.errors)))) {
      return permanentError('VAULT_TRANSIT_KEY_NOT_FOUND', `no Transit key ${mount}/${key} in Vault (${failure.status}): create it (type ed25519) or set AUDIT_TRANSIT_KEY${failure.errors}`, undefined, { ...context, status: failure.status });
    }
    return vaultError(api, error, what, context);
  }

  async function keyInfo() {
    let body: unknown;
    try {
      body = await api.read(keyPath);
    } catch (error) {
      throw failed(error, `reading the Transit key ${mount}/${key}`);
    }
    const parsed = keyInfoSchema.safeParse(body);
    if (!parsed.success) throw retryableError('VAULT_BAD_RESPONSE', `Vault's answer for the Transit key ${mount}/${key} is not a key description`, undefined, context);
    if (parsed.data.data.type !== 'ed25519') throw permanentError('SIGNING_KEY_INVALID', `the Transit key ${mount}/${key} is of type ${parsed.data.data.type}, expected ed25519`, undefined, context);
    return parsed.data.data;
  }

  return {
    keyId: key,
    kind: 'vault-transit',
    async currentVersion() {
      return (await keyInfo()).latest_version;
    },
    async sign(data: Uint8Array, version?: number): Promise<SignatureEnvelope> {
      const body: Record<string, unknown> = { input: Buffer.from(data).toString('base64') };
      if (version !== undefined) body.key_version = version;
      let answer: unknown;
      try {
        answer = await api.write(`${encodeURIComponent(mount)}/sign/${encodeURIComponent(key)}`, body);
      } catch (error) {
        const failure = vaultFailureOf(error);
        // OpenBao answers 500 (Vault 400) for a version above the latest: not an outage.
        if (version !== undefined && failure.kind === 'status' && (failure.status === 400 || failure.status === 500) && /requested version|key version|version for signing/i.test(failure.errors)) {
          throw permanentError('SIGNING_KEY_VERSION_UNKNOWN', `the Transit key ${mount}/${key} cannot sign with version ${version}${failure.errors}`, undefined, { ...context, version });
        }
        throw failed(error, `signing with the Transit key ${mount}/${key}`);
      }
      const parsed = signSchema.safeParse(answer);
      const match = parsed.success ? TRANSIT_SIGNATURE.exec(parsed.data.data.signature) : null;
      if (match === null) throw retryableError('VAULT_BAD_RESPONSE', `Vault's answer signing with ${mount}/${key} has no vault:v<N>: signature`, undefined, context);
      return { algorithm: 'ed25519', keyId: key, keyVersion: Number(match[1]), signature: match[2] ?? '' };
    },
    async publicKeys(): Promise<PublicKeyVersion[]> {
      const info = await keyInfo();
      return Object.entries(info.keys)
        .map(([version, entry]) => ({ version: Number(version), entry }))
        .filter(({ version, entry }) => Number.isInteger(version) && entry.public_key !== undefined)
        .sort((a, b) => a.version - b.version)
        .map(({ version, entry }) => ({ keyId: key, version, publicKey: entry.public_key ?? '', ...(entry.creation_time !== undefined ? { createdAt: entry.creation_time } : {}) }));
    },
    async rotate(): Promise<number> {
      try {
        await api.write(`${keyPath}/rotate`, {});
      } catch (error) {
        throw failed(error, `rotating the Transit key ${mount}/${key}`);
      }
      // Older Vaults answer 204 without the key: the version is read back.
      return (await keyInfo()).latest_version;
    },
  };
}
