import type { Logger } from '../../../../lib/logger.ts';
import { runCleanup, settlesWithin } from '../../../../lib/runtime/shutdown.ts';

/** A logger that keeps what was logged, by level. */
function capturingLogger(): { logger: Logger; lines: { level: string; fields: Record<string, unknown>; msg: string }[] } {
  const lines: { level: string; fields: Record<string, unknown>; msg: string }[] = [];
  const at = (level: string) => (fields: Record<string, unknown>, msg: string) => void lines.push({ level, fields, msg });
  return { logger: { info: at('info'), warn: at('warn'), error: at('error') } as unknown as Logger, lines };
}

describe('runCleanup', () => {
  it('runs every step in order, reports a step that overruns the grace, and names a slow step while it runs', async () => {
    const { logger, lines } = capturingLogger();
    const ran: string[] = [];
    const failures = await runCleanup(
      [
        ['first', async () => void ran.push('first')],
        ['hangs', () => new Promise<void>(() => ran.push('hangs'))],
        ['fails', async () => Promise.reject(new Error('boom'))],
        ['last', async () => void ran.push('last')],
      ],
      120,
      logger,
      30,
    );
    expect(ran).toEqual(['first', 'hangs', 'last']);
    expect(failures).toEqual(['hangs: did not finish within the shutdown grace (120 ms)', 'fails: boom']);
    expect(lines.some((l) => l.level === 'warn' && l.msg === 'shutdown step still running' && l.fields.step === 'hangs')).toBe(true);
    expect(lines.filter((l) => l.msg === 'shutdown step done').map((l) => l.fields.step)).toEqual(['first', 'last']);
  });

  it('settlesWithin: true for work that settles either way in time, false otherwise', async () => {
    expect(await settlesWithin(Promise.resolve(1), 50)).toBe(true);
    expect(await settlesWithin(Promise.reject(new Error('x')), 50)).toBe(true);
    expect(await settlesWithin(new Promise(() => undefined), 20)).toBe(false);
  });
});
