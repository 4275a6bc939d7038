import { errorMessage } from '../../../lib/errors.ts';
import type { Logger } from '../../../lib/logger.ts';
import type { DriverEvent, DriverEventListener } from './types.ts';

/**
 * A driver's reports go out on a later turn of the event loop, in order, never from inside a driver
 * call, and none after the driver closed; a listener that throws is logged, not propagated.
 */
export function createEventEmitter(onEvent: DriverEventListener, log: Logger, isClosed: () => boolean): (agentId: string, event: DriverEvent) => void {
  return (agentId, event) => {
    setImmediate(() => {
      if (isClosed()) return;
      try {
        onEvent(agentId, event);
      } catch (error) {
        log.error({ agentId, event: event.type, err: errorMessage(error) }, 'driver event listener threw');
      }
    });
  };
}
