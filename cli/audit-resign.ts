/**
 * `agent-manager audit resign --from DAY --to DAY [--json]`: the key-compromise runbook's step after
 * `keys revoke` and `keys rotate`. Each day whose manifest a revoked key version signed is checked
 * again against the archive and, when it matches, counter-signed with the current key version
 * (services/archiver/resign.ts). Exit 0 when every such day is counter-signed (or already was), 1 when
 * a manifest does not match the archive (not counter-signed), 2 usage, 3 could not complete.
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { buildAuditEvent } from '../lib/audit.ts';
import { isArchiveDay } from '../lib/archive/layout.ts';
import { createS3Client } from '../lib/archive/s3.ts';
import { loadConfig } from '../lib/config.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import { createPool, withTransaction } from '../lib/db/pool.ts';
import { errorMessage } from '../lib/errors.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { enqueueEvents } from '../lib/outbox/outbox.ts';
import { serviceConfigShape, topicNames } from '../lib/service/context.ts';
import { createSignerFromConfig, signerConfigShape } from '../lib/signing/config.ts';
import { listRevocations } from '../lib/signing/revocations.ts';
import { withDefaultArchivePrefix } from '../services/archiver/config.ts';
import { resignManifests, type ResignedDay, type ResignSummary } from '../services/archiver/resign.ts';
import { resolvedServiceEnv } from './services.ts';
import { archiveReadConfigShape } from './audit-config.ts';

export const RESIGN_EXIT = { done: 0, refused: 1, usage: 2, incomplete: 3 } as const;

/** What `audit resign` reads: the archive, the revocations in Postgres, and the signer. */
const resignConfigShape = {
  ...archiveReadConfigShape,
  // Each counter-signature is audited (`audit_manifest.resigned`, through the outbox).
  SCHEMA_REGISTRY_URL: z.url('expected a URL'),
  TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX,
  ...signerConfigShape,
};

/** One line per day. */
export function formatResignedDay(day: ResignedDay): string[] {
  switch (day.outcome) {
    case 'no_manifest':
      return [`${day.day}  no manifest`];
    case 'not_revoked':
      return [`${day.day}  signed by v${day.keyVersion}, not revoked: nothing to do`];
    case 'already_resigned':
      return [`${day.day}  already counter-signed by v${day.keyVersion}  ${day.key}`];
    case 'resigned':
      return [`${day.day}  RESIGNED  v${day.keyVersion} counter-signs revoked v${day.revokedVersion}  ${day.key}`];
    case 'refused':
      return [`${day.day}  REFUSED: the manifest does not match the archive (not counter-signed)`, ...day.problems.map((p) => `      ${p}`)];
  }
}

export function registerAuditResignCommand(audit: Command, setExitCode: (code: number) => void): void {
  audit
    .command('resign')
    .requiredOption('--from <day>', 'first day (YYYY-MM-DD)')
    .requiredOption('--to <day>', 'last day (YYYY-MM-DD), inclusive')
    .option('--json', 'the outcome as one JSON document')
    .option('--actor <name>', 'who (in the audit event of each counter-signature)', process.env.USER ?? 'operator')
    .description(
      'Counter-signs, with the current key version, the manifests of the days signed by a revoked version (agent-manager keys revoke), after checking each one again ' +
        'against the archive (files, versions, SHA-256, offsets, chains, the previous manifest). Writes <root>/dt=DAY/manifest.json.resign-v<N>.sig, never overwriting anything; each is audited (audit_manifest.resigned). ' +
        'Exit 0 done, 1 a manifest does not match the archive (not counter-signed), 2 usage, 3 could not complete.',
    )
    .action(async (options: { from: string; to: string; json?: boolean; actor: string }, command: Command) => {
      for (const [name, day] of [['--from', options.from], ['--to', options.to]] as const) {
        if (!isArchiveDay(day)) return command.error(`error: ${name} '${day}' is not a day (YYYY-MM-DD)`, { exitCode: RESIGN_EXIT.usage, code: 'agent-manager.usage' });
      }
      if (options.from > options.to) return command.error(`error: --from ${options.from} is after --to ${options.to}`, { exitCode: RESIGN_EXIT.usage, code: 'agent-manager.usage' });
      let summary: ResignSummary;
      try {
        const config = loadConfig(resignConfigShape, withDefaultArchivePrefix(await resolvedServiceEnv()));
        const signer = createSignerFromConfig(config);
        const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 1 });
        const s3 = createS3Client(config);
        const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
        const auditTopic = topicNames(config.TOPIC_PREFIX)['audit-events'];
        try {
          summary = await resignManifests({
            s3,
            bucket: config.ARCHIVE_BUCKET,
            prefix: config.ARCHIVE_PREFIX,
            signer,
            revocations: await listRevocations(pool),
            from: options.from,
            to: options.to,
            progress: (day) => {
              if (options.json !== true) for (const line of formatResignedDay(day)) console.log(line);
            },
            resigned: async (day) => {
              const event = buildAuditEvent({
                actor: options.actor,
                action: 'audit_manifest.resigned',
                agentId: null,
                requestId: null,
                traceId: null,
                payload: { day: day.day, counterSignature: day.key, keyId: signer.keyId, keyVersion: day.keyVersion, counterSigns: day.revokedVersion },
              });
              await withTransaction(pool, (client) => enqueueEvents(client, codec, [{ topic: auditTopic, key: `audit-manifest:${day.day}`, value: event, eventId: event.eventId }]));
            },
          });
        } finally {
          s3.destroy();
          await pool.end();
        }
      } catch (error) {
        console.error(`agent-manager: audit resign could not complete: ${errorMessage(error)}`);
        setExitCode(RESIGN_EXIT.incomplete);
        return;
      }
      if (options.json === true) console.log(JSON.stringify(summary, null, 2));
      else console.log(`${summary.resigned} manifest${summary.resigned === 1 ? '' : 's'} counter-signed, ${summary.refused} refused`);
      setExitCode(summary.refused > 0 ? RESIGN_EXIT.refused : RESIGN_EXIT.done);
    });
}
