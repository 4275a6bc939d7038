import { z } from 'zod';
import { configFields, loadConfig, type Env } from '../../lib/config.ts';
import { permanentError } from '../../lib/errors.ts';
import { heartbeatKeyPrefix } from '../../lib/heartbeat/last-heartbeat.ts';
import type { ServiceContext } from '../../lib/service/context.ts';

/** Heartbeat service settings (environment variables), validated at start-up. */
export const heartbeatConfigShape = {
  HEARTBEAT_MISS_FACTOR: z.coerce.number('expected a number').min(1, 'expected 1 or more').default(3),
  HEARTBEAT_MIN_TTL_MS: configFields.positiveInt(5_000),
};

export type HeartbeatConfig = z.infer<z.ZodObject<typeof heartbeatConfigShape>>;

export interface RunningHeartbeat {
  readonly keyPrefix: string;
}

export function loadHeartbeatConfig(env: Env): HeartbeatConfig {
  return loadConfig(heartbeatConfigShape, env);
}

/** Wires the heartbeat service into a service context (work in progress: starts and stops cleanly). */
export async function startHeartbeat(ctx: ServiceContext, _config: HeartbeatConfig): Promise<RunningHeartbeat> {
  if (!ctx.redis) throw permanentError('SERVICE_WIRING', 'the heartbeat service needs a context with Redis');
  await Promise.resolve();
  return { keyPrefix: heartbeatKeyPrefix(ctx.config.TOPIC_PREFIX) };
}
