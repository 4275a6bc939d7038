import { randomUUID } from 'node:crypto';
import { Command, CommanderError } from 'commander';
import { pino } from 'pino';
import { commonConfigShape, kafkaTlsOf, loadConfig } from '../lib/config.ts';
import { avroTypeOptions } from '../lib/contracts/schemas.ts';
import { createPool } from '../lib/db/pool.ts';
import { kafkajsTopicAdmin } from '../lib/dlq/kafkajs-admin.ts';
import { readDlq, readDlqRecords, type ReadDlqOptions } from '../lib/dlq/reader.ts';
import {
  dlqTopicName,
  keyText,
  matchesFilter,
  parseCodes,
  parseRecordRefs,
  parseSince,
  refText,
  shortReason,
  sourceTopicOf,
  summarize,
  type DlqFilter,
  type DlqRecord,
  type DlqRecordSummary,
  type RecordRef,
} from '../lib/dlq/records.ts';
import { replayDlqRecords, replayTarget, type ReplayedRecord } from '../lib/dlq/replay.ts';
import { viewValue } from '../lib/dlq/value.ts';
import { errorMessage, isAppError, permanentError } from '../lib/errors.ts';
import { createAvroCodec } from '../lib/kafka/avro.ts';
import { createKafkajsAdmin, createKafkajsClient } from '../lib/kafka/kafkajs.ts';
import { createLogger } from '../lib/logger.ts';
import { loadServiceConfig, serviceConfigShape, topicNames } from '../lib/service/context.ts';
import { resolvedServiceEnv } from './services.ts';

/** What reading a DLQ needs (no database): list and show. */
const readConfigShape = { ...commonConfigShape, TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX };
type ReadConfig = ReturnType<typeof loadConfig<typeof readConfigShape>>;

const collect = (value: string, previous: string[]) => [...previous, value];

interface FilterOptions {
  since?: string;
  code: string[];
  json?: boolean;
}

/** Usage mistakes exit with 2, after commander's message (its own parse errors included). */
function usageExit(error: CommanderError): never {
  throw error.exitCode === 0 ? error : new CommanderError(2, error.code, error.message);
}

/** Runs `work`, turning the library's usage errors into commander's (message, help, exit 2). */
async function asUsage<T>(command: Command, work: () => Promise<T> | T): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (isAppError(error) && error.code === 'DLQ_USAGE') command.error(`error: ${error.message}`, { exitCode: 2, code: 'agent-manager.usage' });
    throw error;
  }
}

function filterOf(options: FilterOptions): DlqFilter {
  return { ...(options.since !== undefined ? { since: parseSince(options.since) } : {}), codes: parseCodes(options.code) };
}

function describeFilter(filter: DlqFilter): string {
  const parts = [];
  if (filter.codes && filter.codes.length > 0) parts.push(`code ${filter.codes.join(',')}`);
  if (filter.since) parts.push(`since ${filter.since.toISOString()}`);
  return parts.join(', ');
}

/** The Kafka side of a DLQ command: a client built as the services build theirs, plus an admin. */
function dlqClients(config: ReadConfig) {
  const logger = createLogger('dlq', config.LOG_LEVEL, pino.destination({ dest: 2, sync: true }));
  const clientId = `${config.KAFKA_CLIENT_ID}-dlq`;
  const tls = kafkaTlsOf(config);
  const kafka = createKafkajsClient({ clientId, brokers: config.KAFKA_BROKERS, tls, logger });
  const admin = kafkajsTopicAdmin(() => createKafkajsAdmin({ clientId, brokers: config.KAFKA_BROKERS, tls }));
  const codec = createAvroCodec({ registryUrl: config.SCHEMA_REGISTRY_URL, avroOptions: avroTypeOptions() });
  return {
    kafka,
    codec,
    read: (topic: string): Omit<ReadDlqOptions, 'only'> => ({
      kafka,
      admin,
      topic,
      // Its own group each time: nothing is committed, and it is deleted after the read.
      groupId: `${config.TOPIC_PREFIX}${clientId}-${randomUUID().slice(0, 8)}`,
    }),
  };
}

function summaryJson(record: DlqRecordSummary) {
  return {
    partition: record.partition,
    offset: record.offset,
    time: record.time.toISOString(),
    code: record.code,
    reason: record.reason,
    key: record.key === null ? null : keyText(record.key),
    attempts: record.attempts,
    service: record.service,
    source: record.source,
    valueSize: record.valueSize,
  };
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length))) ?? [];
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0))).join('  ').trimEnd());
}

function byTime(a: DlqRecordSummary, b: DlqRecordSummary): number {
  return a.time.getTime() - b.time.getTime() || a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset));
}

function byPosition(a: RecordRef, b: RecordRef): number {
  return a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset));
}

function recordCount(n: number): string {
  return `${n} record${n === 1 ? '' : 's'}`;
}

async function showRecord(record: DlqRecord, codec: ReturnType<typeof createAvroCodec>, json: boolean): Promise<void> {
  const value = await viewValue(record.value, codec);
  if (json) {
    console.log(JSON.stringify({ topic: record.topic, ...summaryJson(summarize(record)), headers: record.headers, value }, null, 2));
    return;
  }
  const lines: [string, string][] = [
    ['record', `${record.topic} ${refText(record)}`],
    ['time', record.time.toISOString()],
    ['code', record.code],
    ['reason', record.reason],
    ['attempts', record.attempts === null ? '-' : String(record.attempts)],
    ['service', record.service ?? '-'],
    ['source', record.source.topic === null ? '-' : `${record.source.topic} ${record.source.partition ?? '?'}/${record.source.offset ?? '?'}`],
    ['key', keyText(record.key)],
  ];
  // Continuation lines of a multi-line value are indented under its first.
  const indented = (text: string, by: number) => text.replace(/\n/g, `\n${' '.repeat(by)}`);
  for (const [name, text] of lines) console.log(`${name.padEnd(9)} ${indented(text, 10)}`);
  console.log('headers');
  for (const [name, text] of Object.entries(record.headers).sort(([a], [b]) => a.localeCompare(b))) console.log(`  ${name}: ${indented(text, name.length + 4)}`);
  if (value === null) {
    console.log('value     (null)');
    return;
  }
  if (value.decoded !== undefined) {
    console.log(`value     ${value.size} bytes, Avro (schema id ${value.schemaId ?? '?'})`);
    console.log(JSON.stringify(value.decoded, null, 2));
    return;
  }
  console.log(`value     ${value.size} bytes, not decoded: ${value.decodeError ?? 'unknown reason'}`);
  if (value.text !== null) console.log(`  text    ${value.text.length > 2000 ? `${value.text.slice(0, 2000)}…` : value.text}`);
  console.log(`  hex     ${value.hexPreview}${value.size * 2 > value.hexPreview.length ? '…' : ''}`);
  console.log(`  base64  ${value.base64.length > 4000 ? `${value.base64.slice(0, 4000)}… (--json for all of it)` : value.base64}`);
}

export function registerDlqCommands(program: Command, setExitCode: (code: number) => void): void {
  const dlq = program
    .command('dlq')
    .summary('list, show and replay the records of a dead-letter topic')
    .description(
      'Dead-letter topics: what is in one, why it failed, and replay of chosen records to their source topic. ' +
        '<topic> is a topic or its DLQ (agent-requests or agent-requests.dlq); TOPIC_PREFIX is prepended when missing.',
    )
    .exitOverride(usageExit);

  /** The DLQ topic named on the command line, and the clients to read it. */
  async function open(command: Command, name: string, env: Record<string, string | undefined>) {
    const config = loadConfig(readConfigShape, env);
    const topic = await asUsage(command, () => {
      const dlqTopic = dlqTopicName(name, config.TOPIC_PREFIX);
      sourceTopicOf(dlqTopic);
      return dlqTopic;
    });
    const clients = dlqClients(config);
    return { topic, clients, read: clients.read(topic) };
  }

  dlq
    .command('list')
    .argument('<topic>', 'the DLQ (or its source topic)')
    .option('--since <when>', 'only records dead-lettered since an ISO time (2026-12-01T08:00:00Z) or a duration back from now (30m, 1h, 2d)')
    .option('--code <code>', 'only records with this error code (repeatable, or comma-separated)', collect, [])
    .option('--json', 'one JSON document instead of a table')
    .description('One line per record (partition/offset, time, code, key, short reason) and a count; reads up to the end offsets as they were at the start.')
    .action(async (name: string, options: FilterOptions, command: Command) => {
      const filter = await asUsage(command, () => filterOf(options));
      const { topic, read } = await open(command, name, await resolvedServiceEnv());
      const matched: DlqRecordSummary[] = [];
      const { read: total } = await readDlq(read, (record) => {
        if (matchesFilter(record, filter)) matched.push(summarize(record));
      });
      matched.sort(byTime);
      if (options.json) {
        console.log(JSON.stringify({ topic, total, matched: matched.length, filter: { since: filter.since?.toISOString() ?? null, codes: filter.codes ?? [] }, records: matched.map(summaryJson) }, null, 2));
      } else {
        if (matched.length > 0) {
          const rows = [['P/OFFSET', 'TIME', 'CODE', 'KEY', 'REASON'], ...matched.map((r) => [refText(r), r.time.toISOString(), r.code, keyText(r.key), shortReason(r.reason)])];
          for (const line of table(rows)) console.log(line);
        }
        const filtered = describeFilter(filter);
        console.log(`${recordCount(matched.length)} in ${topic}${filtered ? ` matching ${filtered} (of ${total})` : ''}`);
      }
      setExitCode(0);
    });

  dlq
    .command('show')
    .argument('<topic>', 'the DLQ (or its source topic)')
    .requiredOption('--offset <offset>', 'the record: partition/offset as list prints it (3/17), or an offset with --partition')
    .option('--partition <n>', 'the partition of --offset (needed when the topic has several and --offset has none)')
    .option('--json', 'one JSON document (the value in full, base64, and decoded when possible)')
    .description('One record in full: reason, source, headers, and its value decoded with Avro through the registry when possible, else its bytes.')
    .action(async (name: string, options: { offset: string; partition?: string; json?: boolean }, command: Command) => {
      const { topic, clients, read } = await open(command, name, await resolvedServiceEnv());
      const partitions = await read.admin.partitions(topic);
      const refs = await asUsage(command, () => parseRecordRefs([options.offset], partitionOption(options.partition), partitions.length));
      if (refs.length !== 1) return command.error('error: show takes exactly one --offset', { exitCode: 2, code: 'agent-manager.usage' });
      const [record] = await readDlqRecords(read, refs);
      await showRecord(record as DlqRecord, clients.codec, options.json === true);
      setExitCode(0);
    });

  dlq
    .command('replay')
    .argument('<topic>', 'the DLQ (or its source topic)')
    .option('--offset <offset>', 'a record to replay: partition/offset (3/17), or an offset with --partition (repeatable, or comma-separated)', collect, [])
    .option('--partition <n>', 'the partition of the bare --offset values')
    .option('--all', 'every record matching --since and --code (every record without them)')
    .option('--since <when>', 'with --all: records dead-lettered since an ISO time or a duration back from now (30m, 1h, 2d)')
    .option('--code <code>', 'with --all: records with this error code (repeatable, or comma-separated)', collect, [])
    .option('--reason <text>', 'why (recorded in each audit event); required unless --dry-run')
    .option('--actor <name>', 'who (recorded in each audit event)', process.env.USER ?? 'operator')
    .option('--dry-run', 'say what would be replayed; send nothing')
    .option('--json', 'one JSON document')
    .description(
      'Send chosen records back to their source topic with their original key, value and headers (plus x-dlq-replayed-from: <dlq>/<partition>/<offset>), ' +
        'acknowledged by all in-sync replicas, then audit each (dlq.replayed, through the outbox). A record that fails again returns to the DLQ.',
    )
    .action(async (name: string, options: FilterOptions & { offset: string[]; partition?: string; all?: boolean; reason?: string; actor: string; dryRun?: boolean }, command: Command) => {
      const usage = (message: string) => command.error(`error: ${message}`, { exitCode: 2, code: 'agent-manager.usage' });
      if (options.all && options.offset.length > 0) return usage('give either --offset or --all, not both');
      if (!options.all && options.offset.length === 0) return usage('choose the records: --offset <partition/offset> (repeatable) or --all (with --since/--code to narrow it)');
      if (!options.all && (options.since !== undefined || options.code.length > 0)) return usage('--since and --code narrow --all; --offset names its records itself');
      if (!options.dryRun && (options.reason ?? '').trim() === '') return usage('say why with --reason (recorded in each audit event)');
      if (options.actor.trim() === '') return usage('--actor must not be empty');
      const filter = await asUsage(command, () => filterOf(options));
      const env = await resolvedServiceEnv();
      // A replay writes audit events: it needs the database as a service does.
      const service = options.dryRun ? undefined : loadServiceConfig(env);
      const { topic, clients, read } = await open(command, name, env);

      let records: DlqRecord[] = [];
      if (options.all) {
        await readDlq(read, (record) => {
          if (matchesFilter(record, filter)) records.push(record);
        });
      } else {
        const partitions = await read.admin.partitions(topic);
        const refs = await asUsage(command, () => parseRecordRefs(options.offset, partitionOption(options.partition), partitions.length));
        records = await readDlqRecords(read, refs);
      }
      // Per key, the order the records failed in: the DLQ's own order within each partition.
      records.sort(byPosition);
      const targets = records.map(replayTarget); // every record checked before the first is sent

      if (service === undefined) {
        if (options.json) {
          console.log(JSON.stringify({ topic, dryRun: true, records: records.map((r, i) => ({ ...summaryJson(summarize(r)), to: targets[i] })) }, null, 2));
        } else {
          records.forEach((r, i) => console.log(`would replay ${refText(r)} → ${targets[i]}  key ${keyText(r.key)}  ${r.code}`));
          console.log(`dry run: ${recordCount(records.length)} of ${topic} would be replayed${describeFilter(filter) ? ` (${describeFilter(filter)})` : ''}`);
        }
        setExitCode(0);
        return;
      }

      const replayed: ReplayedRecord[] = [];
      const pool = createPool({ connectionString: service.DATABASE_URL, schema: service.DATABASE_SCHEMA, max: 2 });
      const producer = clients.kafka.producer();
      try {
        await producer.connect();
        await replayDlqRecords({ producer, pool, codec: clients.codec, auditTopic: topicNames(service.TOPIC_PREFIX)['audit-events'] }, records, { actor: options.actor, reason: options.reason ?? '' }, (r) => {
          replayed.push(r);
          if (!options.json) console.log(`replayed ${refText(r)} → ${r.to}  key ${r.key}  ${r.code}  audit ${r.auditEventId}`);
        });
      } catch (error) {
        if (options.json) console.log(JSON.stringify({ topic, actor: options.actor, reason: options.reason, replayed, error: errorMessage(error) }, null, 2));
        else console.error(`replayed ${replayed.length} of ${recordCount(records.length)} before a failure`);
        throw error;
      } finally {
        await producer.disconnect();
        await pool.end();
      }
      if (options.json) console.log(JSON.stringify({ topic, actor: options.actor, reason: options.reason, replayed }, null, 2));
      else console.log(`replayed ${recordCount(replayed.length)} of ${topic}${replayed.length > 0 ? ` to ${targets[0]}` : ''} (actor ${options.actor})`);
      setExitCode(0);
    });
}

function partitionOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw permanentError('DLQ_USAGE', `--partition expects a partition number, got "${text}"`);
  return Number(text);
}
