import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KafkaConfig } from 'kafkajs';
import { logLevel } from 'kafkajs';
import { localStackEnv, stackPkiFiles, type StackPrincipal } from '../../dev/stack/endpoints.ts';
import type { KafkaTls } from '../../lib/config.ts';
import { kafkajsSsl } from '../../lib/kafka/kafkajs.ts';

/**
 * Where the integration tests find the real servers: the environment, else the local stack. Kafka
 * credentials are the operator's (a super user: tests create and delete their own topics), as PEM
 * contents (KAFKA_SSL_CA, KAFKA_SSL_CERT, KAFKA_SSL_KEY) so an in-process service reads them
 * without `<NAME>_FILE`; AGENT_KAFKA_SSL_*_FILE are the agents' files.
 */
export function testEnv(): Record<string, string> {
  const defaults = localStackEnv();
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(defaults)) env[key] = process.env[key] ?? value;
  return env;
}

/** A unique, readable name for a test's own topic, group, bucket or key prefix. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

export function brokers(): string[] {
  return (testEnv().KAFKA_BROKERS ?? '').split(',');
}

/**
 * The TLS credentials of a principal of the local stack (`.stack/pki`), or by default the test
 * environment's (the operator's unless the environment gives KAFKA_SSL_CA/CERT/KEY).
 */
export function testTls(principal?: StackPrincipal): KafkaTls {
  const env = testEnv();
  const pki = stackPkiFiles(join(process.cwd(), '.stack'));
  if (principal === undefined) return { ca: env.KAFKA_SSL_CA, cert: env.KAFKA_SSL_CERT ?? '', key: env.KAFKA_SSL_KEY ?? '' };
  const files = pki.principals[principal];
  return { ca: readFileSync(pki.ca, 'utf8'), cert: readFileSync(files.cert, 'utf8'), key: readFileSync(files.key, 'utf8') };
}

/** kafkajs' client configuration for the test brokers as `principal` (default: the test environment's), silent. */
export function testKafkaConfig(clientId: string, principal?: StackPrincipal): KafkaConfig {
  return { clientId, brokers: brokers(), ssl: kafkajsSsl(testTls(principal)), logLevel: logLevel.NOTHING };
}

/**
 * The Kafka variables of a process a test starts (an agent, a fixture): the test environment's
 * credentials (PEM contents), or the files of a stack principal.
 */
export function kafkaEnv(principal?: StackPrincipal): Record<string, string> {
  const env = testEnv();
  const common = { KAFKA_BROKERS: env.KAFKA_BROKERS ?? '', KAFKA_SECURITY_PROTOCOL: env.KAFKA_SECURITY_PROTOCOL ?? 'ssl' };
  if (principal === undefined) return { ...common, KAFKA_SSL_CA: env.KAFKA_SSL_CA ?? '', KAFKA_SSL_CERT: env.KAFKA_SSL_CERT ?? '', KAFKA_SSL_KEY: env.KAFKA_SSL_KEY ?? '' };
  const pki = stackPkiFiles(join(process.cwd(), '.stack'));
  return { ...common, KAFKA_SSL_CA_FILE: pki.ca, KAFKA_SSL_CERT_FILE: pki.principals[principal].cert, KAFKA_SSL_KEY_FILE: pki.principals[principal].key };
}
