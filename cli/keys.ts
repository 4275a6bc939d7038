import { Command, CommanderError } from 'commander';
import { z } from 'zod';
import { databaseConfigShape, loadConfig } from '../lib/config.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import { createPool } from '../lib/db/pool.ts';
import { permanentError } from '../lib/errors.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { serviceConfigShape, topicNames } from '../lib/service/context.ts';
import { createSignerFromConfig, signerConfigShape } from '../lib/signing/config.ts';
import { listRevocations, revokeKeyVersion, type Revocation } from '../lib/signing/revocations.ts';
import type { Signer } from '../lib/signing/signer.ts';
import { ed25519PublicKey, type PublicKeysDocument, type PublishedKeyVersion } from '../lib/signing/verify.ts';
import { resolvedServiceEnv } from './services.ts';

type Env = Record<string, string | undefined>;

/** Where the revocations live (optional for list/public: without it they are not marked). */
const revocationsConfigShape = { ...databaseConfigShape, DATABASE_SCHEMA: serviceConfigShape.DATABASE_SCHEMA };
/** `keys revoke` also writes the audit event through the outbox (encoded with the registry's schema). */
const revokeConfigShape = { ...revocationsConfigShape, SCHEMA_REGISTRY_URL: z.url('expected a URL'), TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX };

function signerOf(env: Env): Signer {
  return createSignerFromConfig(loadConfig(signerConfigShape, env));
}

/** The revocations of `keyId`, or undefined when no database is configured. */
async function revocationsOf(env: Env, keyId: string): Promise<Revocation[] | undefined> {
  if (env.DATABASE_URL === undefined || env.DATABASE_URL === '') return undefined;
  const config = loadConfig(revocationsConfigShape, env);
  const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 1 });
  try {
    return await listRevocations(pool, keyId);
  } finally {
    await pool.end();
  }
}

/** Every version's public key, with its revocation when known: `keys public --json`. */
export function publicKeysDocument(keys: readonly PublishedKeyVersion[]): PublicKeysDocument {
  return { format: 'agent-manager.public-keys/v1', algorithm: 'ed25519', keys };
}

async function publishedKeys(env: Env): Promise<{ signer: Signer; keys: PublishedKeyVersion[]; current: number | undefined; revocationsKnown: boolean }> {
  const signer = signerOf(env);
  const versions = await signer.publicKeys();
  const revocations = await revocationsOf(env, signer.keyId);
  const keys = versions.map((key) => {
    const revocation = revocations?.find((r) => r.keyVersion === key.version);
    return revocation === undefined ? { ...key } : { ...key, revoked: { at: revocation.revokedAt.toISOString(), reason: revocation.reason } };
  });
  return { signer, keys, current: versions.at(-1)?.version, revocationsKnown: revocations !== undefined };
}

/** The table `keys list` prints. */
export function formatKeyTable(keys: readonly PublishedKeyVersion[], current: number | undefined): string[] {
  if (keys.length === 0) return ['no key versions (create the first with `agent-manager keys rotate`)'];
  const header = ['KEY', 'VERSION', 'CREATED', 'STATUS', 'PUBLIC KEY (base64, raw Ed25519)'];
  const rows = keys.map((k) => [
    k.keyId,
    String(k.version),
    k.createdAt ?? '-',
    k.revoked !== undefined ? `REVOKED ${k.revoked.at}: ${k.revoked.reason}` : k.version === current ? 'current' : 'valid',
    k.publicKey,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  return [line(header), ...rows.map(line)];
}

const NO_REVOCATIONS = 'keys: revocations not read (DATABASE_URL not set): revoked versions are not marked';

export function registerKeysCommands(program: Command, setExitCode: (code: number) => void): void {
  const keys = program
    .command('keys')
    .summary('list, publish, rotate and revoke the audit signing key')
    .description(
      'The key that signs the audit manifests: Vault Transit (AUDIT_SIGNER=vault-transit, VAULT_ADDR, VAULT_TOKEN, AUDIT_TRANSIT_KEY) or a local Ed25519 keyring ' +
        '(AUDIT_SIGNER=local, AUDIT_SIGNING_KEY_FILE). Revocations are in Postgres (DATABASE_URL, DATABASE_SCHEMA).',
    )
    .exitOverride((error) => {
      throw error.exitCode === 0 ? error : new CommanderError(2, error.code, error.message);
    });

  keys
    .command('list')
    .description('Every version of the signing key, oldest first: creation time, status (current, valid, REVOKED with when and why) and public key.')
    .option('--json', 'one JSON document: {keyId, signer, currentVersion, revocationsChecked, keys}')
    .action(async (options: { json?: boolean }) => {
      const env = await resolvedServiceEnv();
      const { signer, keys: published, current, revocationsKnown } = await publishedKeys(env);
      if (!revocationsKnown) console.error(NO_REVOCATIONS);
      if (options.json === true) {
        console.log(JSON.stringify({ keyId: signer.keyId, signer: signer.kind, currentVersion: current ?? null, revocationsChecked: revocationsKnown, keys: published.map((k) => ({ ...k, current: k.version === current })) }, null, 2));
      } else {
        for (const line of formatKeyTable(published, current)) console.log(line);
      }
      setExitCode(0);
    });

  keys
    .command('public')
    .description(
      'The public key of every version, for an auditor: PEM (SubjectPublicKeyInfo; `openssl pkeyutl -verify` takes it), or with --json the file ' +
        '`agent-manager audit verify --public-keys FILE` reads (revoked versions marked).',
    )
    .option('--json', '{format, algorithm, keys: [{keyId, version, publicKey, createdAt, revoked?}]}')
    .action(async (options: { json?: boolean }) => {
      const env = await resolvedServiceEnv();
      const { keys: published, revocationsKnown } = await publishedKeys(env);
      if (!revocationsKnown) console.error(NO_REVOCATIONS);
      if (options.json === true) {
        console.log(JSON.stringify(publicKeysDocument(published), null, 2));
      } else {
        for (const key of published) {
          const pem = ed25519PublicKey(key.publicKey)?.export({ format: 'pem', type: 'spki' }).toString() ?? '';
          const status = key.revoked !== undefined ? `, REVOKED ${key.revoked.at}: ${key.revoked.reason}` : '';
          console.log(`# ${key.keyId} version ${key.version}${key.createdAt !== undefined ? ` (created ${key.createdAt}${status})` : status ? ` (${status.slice(2)})` : ''}`);
          process.stdout.write(pem);
        }
      }
      setExitCode(0);
    });

  keys
    .command('rotate')
    .description('Create a new version of the signing key (Transit: transit/keys/<key>/rotate; local: the next file of the keyring). New signatures use it; older versions still verify.')
    .action(async () => {
      const signer = signerOf(await resolvedServiceEnv());
      const version = await signer.rotate();
      console.log(`keys: ${signer.keyId} rotated (${signer.kind}): version ${version} signs from now on`);
      setExitCode(0);
    });

  keys
    .command('revoke')
    .argument('<version>', 'the key version to declare compromised')
    .requiredOption('--reason <text>', 'why (recorded, and in the audit event)')
    .option('--actor <name>', 'who (recorded, and in the audit event)', process.env.USER ?? 'operator')
    .description(
      'Mark a key version compromised (audited as signing_key.revoked). `audit verify` then reports the manifests it signed, and `audit resign` counter-signs them ' +
        'with the current version. Revoking the current version: run `keys rotate` next.',
    )
    .action(async (text: string, options: { reason: string; actor: string }, command: Command) => {
      const version = Number(text);
      if (!Number.isInteger(version) || version < 1) return command.error(`error: <version> expects a whole number from 1 (got '${text}')`, { exitCode: 2, code: 'agent-manager.usage' });
      if (options.reason.trim() === '') return command.error('error: --reason must say why', { exitCode: 2, code: 'agent-manager.usage' });
      const env = await resolvedServiceEnv();
      const signer = signerOf(env);
      const versions = await signer.publicKeys();
      if (!versions.some((k) => k.version === version)) {
        throw permanentError('SIGNING_KEY_VERSION_UNKNOWN', `${signer.keyId} has no version ${version} (versions: ${versions.map((k) => k.version).join(', ') || 'none'})`);
      }
      const config = loadConfig(revokeConfigShape, env);
      const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 2 });
      try {
        const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
        const { revocation, created } = await revokeKeyVersion(pool, { keyId: signer.keyId, keyVersion: version, reason: options.reason, actor: options.actor, codec, auditTopic: topicNames(config.TOPIC_PREFIX)['audit-events'] });
        console.log(
          created
            ? `keys: ${signer.keyId} version ${version} revoked by ${revocation.revokedBy} at ${revocation.revokedAt.toISOString()}`
            : `keys: ${signer.keyId} version ${version} was already revoked by ${revocation.revokedBy} at ${revocation.revokedAt.toISOString()} (${revocation.reason}); nothing changed`,
        );
        if (version === versions.at(-1)?.version) console.error(`keys: version ${version} is the current one: run \`agent-manager keys rotate\` now, then \`agent-manager audit resign\``);
        setExitCode(0);
      } finally {
        await pool.end();
      }
    });
}
