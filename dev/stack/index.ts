import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { errorMessage, permanentError } from '../../lib/errors.ts';
import { containersComponent } from './containers.ts';
import { kafkaComponent } from './kafka.ts';
import { kubeComponent } from './kube.ts';
import { opaComponent } from './opa.ts';
import { postgresComponent } from './postgres.ts';
import { prometheusComponent } from './prometheus.ts';
import { redisComponent } from './redis.ts';
import { s3Component } from './s3.ts';
import { schemaRegistryComponent } from './schema-registry.ts';
import { vaultComponent } from './vault.ts';
import type { ComponentStatus, StackComponent, StackContext } from './types.ts';

export type { ComponentStatus, StackContext } from './types.ts';
export { LOCAL_STACK, localStackEnv } from './endpoints.ts';

/**
 * Components started only when asked (`stack up --with <name>,…`): heavy, and needed only by some
 * tests. One line each. `stack status`, `stack env` and `stack down` always consider them.
 */
export const OPTIONAL_COMPONENTS: Readonly<Record<string, () => StackComponent>> = {
  kube: kubeComponent,
  containers: containersComponent,
  prometheus: prometheusComponent,
};

/** The names `--with` accepts. */
export const optionalComponentNames = (): string[] => Object.keys(OPTIONAL_COMPONENTS);

/** The core components, plus the optional ones named (an unknown name is a USAGE error). */
export function stackComponents(optional: readonly string[] = []): StackComponent[] {
  const unknown = optional.filter((name) => !Object.hasOwn(OPTIONAL_COMPONENTS, name));
  if (unknown.length > 0) {
    throw permanentError('USAGE', `unknown optional component ${unknown.join(', ')}: expected ${optionalComponentNames().join(', ')}`);
  }
  // In dependency order (the registry keeps its schemas in Postgres): `stack down` stops in reverse.
  const core = [kafkaComponent(), postgresComponent(), schemaRegistryComponent(), redisComponent(), s3Component(), opaComponent(), vaultComponent()];
  return [...core, ...[...new Set(optional)].map((name) => (OPTIONAL_COMPONENTS[name] as () => StackComponent)())];
}

/** Every component, the optional ones included: what status, env and down look at. */
export const allStackComponents = (): StackComponent[] => stackComponents(optionalComponentNames());

/** Whether `name` is optional (its being down does not make the stack unhealthy). */
export const isOptionalComponent = (name: string): boolean => Object.hasOwn(OPTIONAL_COMPONENTS, name);

export function stackContext(root: string, progress: (line: string) => void, env: NodeJS.ProcessEnv = process.env): StackContext {
  const stackDir = join(root, '.stack');
  mkdirSync(join(stackDir, 'logs'), { recursive: true });
  return { root, stackDir, progress, env };
}

export interface UpResult {
  readonly component: string;
  readonly outcome: 'started' | 'reused' | 'external' | 'failed';
  readonly seconds: number;
  readonly error?: string;
}

/**
 * Installs and starts every component, all at once (each waits only for itself), and reports each
 * outcome; one failing component does not stop the others from coming up.
 */
export async function stackUp(ctx: StackContext, components = stackComponents()): Promise<UpResult[]> {
  return Promise.all(
    components.map(async (component): Promise<UpResult> => {
      const started = Date.now();
      const seconds = () => Math.round((Date.now() - started) / 100) / 10;
      try {
        await component.install(ctx);
        const outcome = await component.start(ctx);
        ctx.progress(`${component.name}: ${outcome === 'reused' ? 'already running' : outcome} at ${component.address} (${seconds()} s)`);
        return { component: component.name, outcome, seconds: seconds() };
      } catch (error) {
        ctx.progress(`${component.name}: FAILED: ${errorMessage(error)}`);
        return { component: component.name, outcome: 'failed', seconds: seconds(), error: errorMessage(error) };
      }
    }),
  );
}

export async function stackDown(ctx: StackContext, components = stackComponents()): Promise<void> {
  // Reverse order: dependents first (the registry before Postgres), Kafka last so it can flush cleanly.
  for (const component of [...components].reverse()) {
    const stopped = await component.stop(ctx).catch((error: unknown) => {
      ctx.progress(`${component.name}: stop failed: ${errorMessage(error)}`);
      return false;
    });
    ctx.progress(`${component.name}: ${stopped ? 'stopped' : 'was not started by this stack'}`);
  }
}

export function stackStatus(ctx: StackContext, components = stackComponents()): Promise<ComponentStatus[]> {
  return Promise.all(components.map((component) => component.status(ctx)));
}

export function stackEnv(ctx: StackContext, components = stackComponents()): Record<string, string> {
  const env: Record<string, string> = {};
  for (const component of components) Object.assign(env, component.env(ctx));
  if (ctx.env.DATABASE_URL) env.DATABASE_URL = ctx.env.DATABASE_URL;
  if (ctx.env.REDIS_URL) env.REDIS_URL = ctx.env.REDIS_URL;
  return env;
}
