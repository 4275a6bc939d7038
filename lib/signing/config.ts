/**
 * Which signer a process uses, from its validated configuration (`loadConfig(signerConfigShape, env)`
 * after `loadServiceEnv`, so `VAULT_TOKEN_FILE` and `vault:` references are already resolved).
 *
 * - `AUDIT_SIGNER=local` (default): `AUDIT_SIGNING_KEY_FILE` (a keyring directory `v1.pem`, `v2.pem`, …,
 *   or a file of PKCS8 PEM key(s) or a raw 32-byte seed), or `AUDIT_SIGNING_KEY` (the key itself, e.g.
 *   a `vault:` reference to a KV secret); the envelopes name `AUDIT_SIGNING_KEY_ID`.
 * - `AUDIT_SIGNER=vault-transit`: `VAULT_ADDR`, `VAULT_TOKEN` (or `VAULT_TOKEN_FILE`), optional
 *   `VAULT_NAMESPACE`; `AUDIT_TRANSIT_MOUNT` (default `transit`) and `AUDIT_TRANSIT_KEY` (default
 *   `agent-manager-audit`, an ed25519 key).
 */
import { statSync } from 'node:fs';
import ms from 'ms';
import { z } from 'zod';
import { configFields } from '../config.ts';
import { permanentError } from '../errors.ts';
import { instrumentSigner, type SigningMetrics } from './instrument.ts';
import { createLocalSigner, type LocalKeySource } from './local.ts';
import type { Signer } from './signer.ts';
import { createTransitSigner } from './transit.ts';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const name = (what: string, fallback: string) => z.string().regex(NAME, `expected ${what} (letters, digits, '.', '_', '-')`).default(fallback);
const optionalText = z
  .string()
  .optional()
  .transform((value) => (value === undefined || value.trim() === '' ? undefined : value));

/** A duration such as `30d`, `12h`, `90m` (or milliseconds); `0` or `off` turns the schedule off. */
const duration = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((value, context) => {
      const text = value.trim();
      if (text === '0' || text === 'off') return 0;
      const parsed = ms(text as ms.StringValue) as number | undefined;
      if (typeof parsed !== 'number' || !Number.isFinite(parsed) || parsed <= 0) {
        context.addIssue({ code: 'custom', message: 'expected a duration such as 30d, 12h or 90m (or 0/off to disable)' });
        return z.NEVER;
      }
      return parsed;
    });

export const signerConfigShape = {
  AUDIT_SIGNER: z.enum(['local', 'vault-transit'], 'expected local or vault-transit').default('local'),
  /** Local: the keyring directory or key file (read by the signer itself, not a `<NAME>_FILE` secret). */
  AUDIT_SIGNING_KEY_FILE: optionalText,
  /** Local: the key itself (PKCS8 PEM or a base64/hex seed), usually a `vault:` reference. */
  AUDIT_SIGNING_KEY: optionalText,
  AUDIT_SIGNING_KEY_ID: name('a key id', 'agent-manager-audit-local'),
  AUDIT_TRANSIT_MOUNT: name('a Transit mount path', 'transit'),
  AUDIT_TRANSIT_KEY: name('a Transit key name', 'agent-manager-audit'),
  VAULT_ADDR: z.url('expected a URL, e.g. https://vault.internal:8200').optional(),
  VAULT_TOKEN: optionalText,
  VAULT_NAMESPACE: optionalText,
  /** Per Vault request. */
  AUDIT_SIGNING_TIMEOUT_MS: configFields.positiveInt(5_000),
  /** Age of the latest key version after which the scheduled rotation makes a new one. */
  AUDIT_KEY_ROTATION_INTERVAL: duration('30d'),
};

export type SignerConfig = z.infer<z.ZodObject<typeof signerConfigShape>>;

/** The combinations zod cannot see; each problem names its variable. */
export function signerConfigProblems(config: SignerConfig): string[] {
  if (config.AUDIT_SIGNER === 'local') {
    if (config.AUDIT_SIGNING_KEY_FILE !== undefined && config.AUDIT_SIGNING_KEY !== undefined) return ['AUDIT_SIGNING_KEY: set both it and AUDIT_SIGNING_KEY_FILE; set only one'];
    if (config.AUDIT_SIGNING_KEY_FILE === undefined && config.AUDIT_SIGNING_KEY === undefined) {
      return ['AUDIT_SIGNING_KEY_FILE: required with AUDIT_SIGNER=local (a keyring directory or key file; or set AUDIT_SIGNING_KEY, e.g. to a vault: reference), or set AUDIT_SIGNER=vault-transit'];
    }
    return [];
  }
  const problems: string[] = [];
  if (config.VAULT_ADDR === undefined) problems.push('VAULT_ADDR: required with AUDIT_SIGNER=vault-transit');
  if (config.VAULT_TOKEN === undefined) problems.push('VAULT_TOKEN: required with AUDIT_SIGNER=vault-transit (or set VAULT_TOKEN_FILE)');
  return problems;
}

/** Throws CONFIG_INVALID naming each variable of a combination that cannot work. */
export function checkSignerConfig(config: SignerConfig): SignerConfig {
  const problems = signerConfigProblems(config);
  if (problems.length > 0) throw permanentError('CONFIG_INVALID', `invalid configuration:\n  ${problems.join('\n  ')}`);
  return config;
}

/** A keyring path: a directory (also when it does not exist yet: `keys rotate` creates it) or a file. */
function localSource(path: string): LocalKeySource {
  try {
    return statSync(path).isDirectory() ? { kind: 'directory', path } : { kind: 'file', path };
  } catch {
    return { kind: 'directory', path };
  }
}

export interface CreateSignerOptions {
  /** Counts signatures and rotations (lib/metrics.ts). */
  readonly metrics?: SigningMetrics;
  /** Test seam for the Transit signer. */
  readonly fetch?: typeof fetch;
}

/** The signer the configuration names (checked with `checkSignerConfig`), instrumented when `metrics` is given. */
export function createSignerFromConfig(config: SignerConfig, options: CreateSignerOptions = {}): Signer {
  checkSignerConfig(config);
  const signer =
    config.AUDIT_SIGNER === 'vault-transit'
      ? createTransitSigner({
          address: config.VAULT_ADDR ?? '',
          token: config.VAULT_TOKEN ?? '',
          ...(config.VAULT_NAMESPACE !== undefined ? { namespace: config.VAULT_NAMESPACE } : {}),
          timeoutMs: config.AUDIT_SIGNING_TIMEOUT_MS,
          mount: config.AUDIT_TRANSIT_MOUNT,
          key: config.AUDIT_TRANSIT_KEY,
          ...(options.fetch !== undefined ? { fetch: options.fetch } : {}),
        })
      : createLocalSigner({
          keyId: config.AUDIT_SIGNING_KEY_ID,
          source: config.AUDIT_SIGNING_KEY_FILE !== undefined ? localSource(config.AUDIT_SIGNING_KEY_FILE) : { kind: 'value', value: config.AUDIT_SIGNING_KEY ?? '', name: 'AUDIT_SIGNING_KEY' },
        });
  return options.metrics === undefined ? signer : instrumentSigner(signer, options.metrics);
}
