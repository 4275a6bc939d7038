import type { Command } from 'commander';
import { kafkaConfigShape, kafkaTlsOf, loadConfig } from '../lib/config.ts';
import { aclPlan, applyAcls, KAFKA_ROLES, principalsFromEnv } from '../lib/contracts/acls.ts';
import { AclOperationTypes, AclResourceTypes, createKafkajsAdmin, ResourcePatternTypes, type AclEntry } from '../lib/kafka/kafkajs.ts';
import { loadServiceEnv } from '../lib/secrets.ts';
import { registerSchemas } from '../lib/contracts/registry.ts';
import { defaultSchemasDir } from '../lib/contracts/schemas.ts';
import { createTopics, topicSettingsFromEnv } from '../lib/contracts/topics.ts';
import { serviceConfigShape } from '../lib/service/context.ts';
import { permanentError } from '../lib/errors.ts';

const DAY_MS = 24 * 60 * 60 * 1000;

/** A required variable; against the local stack, `eval "$(npx agent-manager stack env --export)"` sets them. */
function requiredEnv(name: string, expected: string): string {
  const value = process.env[name]?.trim();
  if (value === undefined || value === '') throw permanentError('CONFIG_INVALID', `${name} is not set: expected ${expected} (for the local stack: eval "$(npx agent-manager stack env --export)")`);
  return value;
}

/** `Write agent-requests`, `Read group kernel*`. */
function describeAcl(entry: AclEntry): string {
  const operation = entry.operation === AclOperationTypes.READ ? 'Read' : entry.operation === AclOperationTypes.WRITE ? 'Write' : String(entry.operation);
  const kind = entry.resourceType === AclResourceTypes.GROUP ? 'group ' : '';
  const prefixed = entry.resourcePatternType === ResourcePatternTypes.PREFIXED ? '*' : '';
  return `${operation} ${kind}${entry.resourceName}${prefixed}`;
}

function days(ms: number): string {
  const d = ms / DAY_MS;
  return Number.isInteger(d) ? `${d}d` : `${ms}ms`;
}

export function registerContractCommands(program: Command, root: string, setExitCode: (code: number) => void): void {
  const schemas = program.command('schemas').description('The Avro topic contracts in schemas/ and the Schema Registry.');

  schemas
    .command('register')
    .description(
      'Register every topic schema as subject <topic>-value (SCHEMA_REGISTRY_URL). ' +
        'Each is first checked locally for BACKWARD compatibility with the latest registered version; nothing is registered if any fails.',
    )
    .action(async () => {
      const registryUrl = requiredEnv('SCHEMA_REGISTRY_URL', 'the Schema Registry URL');
      // Subjects follow the topics' names, TOPIC_PREFIX included, as the services' codec looks them up.
      const { TOPIC_PREFIX: subjectPrefix } = loadConfig({ TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX }, process.env);
      const results = await registerSchemas({ registryUrl, schemasDir: defaultSchemasDir(root), subjectPrefix });
      const width = Math.max(...results.map((r) => r.subject.length));
      for (const r of results) console.log(`${r.subject.padEnd(width)}  ${r.status.padEnd(10)}  id ${r.id}`);
      setExitCode(0);
    });

  const topics = program.command('topics').description('The Kafka topics of the contracts and their dead-letter topics.');

  topics
    .command('create')
    .description(
      'Create every topic and its .dlq that does not exist yet (KAFKA_BROKERS; names prefixed with TOPIC_PREFIX), with partitions, replication factor, ' +
        'min.insync.replicas and retention from TOPIC_PARTITIONS, TOPIC_REPLICATION_FACTOR, TOPIC_MIN_INSYNC_REPLICAS, TOPIC_RETENTION_DAYS, ' +
        'AUDIT_RETENTION_DAYS and DLQ_RETENTION_DAYS. Existing topics are left alone and reported, with any difference from the configuration. ' +
        'Then applies the ACLs of every role (kernel, ingest, provisioner, heartbeat, archiver, agent: principals User:<role> unless KAFKA_ACL_PRINCIPALS says ' +
        'otherwise, e.g. kernel=User:kernel-prod); connect as a principal allowed to create topics and ACLs (KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_*_FILE).',
    )
    .action(async () => {
      const env = await loadServiceEnv(process.env);
      const settings = topicSettingsFromEnv(env);
      const principals = principalsFromEnv(env);
      if (env.KAFKA_BROKERS === undefined || env.KAFKA_BROKERS.trim() === '') requiredEnv('KAFKA_BROKERS', 'a comma-separated list of host:port');
      const kafka = loadConfig(kafkaConfigShape, env);
      // The fleet's topic names (and its groups' ACLs) carry TOPIC_PREFIX, as the services read them.
      const { TOPIC_PREFIX: prefix } = loadConfig({ TOPIC_PREFIX: serviceConfigShape.TOPIC_PREFIX }, env);
      const admin = createKafkajsAdmin({ clientId: 'agent-manager-topics', brokers: kafka.KAFKA_BROKERS, tls: kafkaTlsOf(kafka) });
      await admin.connect();
      try {
        const results = await createTopics(admin, settings, { prefix });
        const width = Math.max(...results.map((r) => r.topic.length));
        for (const r of results) {
          const config = `partitions=${r.partitions} rf=${r.replicationFactor} min.insync.replicas=${r.config['min.insync.replicas']} retention=${days(Number(r.config['retention.ms']))}`;
          const drift = r.drift.length > 0 ? `  differs: ${r.drift.join(', ')}` : '';
          console.log(`${r.topic.padEnd(width)}  ${r.status.padEnd(7)}  ${config}${drift}`);
        }
        const plan = aclPlan({ principals, prefix });
        const acls = await applyAcls(admin, plan);
        if (acls.status === 'unsupported') {
          console.log('acls: NOT applied: the cluster has no authorizer, so every client may do everything');
        } else {
          for (const role of KAFKA_ROLES) {
            const rights = plan.filter((e) => e.principal === principals[role]).map(describeAcl);
            console.log(`acl ${principals[role]}: ${rights.join(', ')}`);
          }
        }
        setExitCode(0);
      } finally {
        await admin.disconnect();
      }
    });
}
