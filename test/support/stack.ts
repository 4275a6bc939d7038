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
 * credentials are the operator's (a super user: tests create and delete their own topics) unless
 * KAFKA_SSL_CERT_FILE/KAFKA_SSL_KEY_FILE say otherwise.
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
 * environment's (the operator's unless KAFKA_SSL_*_FILE are set).
 */
export function testTls(principal?: StackPrincipal): KafkaTls {
  const env = testEnv();
  const pki = stackPkiFiles(join(process.cwd(), '.stack'));
  const files = principal === undefined ? { ca: env.KAFKA_SSL_CA_FILE ?? pki.ca, cert: env.KAFKA_SSL_CERT_FILE ?? '', key: env.KAFKA_SSL_KEY_FILE ?? '' } : { ca: pki.ca, ...pki.principals[principal] };
  return { ca: readFileSync(files.ca, 'utf8'), cert: readFileSync(files.cert, 'utf8'), key: readFileSync(files.key, 'utf8') };
}

/** kafkajs' client configuration for the test brokers as `principal` (default: the test environment's), silent. */
export function testKafkaConfig(clientId: string, principal?: StackPrincipal): KafkaConfig {
  return { clientId, brokers: brokers(), ssl: kafkajsSsl(testTls(principal)), logLevel: logLevel.NOTHING };
}

/** The Kafka variables of a process the test starts (an agent, a fixture), as `principal` (default: the test environment's). */
export function kafkaEnv(principal?: StackPrincipal): Record<string, string> {
  const env = testEnv();
  const pki = stackPkiFiles(join(process.cwd(), '.stack'));
  const files = principal === undefined ? { cert: env.KAFKA_SSL_CERT_FILE ?? '', key: env.KAFKA_SSL_KEY_FILE ?? '' } : pki.principals[principal];
  return {
    KAFKA_BROKERS: env.KAFKA_BROKERS ?? '',
    KAFKA_SECURITY_PROTOCOL: env.KAFKA_SECURITY_PROTOCOL ?? 'ssl',
    KAFKA_SSL_CA_FILE: env.KAFKA_SSL_CA_FILE ?? pki.ca,
    KAFKA_SSL_CERT_FILE: files.cert,
    KAFKA_SSL_KEY_FILE: files.key,
  };
}
