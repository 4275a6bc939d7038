import { randomBytes } from 'node:crypto';
import { localStackEnv } from '../../dev/stack/endpoints.ts';

/** Where the integration tests find the real servers: the environment, else the local stack. */
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
