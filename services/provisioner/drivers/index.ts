/**
 * `createDriver(name, options)`: the allocator driver chosen by configuration. The options are one
 * flat object: what every driver needs (`onEvent`, `logger`), the local driver's settings (also the
 * agents' environment, which the kubernetes driver passes on as plain Pod environment, and the
 * deployment's `instance`, which scopes both drivers' agents), and a section per other driver.
 */
import { permanentError } from '../../../lib/errors.ts';
import type { Logger } from '../../../lib/logger.ts';
import { createKubernetesDriver, type KubernetesDriverOptions } from './kubernetes.ts';
import { createLocalDriver, type LocalDriverOptions } from './local.ts';
import { createSimulatedDriver, type SimulatedDriverOptions } from './simulated.ts';
import type { AllocatorDriver, DriverEventListener, DriverName } from './types.ts';

export { createKubernetesDriver, createKubernetesPodApi, type KubernetesDriverOptions, type PodApi } from './kubernetes.ts';
export { createLocalDriver, type LocalDriverOptions } from './local.ts';
export { createSimulatedDriver, type SimulatedDriver, type SimulatedDriverOptions } from './simulated.ts';

export const DRIVER_NAMES: readonly DriverName[] = ['local', 'kubernetes', 'simulated'];

/** A Kubernetes label value: what an instance name must be. */
export const INSTANCE_PATTERN = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

/**
 * The deployment's instance when none is configured: `agent-manager`, prefixed with the topic
 * prefix when there is one (deployments sharing a cluster differ by it), made a valid label value.
 */
export function defaultInstance(topicPrefix: string): string {
  const name = `${topicPrefix}agent-manager`.replace(/[^A-Za-z0-9._-]/g, '-').slice(-63).replace(/^[^A-Za-z0-9]+/, '');
  return INSTANCE_PATTERN.test(name) ? name : 'agent-manager';
}

type Common = 'onEvent' | 'logger';

export interface DriverOptions extends Partial<Omit<LocalDriverOptions, Common>> {
  readonly onEvent: DriverEventListener;
  readonly logger: Logger;
  /** The kubernetes driver's settings (its `agentEnv` defaults to the top-level one). */
  readonly kubernetes?: Partial<Omit<KubernetesDriverOptions, Common>>;
  readonly simulated?: Partial<Omit<SimulatedDriverOptions, Common>>;
}

export function createDriver(name: DriverName, options: DriverOptions): AllocatorDriver {
  const { onEvent, logger } = options;
  switch (name) {
    case 'local': {
      if (options.stateDir === undefined || options.stateDir === '') {
        throw permanentError('CONFIG_INVALID', 'the local driver needs stateDir (the folder of the agents)');
      }
      return createLocalDriver({
        onEvent,
        logger,
        stateDir: options.stateDir,
        agentEnv: options.agentEnv ?? {},
        ...(options.agentProgram !== undefined ? { agentProgram: options.agentProgram } : {}),
        ...(options.nodePath !== undefined ? { nodePath: options.nodePath } : {}),
        ...(options.readyTimeoutMs !== undefined ? { readyTimeoutMs: options.readyTimeoutMs } : {}),
        ...(options.livenessPollMs !== undefined ? { livenessPollMs: options.livenessPollMs } : {}),
        ...(options.killWaitMs !== undefined ? { killWaitMs: options.killWaitMs } : {}),
        ...(options.instance !== undefined ? { instance: options.instance } : {}),
      });
    }
    case 'kubernetes':
      return createKubernetesDriver({
        ...(options.agentEnv !== undefined ? { agentEnv: options.agentEnv } : {}),
        ...(options.instance !== undefined ? { instance: options.instance } : {}),
        ...options.kubernetes,
        onEvent,
        logger,
      });
    case 'simulated':
      return createSimulatedDriver({ ...options.simulated, onEvent, logger });
    default:
      throw permanentError('CONFIG_INVALID', `unknown allocator driver ${JSON.stringify(name)} (expected ${DRIVER_NAMES.join(', ')})`);
  }
}
