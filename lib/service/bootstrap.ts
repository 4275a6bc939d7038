import { join } from 'node:path';
import { kafkaTlsOf } from '../config.ts';
import { aclPlan, applyAcls, principalsFromEnv } from '../contracts/acls.ts';
import { registerSchemas } from '../contracts/registry.ts';
import { defaultSchemasDir } from '../contracts/schemas.ts';
import { createTopics, topicSettingsFromEnv } from '../contracts/topics.ts';
import { migrateUp } from '../db/migrate.ts';
import { createKafkajsAdmin } from '../kafka/kafkajs.ts';
import type { Logger } from '../logger.ts';
import type { ServiceConfig } from './context.ts';

export interface BootstrapReport {
  readonly migrations: string[];
  readonly topicsCreated: number;
  /** ACL entries applied (0 when the cluster has no authorizer). */
  readonly aclsApplied: number;
  readonly schemasRegistered: number;
}

/**
 * Everything a fleet needs before its services start, idempotent: database migrations, every topic
 * and its `.dlq` (with TOPIC_PREFIX), the ACLs of every role on them (lib/contracts/acls.ts; the
 * configured principal must be allowed to alter ACLs: the operator's), every schema (subjects with
 * the same prefix).
 */
export async function bootstrapFleet(root: string, config: ServiceConfig, env: Record<string, string | undefined>, logger: Logger): Promise<BootstrapReport> {
  const principals = principalsFromEnv(env);
  const migrations = await migrateUp({ databaseUrl: config.DATABASE_URL, dir: join(root, 'migrations'), schema: config.DATABASE_SCHEMA, logger });
  const admin = createKafkajsAdmin({ clientId: `${config.KAFKA_CLIENT_ID}-bootstrap`, brokers: config.KAFKA_BROKERS, tls: kafkaTlsOf(config) });
  await admin.connect();
  const { topics, acls } = await (async () => {
    const created = await createTopics(admin, topicSettingsFromEnv(env), { prefix: config.TOPIC_PREFIX });
    const applied = await applyAcls(admin, aclPlan({ prefix: config.TOPIC_PREFIX, principals }));
    if (applied.status === 'unsupported') logger.warn('the Kafka cluster has no authorizer: ACLs not applied, every client may do everything');
    return { topics: created, acls: applied };
  })().finally(() => admin.disconnect());
  const topicsCreated = topics.filter((t) => t.status === 'created').length;
  const schemas = await registerSchemas({ registryUrl: config.SCHEMA_REGISTRY_URL, schemasDir: defaultSchemasDir(root), subjectPrefix: config.TOPIC_PREFIX });
  return { migrations, topicsCreated, aclsApplied: acls.entries, schemasRegistered: schemas.filter((s) => s.status === 'registered').length };
}
