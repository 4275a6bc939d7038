/**
 * An isolated world for one ingest test file: its own Postgres schema (migrated), topic prefix
 * (every topic and `.dlq` created) and schema-registry subjects under that prefix. `teardown`
 * removes all of it.
 */
import { join } from 'node:path';
import pg from 'pg';
import { registerSchemas } from '../../../../lib/contracts/registry.ts';
import { avroTypeOptions, TOPICS } from '../../../../lib/contracts/schemas.ts';
import { createTopics, topicSettings } from '../../../../lib/contracts/topics.ts';
import { migrateUp } from '../../../../lib/db/migrate.ts';
import { createAvroCodec, type AvroCodec } from '../../../../lib/kafka/avro.ts';
import { createLogger } from '../../../../lib/logger.ts';
import { topicNames, type TopicNames } from '../../../../lib/service/context.ts';
import { rawKafka } from '../../../support/runtime.ts';
import { testEnv, uniqueName } from '../../../support/stack.ts';

export interface IngestWorld {
  readonly env: Record<string, string>;
  readonly prefix: string;
  readonly schema: string;
  readonly topics: TopicNames;
  /** Encodes/decodes with the project's logical types (timestamps as Dates). */
  readonly codec: AvroCodec;
  teardown(): Promise<void>;
}

export async function createIngestWorld(name: string, options: { topics?: boolean } = {}): Promise<IngestWorld> {
  const env = testEnv();
  const prefix = `${uniqueName(name)}.`;
  const schema = uniqueName(name).replace(/[^a-z0-9_]/g, '_');
  const logger = createLogger('test', 'silent');
  // migrateUp waits for another file's migration (one lock per database).
  await migrateUp({ databaseUrl: env.DATABASE_URL ?? '', dir: join(process.cwd(), 'migrations'), schema, logger });
  const withTopics = options.topics ?? true;
  if (withTopics) {
    const admin = rawKafka().admin();
    await admin.connect();
    try {
      await createTopics(admin, topicSettings({ partitions: 2 }), { prefix });
    } finally {
      await admin.disconnect();
    }
  }
  await registerSchemas({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', schemasDir: join(process.cwd(), 'schemas'), subjectPrefix: prefix });
  return {
    env,
    prefix,
    schema,
    topics: topicNames(prefix),
    codec: createAvroCodec({ registryUrl: env.SCHEMA_REGISTRY_URL ?? '', avroOptions: avroTypeOptions() }),
    async teardown() {
      const client = new pg.Client({ connectionString: env.DATABASE_URL });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
      await client.end();
      if (withTopics) {
        const admin = rawKafka().admin();
        await admin.connect();
        const mine = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
        if (mine.length > 0) await admin.deleteTopics({ topics: mine }).catch(() => undefined);
        await admin.disconnect();
      }
      for (const topic of TOPICS) {
        const url = `${env.SCHEMA_REGISTRY_URL}/subjects/${encodeURIComponent(`${prefix}${topic}-value`)}`;
        await fetch(url, { method: 'DELETE' }).catch(() => undefined);
        await fetch(`${url}?permanent=true`, { method: 'DELETE' }).catch(() => undefined);
      }
    },
  };
}
