import { setTimeout as sleep } from 'node:timers/promises';
import { runner } from 'node-pg-migrate';
import type { Logger } from '../logger.ts';
import { retryableError } from '../errors.ts';

export interface MigrateOptions {
  readonly databaseUrl: string;
  /** The folder of SQL migrations (`<root>/migrations`). */
  readonly dir: string;
  /** Migrate into this schema (created when missing); default `public`. */
  readonly schema?: string;
  readonly logger: Logger;
}

// node-pg-migrate holds one advisory lock per database and fails at once when it is taken (another
// replica's pre-upgrade hook, or a migration of another schema): wait for it instead.
const LOCK_TAKEN = 'Another migration is already running';
const LOCK_WAIT_MS = 120_000;

/** Applies every pending migration, under node-pg-migrate's advisory lock; returns their names. */
export async function migrateUp(options: MigrateOptions): Promise<string[]> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await migrateOnce(options);
    } catch (error) {
      const locked = String((error as { cause?: unknown }).cause ?? error).includes(LOCK_TAKEN);
      if (!locked || Date.now() > deadline) throw error;
      if (attempt === 1) options.logger.info('another migration holds the lock; waiting for it');
      await sleep(Math.min(2_000, 100 * attempt));
    }
  }
}

async function migrateOnce(options: MigrateOptions): Promise<string[]> {
  try {
    const applied = await runner({
      databaseUrl: options.databaseUrl,
      dir: options.dir,
      direction: 'up',
      migrationsTable: 'pgmigrations',
      schema: options.schema ?? 'public',
      createSchema: true,
      count: Infinity,
      checkOrder: true,
      singleTransaction: true,
      log: (message: string) => options.logger.debug(message),
      logger: { debug: () => undefined, info: (m: string) => options.logger.debug(m), warn: (m: string) => options.logger.warn(m), error: (m: string) => options.logger.error(m) },
    });
    return applied.map((m) => m.name);
  } catch (error) {
    throw retryableError('MIGRATION_FAILED', `database migration failed: ${String(error)}`, error);
  }
}
