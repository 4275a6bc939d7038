import { join } from 'node:path';
import { registerSchemas } from '../../lib/contracts/registry.ts';
import type { TopicName } from '../../lib/contracts/types.ts';
import { testEnv } from './stack.ts';

/**
 * Registers the topics' schemas under their unprefixed subjects (`audit-events-value`, …), as a
 * test that encodes without a TOPIC_PREFIX needs: on a fresh stack's registry nothing else has
 * registered them yet. Idempotent (an identical schema is left as it is).
 */
export async function registerUnprefixedSchemas(topics: readonly TopicName[]): Promise<void> {
  await registerSchemas({ registryUrl: testEnv().SCHEMA_REGISTRY_URL ?? '', schemasDir: join(process.cwd(), 'schemas'), topics });
}
