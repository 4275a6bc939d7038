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

/** Applies every pending migration, under node-pg-migrate's advisory lock; returns their names. */
export async function migrateUp(options: MigrateOptions): Promise<string[]> {
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
