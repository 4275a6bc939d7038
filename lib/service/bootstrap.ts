import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { registerSchemas } from '../contracts/registry.ts';
import { defaultSchemasDir } from '../contracts/schemas.ts';
import { createTopics, topicSettingsFromEnv } from '../contracts/topics.ts';
import { migrateUp } from '../db/migrate.ts';
import type { Logger } from '../logger.ts';
import type { ServiceConfig } from './context.ts';

export interface BootstrapReport {
  readonly migrations: string[];
  readonly topicsCreated: number;
  readonly schemasRegistered: number;
}

/**
 * Everything a fleet needs before its services start, idempotent: database migrations, every topic
 * and its `.dlq` (with TOPIC_PREFIX), every schema (subjects with the same prefix).
 */
export async function bootstrapFleet(root: string, config: ServiceConfig, env: Record<string, string | undefined>, logger: Logger): Promise<BootstrapReport> {
  const migrations = await migrateUp({ databaseUrl: config.DATABASE_URL, dir: join(root, 'migrations'), schema: config.DATABASE_SCHEMA, logger });
  const admin = new Kafka({ clientId: `${config.KAFKA_CLIENT_ID}-bootstrap`, brokers: config.KAFKA_BROKERS, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  const topics = await createTopics(admin, topicSettingsFromEnv(env), { prefix: config.TOPIC_PREFIX }).finally(() => admin.disconnect());
  const topicsCreated = topics.filter((t) => t.status === 'created').length;
  const schemas = await registerSchemas({ registryUrl: config.SCHEMA_REGISTRY_URL, schemasDir: defaultSchemasDir(root), subjectPrefix: config.TOPIC_PREFIX });
  return { migrations, topicsCreated, schemasRegistered: schemas.filter((s) => s.status === 'registered').length };
}
