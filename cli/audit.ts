import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { Command, CommanderError } from 'commander';
import { pino } from 'pino';
import { findAuditEvent, queryAuditIndex, type AuditPage, type AuditQuery, AUDIT_QUERY_MAX_LIMIT } from '../lib/archive/index-store.ts';
import { isArchiveDay } from '../lib/archive/layout.ts';
import { openArchiveFile } from '../lib/archive/reader.ts';
import { createS3Client, s3Failure } from '../lib/archive/s3.ts';
import { commonConfigShape, kafkaTlsOf, loadConfig } from '../lib/config.ts';
import { createPool } from '../lib/db/pool.ts';
import { isAppError, permanentError } from '../lib/errors.ts';
import { withDefaultArchivePrefix } from '../services/archiver/config.ts';
import { reindexArchive } from '../services/archiver/reindex.ts';
import { replayArchive } from '../services/archiver/replay.ts';
import { kafkajsTopicAdmin } from '../lib/dlq/kafkajs-admin.ts';
import { createKafkajsAdmin, createKafkajsClient } from '../lib/kafka/kafkajs.ts';
import { createLogger } from '../lib/logger.ts';
import { serviceConfigShape, topicNames } from '../lib/service/context.ts';
import { resolvedServiceEnv } from './services.ts';
import { registerAuditVerifyCommand } from './audit-verify.ts';
import { registerAuditResignCommand } from './audit-resign.ts';
import { archiveReadConfigShape, archiveS3ConfigShape, auditConfigShape } from './audit-config.ts';

/** What `audit replay` reads: the archive in S3 and a Kafka cluster to produce into (no database). */
const replayConfigShape = {
  ...commonConfigShape,
  TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX,
  ...archiveS3ConfigShape,
};

interface QueryOptions {
  agent?: string;
  request?: string;
  action?: string;
  actor?: string;
  from?: string;
  to?: string;
  limit: string;
  cursor?: string;
  json?: boolean;
}

/** A time given on the command line: ISO 8601 (a bare day is its midnight UTC). */
export function parseTime(text: string, option: string): Date {
  const iso = /^\d{4}-\d{2}-\d{2}$/.test(text) ? `${text}T00:00:00.000Z` : text;
  const time = new Date(iso);
  if (!/^\d{4}-\d{2}-\d{2}/.test(text) || Number.isNaN(time.getTime())) {
    throw permanentError('AUDIT_QUERY_INVALID', `${option} '${text}' is not a time (ISO 8601, e.g. 2026-12-01 or 2026-12-01T10:00:00Z)`);
  }
  return time;
}

/** The query of the command's options; AUDIT_QUERY_INVALID for a usage mistake. */
export function auditQueryOf(options: QueryOptions): AuditQuery {
  const limit = Number(options.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > AUDIT_QUERY_MAX_LIMIT) {
    throw permanentError('AUDIT_QUERY_INVALID', `--limit expects a whole number from 1 to ${AUDIT_QUERY_MAX_LIMIT}`);
  }
  return {
    ...(options.agent !== undefined ? { agentId: options.agent } : {}),
    ...(options.request !== undefined ? { requestId: options.request } : {}),
    ...(options.action !== undefined ? { action: options.action } : {}),
    ...(options.actor !== undefined ? { actor: options.actor } : {}),
    ...(options.from !== undefined ? { from: parseTime(options.from, '--from') } : {}),
    ...(options.to !== undefined ? { to: parseTime(options.to, '--to') } : {}),
    ...(options.cursor !== undefined ? { cursor: options.cursor } : {}),
    limit,
  };
}

/** The table `audit query` prints: one line per event, then where the next page starts. */
export function formatAuditPage(page: AuditPage): string[] {
  const header = ['TIME', 'ACTION', 'ACTOR', 'AGENT', 'REQUEST', 'EVENT', 'PARTITION/OFFSET', 'ARCHIVED'];
  const rows = page.events.map((e) => [
    e.time.toISOString(),
    e.action,
    e.actor,
    e.agentId ?? '-',
    e.requestId ?? '-',
    e.eventId,
    `${e.partition}/${e.offset}`,
    e.objectKey === null ? 'pending' : 'yes',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  const out = page.events.length === 0 ? ['no audit events match'] : [line(header), ...rows.map(line)];
  if (page.nextCursor !== null) out.push('', `more: --cursor ${page.nextCursor}`);
  return out;
}

export function registerAuditCommands(program: Command, setExitCode: (code: number) => void): void {
  const audit = program
    .command('audit')
    .summary('query the audit index, show an archived event, rebuild the index from S3, replay the archive into Kafka, verify its integrity, counter-sign manifests')
    .description("The audit archiver's index in Postgres (DATABASE_URL, DATABASE_SCHEMA) and its archive in S3 (S3_*, ARCHIVE_BUCKET, ARCHIVE_PREFIX).")
    .exitOverride((error) => {
      throw error.exitCode === 0 ? error : new CommanderError(2, error.code, error.message);
    });

  audit
    .command('query')
    .description(
      'Audit events from the index, oldest first, filtered by every option given (AND). Pages with --limit; the last line gives the --cursor of the next page. ' +
        'ARCHIVED says whether the event is in an archive file in S3 yet (the index is written first).',
    )
    .option('--agent <id>', 'the agent the events are about (uuid)')
    .option('--request <id>', 'the Kernel request that led to them (uuid)')
    .option('--action <action>', 'e.g. agent.state_changed')
    .option('--actor <actor>', 'e.g. service:provisioner')
    .option('--from <time>', 'at or after this time (ISO 8601; a day is its 00:00 UTC)')
    .option('--to <time>', 'before this time (ISO 8601)')
    .option('--limit <n>', `events per page, 1 to ${AUDIT_QUERY_MAX_LIMIT}`, '100')
    .option('--cursor <cursor>', 'where the previous page ended')
    .option('--json', 'one JSON document: {events, nextCursor}')
    .action(async (options: QueryOptions, command: Command) => {
      let page: AuditPage;
      try {
        const query = auditQueryOf(options);
        const config = loadConfig(auditConfigShape, await resolvedServiceEnv());
        const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 1 });
        try {
          page = await queryAuditIndex(pool, query);
        } finally {
          await pool.end();
        }
      } catch (error) {
        // Usage mistakes (a bad uuid, time, limit or cursor) exit 2 with the help hint.
        if (isAppError(error) && error.code === 'AUDIT_QUERY_INVALID') return command.error(`error: ${error.message}`, { exitCode: 2, code: 'agent-manager.usage' });
        throw error;
      }
      if (options.json === true) console.log(JSON.stringify(page, null, 2));
      else for (const line of formatAuditPage(page)) console.log(line);
      setExitCode(0);
    });
  audit
    .command('show')
    .argument('<eventId>', 'the event id (a uuid)')
    .description('The event as archived in S3 (decoded with the schema it was written with), and where it lives: bucket, object, partition, offset, Kafka timestamp, key and headers. Exit 1 when it is not indexed.')
    .action(async (eventId: string, _options: unknown, command: Command) => {
      const config = loadConfig(archiveReadConfigShape, withDefaultArchivePrefix(await resolvedServiceEnv()));
      const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 1 });
      let row;
      try {
        row = await findAuditEvent(pool, eventId);
      } catch (error) {
        if (isAppError(error) && error.code === 'AUDIT_QUERY_INVALID') return command.error(`error: ${error.message}`, { exitCode: 2, code: 'agent-manager.usage' });
        throw error;
      } finally {
        await pool.end();
      }
      if (row === undefined) throw permanentError('AUDIT_EVENT_NOT_FOUND', `no audit event ${eventId} in the index (DATABASE_SCHEMA selects the fleet)`);
      const where = { bucket: config.ARCHIVE_BUCKET, object: row.objectKey, partition: row.partition, offset: row.offset };
      if (row.objectKey === null) {
        console.log(JSON.stringify({ ...where, archived: false, indexed: row }, null, 2));
        setExitCode(0);
        return;
      }
      const s3 = createS3Client(config);
      try {
        let object;
        try {
          object = await s3.send(new GetObjectCommand({ Bucket: config.ARCHIVE_BUCKET, Key: row.objectKey }));
        } catch (error) {
          throw s3Failure(`GetObject s3://${config.ARCHIVE_BUCKET}/${row.objectKey}`, error);
        }
        const file = await openArchiveFile(object.Body as Readable, { name: row.objectKey });
        for await (const record of file.records) {
          if (record.offset !== row.offset) continue;
          const event = record.event as Record<string, unknown>;
          const shown = {
            ...where,
            archived: true,
            schemaId: file.header.schemaId,
            kafkaTimestamp: record.timestamp.toISOString(),
            key: record.key?.toString('utf8') ?? null,
            headers: record.headers.map((h) => ({ key: h.key, value: h.value?.toString('utf8') ?? null })),
            event,
          };
          console.log(JSON.stringify(shown, null, 2));
          setExitCode(0);
          return;
        }
        throw permanentError('ARCHIVE_RECORD_MISSING', `s3://${config.ARCHIVE_BUCKET}/${row.objectKey} holds no record at offset ${row.offset}, which the index points to`);
      } finally {
        s3.destroy();
      }
    });

  audit
    .command('reindex')
    .requiredOption('--from <day>', 'first day (YYYY-MM-DD)')
    .requiredOption('--to <day>', 'last day (YYYY-MM-DD), inclusive')
    .option('--quiet', 'print only the summary')
    .description('Rebuilds the index in Postgres from the archive in S3 alone: every file of the days, every event. Idempotent (rows already there are kept).')
    .action(async (options: { from: string; to: string; quiet?: boolean }, command: Command) => {
      for (const [name, day] of [['--from', options.from], ['--to', options.to]] as const) {
        if (!isArchiveDay(day)) return command.error(`error: ${name} '${day}' is not a day (YYYY-MM-DD)`, { exitCode: 2, code: 'agent-manager.usage' });
      }
      const config = loadConfig(archiveReadConfigShape, withDefaultArchivePrefix(await resolvedServiceEnv()));
      const pool = createPool({ connectionString: config.DATABASE_URL, schema: config.DATABASE_SCHEMA, max: 2 });
      const s3 = createS3Client(config);
      try {
        const summary = await reindexArchive({
          s3,
          bucket: config.ARCHIVE_BUCKET,
          prefix: config.ARCHIVE_PREFIX,
          db: pool,
          from: options.from,
          to: options.to,
          progress: (file) => {
            if (options.quiet !== true) console.log(`${file.key}  ${file.records} records, ${file.inserted} new${file.invalid > 0 ? `, ${file.invalid} not indexable` : ''}`);
          },
        });
        console.log(`reindexed ${summary.days} days, ${summary.files} files, ${summary.records} records: ${summary.inserted} new index rows${summary.invalid > 0 ? `, ${summary.invalid} not indexable` : ''}`);
        setExitCode(0);
      } finally {
        s3.destroy();
        await pool.end();
      }
    });

  audit
    .command('replay')
    .requiredOption('--from <day>', 'first day (YYYY-MM-DD)')
    .requiredOption('--to <day>', 'last day (YYYY-MM-DD), inclusive')
    .option('--brokers <list>', 'the rebuild cluster (host:port,…; default KAFKA_BROKERS), reached with the same KAFKA_SSL_* settings')
    .option('--topic <topic>', 'the topic to produce into (default: the audit topic of TOPIC_PREFIX); it must exist')
    .option('--quiet', 'print only the per-day lines and the summary')
    .description(
      'Produces the archived events of the days back into a topic, in archive order (day, partition, offset), each with its original key, headers and value bytes, ' +
        'into its original partition when the target has it. Idempotent per event id: the target is read first and events already there are skipped.',
    )
    .action(async (options: { from: string; to: string; brokers?: string; topic?: string; quiet?: boolean }, command: Command) => {
      for (const [name, day] of [['--from', options.from], ['--to', options.to]] as const) {
        if (!isArchiveDay(day)) return command.error(`error: ${name} '${day}' is not a day (YYYY-MM-DD)`, { exitCode: 2, code: 'agent-manager.usage' });
      }
      if (options.from > options.to) return command.error(`error: --from ${options.from} is after --to ${options.to}`, { exitCode: 2, code: 'agent-manager.usage' });
      const env = withDefaultArchivePrefix(await resolvedServiceEnv());
      const config = loadConfig(replayConfigShape, options.brokers !== undefined ? { ...env, KAFKA_BROKERS: options.brokers } : env);
      const topic = options.topic ?? topicNames(config.TOPIC_PREFIX)['audit-events'];
      const clientId = `${config.KAFKA_CLIENT_ID}-audit-replay`;
      const tls = kafkaTlsOf(config);
      const logger = createLogger('audit-replay', config.LOG_LEVEL, pino.destination({ dest: 2, sync: true }));
      const kafka = createKafkajsClient({ clientId, brokers: config.KAFKA_BROKERS, tls, logger });
      const admin = kafkajsTopicAdmin(() => createKafkajsAdmin({ clientId, brokers: config.KAFKA_BROKERS, tls }));
      const s3 = createS3Client(config);
      try {
        const summary = await replayArchive({
          s3,
          bucket: config.ARCHIVE_BUCKET,
          prefix: config.ARCHIVE_PREFIX,
          from: options.from,
          to: options.to,
          kafka,
          admin,
          topic,
          groupId: `${config.TOPIC_PREFIX}${clientId}-${randomUUID().slice(0, 8)}`,
          progress: (event) => {
            if (event.kind === 'target') console.log(`${event.topic}: ${event.partitions} partitions, ${event.existing} events already there`);
            else if (event.kind === 'day') console.log(`${event.day}: ${event.files} files, ${event.records} events: ${event.produced} produced, ${event.skipped} already there`);
            else if (options.quiet !== true) console.log(`${event.key}  ${event.records} events, ${event.produced} produced, ${event.skipped} already there`);
          },
        });
        console.log(
          `replayed ${summary.days} days, ${summary.files} files, ${summary.records} events into ${summary.topic}: ${summary.produced} produced, ${summary.skipped} already there` +
            (summary.repartitioned > 0 ? ` (${summary.repartitioned} by key: the target has fewer partitions than the archive)` : ''),
        );
        setExitCode(0);
      } finally {
        s3.destroy();
      }
    });

  registerAuditVerifyCommand(audit, setExitCode);
  registerAuditResignCommand(audit, setExitCode);
}
