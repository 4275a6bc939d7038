import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

/**
 * JSON logs with `service` on every line; per-record children add `agentId`, `requestId` and
 * `traceId`. Anything that looks like a secret is redacted.
 */
export function createLogger(service: string, level: LevelWithSilent = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['password', '*.password', 'secret', '*.secret', 'token', '*.token', 'authorization', '*.authorization'], censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
