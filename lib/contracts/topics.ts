/**
 * The Kafka topics of the contracts: every topic in `TOPICS` and its dead-letter topic `<topic>.dlq`,
 * with partitions, replication factor, `min.insync.replicas` and retention from configuration.
 * Records are keyed by the agentId (see `recordKey`), so partitions are the unit of scaling and
 * every agent's events stay in order.
 */
import { ConfigResourceTypes, type ITopicConfig, type KafkaAdmin as Admin } from '../kafka/kafkajs.ts';
import { z } from 'zod';
import { errorMessage, permanentError, retryableError } from '../errors.ts';
import { dlqTopic, TOPICS, type TopicName } from './schemas.ts';

const DAY_MS = 24 * 60 * 60 * 1000;

/** The least audit retention allowed: how many days the archiver may fall behind without losing events. */
export const MIN_AUDIT_RETENTION_DAYS = 3;

export const TopicSettingsSchema = z
  .object({
    /** Partitions of every topic and DLQ (the most consumers one group can use). */
    partitions: z.int().min(1, { error: 'must be at least 1' }).max(10_000, { error: 'must be at most 10000' }).default(12),
    /** 1 on the single-broker local stack; 3 in production. */
    replicationFactor: z.int().min(1, { error: 'must be at least 1' }).max(32_767, { error: 'must be at most 32767' }).default(1),
    /** With acks=all, how many replicas must have a write; at most the replication factor. */
    minInsyncReplicas: z.int().min(1, { error: 'must be at least 1' }).default(1),
    /** retention.ms of the work topics (requests, commands, status, heartbeats). */
    retentionMs: z.int().min(60_000, { error: 'must be at least one minute' }).default(7 * DAY_MS),
    /** retention.ms of audit-events: long enough for the archiver to fall behind by days. */
    auditRetentionMs: z
      .int()
      .min(MIN_AUDIT_RETENTION_DAYS * DAY_MS, { error: `must be at least ${MIN_AUDIT_RETENTION_DAYS} days, so the archiver can fall behind by days without losing events` })
      .default(30 * DAY_MS),
    /** retention.ms of every `.dlq` topic: time for an operator to inspect and replay. */
    dlqRetentionMs: z.int().min(60_000, { error: 'must be at least one minute' }).default(30 * DAY_MS),
  })
  .refine((s) => s.minInsyncReplicas <= s.replicationFactor, {
    error: 'must be at most the replication factor, or no write with acks=all could succeed',
    path: ['minInsyncReplicas'],
  });

export type TopicSettings = z.output<typeof TopicSettingsSchema>;
export type TopicSettingsInput = z.input<typeof TopicSettingsSchema>;

type SettingKey = keyof TopicSettings;

/** The environment variable of each setting, and how its value is written. */
const ENV_VARIABLES: Record<SettingKey, { name: string; unit: 'count' | 'days'; example: string }> = {
  partitions: { name: 'TOPIC_PARTITIONS', unit: 'count', example: '12' },
  replicationFactor: { name: 'TOPIC_REPLICATION_FACTOR', unit: 'count', example: '3' },
  minInsyncReplicas: { name: 'TOPIC_MIN_INSYNC_REPLICAS', unit: 'count', example: '2' },
  retentionMs: { name: 'TOPIC_RETENTION_DAYS', unit: 'days', example: '7' },
  auditRetentionMs: { name: 'AUDIT_RETENTION_DAYS', unit: 'days', example: '30' },
  dlqRetentionMs: { name: 'DLQ_RETENTION_DAYS', unit: 'days', example: '30' },
};

/** The environment variables `topicSettingsFromEnv` reads. */
export const TOPIC_ENV_VARIABLES: readonly string[] = Object.values(ENV_VARIABLES).map((v) => v.name);

/** Validates settings given in code (defaults fill what is missing); throws CONFIG_INVALID. */
export function topicSettings(input: TopicSettingsInput = {}): TopicSettings {
  const result = TopicSettingsSchema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${issue.path.join('.') || 'settings'} ${issue.message}`);
  throw permanentError('CONFIG_INVALID', `invalid topic settings: ${problems.join('; ')}`);
}

/**
 * Topic settings from environment variables (unset or empty = default): TOPIC_PARTITIONS,
 * TOPIC_REPLICATION_FACTOR, TOPIC_MIN_INSYNC_REPLICAS (whole numbers), TOPIC_RETENTION_DAYS,
 * AUDIT_RETENTION_DAYS, DLQ_RETENTION_DAYS (days, decimals allowed). Throws a permanent
 * CONFIG_INVALID error naming every bad variable, the value it had and what is expected.
 */
export function topicSettingsFromEnv(env: Record<string, string | undefined>): TopicSettings {
  const input: Partial<Record<SettingKey, number>> = {};
  const problems: string[] = [];
  for (const [key, variable] of Object.entries(ENV_VARIABLES) as [SettingKey, (typeof ENV_VARIABLES)[SettingKey]][]) {
    const raw = env[variable.name]?.trim();
    if (raw === undefined || raw === '') continue;
    if (variable.unit === 'count') {
      if (!/^\d+$/.test(raw)) {
        problems.push(`${variable.name} must be a positive whole number (e.g. ${variable.example}), got '${raw}'`);
        continue;
      }
      input[key] = Number(raw);
    } else {
      if (!/^\d+(\.\d+)?$/.test(raw) || Number(raw) <= 0) {
        problems.push(`${variable.name} must be a positive number of days (e.g. ${variable.example}), got '${raw}'`);
        continue;
      }
      input[key] = Math.round(Number(raw) * DAY_MS);
    }
  }
  if (problems.length === 0) {
    const result = TopicSettingsSchema.safeParse(input);
    if (result.success) return result.data;
    for (const issue of result.error.issues) {
      const key = issue.path[0];
      const variable = typeof key === 'string' && key in ENV_VARIABLES ? ENV_VARIABLES[key as SettingKey] : undefined;
      if (!variable) {
        problems.push(issue.message);
        continue;
      }
      const raw = env[variable.name]?.trim();
      const given = raw === undefined || raw === '' ? 'unset (the default)' : `'${raw}'`;
      const message =
        key === 'minInsyncReplicas'
          ? `must be at most the replication factor (TOPIC_REPLICATION_FACTOR is ${input.replicationFactor ?? 'unset, default 1'}), or no write with acks=all could succeed`
          : issue.message;
      problems.push(`${variable.name} is ${given} but ${message}`);
    }
  }
  throw permanentError('CONFIG_INVALID', `invalid topic configuration: ${problems.join('; ')}`, undefined, { variables: TOPIC_ENV_VARIABLES });
}

export interface TopicPlan {
  /** The full topic name, prefix included. */
  topic: string;
  /** The contract topic it belongs to. */
  contract: TopicName;
  kind: 'topic' | 'dlq';
  numPartitions: number;
  replicationFactor: number;
  configEntries: { name: string; value: string }[];
}

export interface CreateTopicsOptions {
  /** Defaults to every topic of the contracts. */
  topics?: readonly TopicName[];
  /** Prepended to every topic name (tests use a random one). */
  prefix?: string;
}

/**
 * The archiver's days are the broker's append time (not the producer's clock), so they follow offset
 * order within a partition and an idle partition's day can close by the clock. Unlike the other
 * settings, `createTopics` also sets these on an existing topic.
 */
const AUDIT_TOPIC_ENTRIES: readonly { name: string; value: string }[] = [{ name: 'message.timestamp.type', value: 'LogAppendTime' }];
const APPLIED_TO_EXISTING = new Set(AUDIT_TOPIC_ENTRIES.map((e) => e.name));

/** What `createTopics` creates: each topic followed by its DLQ, with their configs. */
export function topicPlan(settings: TopicSettings, options: CreateTopicsOptions = {}): TopicPlan[] {
  const prefix = options.prefix ?? '';
  return (options.topics ?? TOPICS).flatMap((contract) => {
    const entries = (retentionMs: number) => [
      { name: 'cleanup.policy', value: 'delete' },
      { name: 'min.insync.replicas', value: String(settings.minInsyncReplicas) },
      { name: 'retention.ms', value: String(retentionMs) },
    ];
    const common = { contract, numPartitions: settings.partitions, replicationFactor: settings.replicationFactor };
    const topicEntries = contract === 'audit-events' ? [...entries(settings.auditRetentionMs), ...AUDIT_TOPIC_ENTRIES] : entries(settings.retentionMs);
    return [
      { ...common, topic: `${prefix}${contract}`, kind: 'topic' as const, configEntries: topicEntries },
      { ...common, topic: dlqTopic(`${prefix}${contract}`), kind: 'dlq' as const, configEntries: entries(settings.dlqRetentionMs) },
    ];
  });
}

export interface TopicCreation {
  topic: string;
  kind: 'topic' | 'dlq';
  /** `exists` when the topic was already there: it is left as it is (see `drift`). */
  status: 'created' | 'exists';
  partitions: number;
  replicationFactor: number;
  config: Record<string, string>;
  /** For an existing topic, how it differs from the configuration (left alone, except the audit topic's timestamp type, which is set). */
  drift: string[];
}

function kafkaProblem(error: unknown): string {
  const nested = typeof error === 'object' && error !== null && 'errors' in error ? error.errors : undefined;
  if (Array.isArray(nested) && nested.length > 0) return nested.map((e) => errorMessage(e)).join('; ');
  return errorMessage(error);
}

function isRetriable(error: unknown): boolean {
  return typeof error === 'object' && error !== null && 'retriable' in error && error.retriable === true;
}

async function driftOf(admin: Admin, plans: TopicPlan[]): Promise<Map<string, string[]>> {
  const drift = new Map<string, string[]>(plans.map((p) => [p.topic, []]));
  if (plans.length === 0) return drift;
  const metadata = await admin.fetchTopicMetadata({ topics: plans.map((p) => p.topic) });
  const configs = await admin.describeConfigs({
    includeSynonyms: false,
    resources: plans.map((p) => ({ type: ConfigResourceTypes.TOPIC, name: p.topic, configNames: p.configEntries.map((e) => e.name) })),
  });
  const toApply = new Map<string, { name: string; value: string }[]>();
  for (const plan of plans) {
    const notes = drift.get(plan.topic) ?? [];
    const partitions = metadata.topics.find((t) => t.name === plan.topic)?.partitions ?? [];
    if (partitions.length !== plan.numPartitions) notes.push(`partitions ${partitions.length} (configured ${plan.numPartitions})`);
    const replicas = partitions[0]?.replicas.length;
    if (replicas !== undefined && replicas !== plan.replicationFactor) notes.push(`replication factor ${replicas} (configured ${plan.replicationFactor})`);
    const entries = configs.resources.find((r) => r.resourceName === plan.topic)?.configEntries ?? [];
    for (const wanted of plan.configEntries) {
      const actual = entries.find((e) => e.configName === wanted.name)?.configValue;
      if (actual === undefined || actual === wanted.value) continue;
      if (APPLIED_TO_EXISTING.has(wanted.name)) {
        toApply.set(plan.topic, [...(toApply.get(plan.topic) ?? []), wanted]);
        notes.push(`${wanted.name} was ${actual}: set to ${wanted.value}`);
      } else {
        notes.push(`${wanted.name}=${actual} (configured ${wanted.value})`);
      }
    }
  }
  for (const [topic, wanted] of toApply) await setTopicConfigs(admin, topic, wanted);
  return drift;
}

/**
 * Sets `wanted` on an existing topic and keeps its other overrides: kafkajs has only the legacy
 * AlterConfigs, which replaces a topic's whole set of overrides, so the current ones are read first
 * and written back with the change.
 */
async function setTopicConfigs(admin: Admin, topic: string, wanted: readonly { name: string; value: string }[]): Promise<void> {
  const described = await admin.describeConfigs({ includeSynonyms: false, resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }] });
  const current = described.resources.find((r) => r.resourceName === topic)?.configEntries ?? [];
  // Topic-level overrides only (not the broker's defaults); a sensitive one cannot be read back.
  const overrides = current.filter((e) => !e.isDefault && !e.readOnly && (e.configSource === undefined || Number(e.configSource) === 1));
  const sensitive = overrides.find((e) => e.isSensitive);
  if (sensitive) {
    throw permanentError('TOPIC_CONFIG_UNCHANGED', `topic ${topic}: cannot set ${wanted.map((w) => w.name).join(', ')} without losing the sensitive override ${sensitive.configName}; set it with kafka-configs --alter`);
  }
  const names = new Set(wanted.map((w) => w.name));
  const configEntries = [...overrides.filter((e) => !names.has(e.configName)).map((e) => ({ name: e.configName, value: e.configValue })), ...wanted];
  await admin.alterConfigs({ validateOnly: false, resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries }] });
}

/**
 * Waits until every partition of `topics` has a leader. kafkajs' own `waitForLeaders` gives up on
 * the first "does not host this topic-partition" that a just-created topic can answer with; this
 * asks again until the deadline.
 */
export async function waitForTopicLeaders(admin: Admin, topics: readonly string[], timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let problem: string;
    try {
      const { topics: found } = await admin.fetchTopicMetadata({ topics: [...topics] });
      if (found.length === topics.length && found.every((t) => t.partitions.length > 0 && t.partitions.every((p) => p.leader >= 0))) return;
      problem = 'partitions without a leader';
    } catch (error) {
      problem = kafkaProblem(error);
    }
    if (Date.now() > deadline) throw retryableError('TOPIC_LEADERS_TIMEOUT', `topics ${topics.join(', ')} have no leaders after ${timeoutMs} ms: ${problem}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Creates `topics` (kafkajs' `ITopicConfig`s) and waits for their leaders with `waitForTopicLeaders`
 * instead of kafkajs' `waitForLeaders`, which gives up on a just-created topic. Every topic made
 * outside `createTopics` (tests, benchmarks) goes through here.
 */
export async function createTopicsAndWait(admin: Admin, topics: ITopicConfig[]): Promise<void> {
  await admin.createTopics({ waitForLeaders: false, topics });
  await waitForTopicLeaders(admin, topics.map((t) => t.topic));
}

/**
 * Creates every topic and its DLQ that does not exist yet (the admin must be connected). Idempotent:
 * an existing topic is reported `exists`, with how it differs from the configuration, and left alone
 * but for `message.timestamp.type=LogAppendTime` on audit-events, which is set (the archiver needs it).
 */
export async function createTopics(admin: Admin, settings: TopicSettings, options: CreateTopicsOptions = {}): Promise<TopicCreation[]> {
  const plans = topicPlan(settings, options);
  try {
    const existing = new Set(await admin.listTopics());
    const missing = plans.filter((p) => !existing.has(p.topic));
    if (missing.length > 0) {
      await createTopicsAndWait(
        admin,
        missing.map((p) => ({ topic: p.topic, numPartitions: p.numPartitions, replicationFactor: p.replicationFactor, configEntries: p.configEntries })),
      );
    }
    const drift = await driftOf(admin, plans.filter((p) => existing.has(p.topic)));
    return plans.map((p) => ({
      topic: p.topic,
      kind: p.kind,
      status: existing.has(p.topic) ? 'exists' : 'created',
      partitions: p.numPartitions,
      replicationFactor: p.replicationFactor,
      config: Object.fromEntries(p.configEntries.map((e) => [e.name, e.value])),
      drift: drift.get(p.topic) ?? [],
    }));
  } catch (error) {
    const message = `creating topics ${plans.map((p) => p.topic).join(', ')} failed: ${kafkaProblem(error)}`;
    throw isRetriable(error) ? retryableError('TOPIC_CREATE_FAILED', message, error) : permanentError('TOPIC_CREATE_FAILED', message, error);
  }
}
