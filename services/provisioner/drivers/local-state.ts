/**
 * The local driver's state store: one folder per agent, `<stateDir>/<agentId>/`, holding
 * `state.json` (the last instance started there: pid, fence, instanceId, the kernel's start time of
 * the process, ready, and its exit once seen) and `instance` (which deployment owns the folder, so
 * two provisioners sharing a state folder never take each other's agents for orphans).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createKeyedQueue } from '../../../lib/keyed-queue.ts';
import { errorMessage, permanentError, retryableError } from '../../../lib/errors.ts';
import type { Logger } from '../../../lib/logger.ts';

/** What `state.json` holds about the last instance started in an agent's folder. */
export interface LocalAgentState {
  readonly version: 1;
  readonly agentId: string;
  readonly pid: number;
  readonly generation: number;
  readonly attempt: number;
  readonly instanceId: string;
  readonly startedAt: string;
  /** Start time of the process in clock ticks since boot (Linux `/proc/<pid>/stat`), null elsewhere. */
  readonly processStart: string | null;
  /** The agent said ready (its first heartbeat was acknowledged). */
  readonly ready: boolean;
  readonly exitedAt?: string;
  readonly exitCode?: number | null;
  readonly signal?: string | null;
}

const STATE_FILE = 'state.json';
const OWNER_FILE = 'instance';
export const LOG_FILE = 'agent.log';
export const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;

export function parseState(text: string): LocalAgentState | null {
  try {
    const value = JSON.parse(text) as Partial<LocalAgentState>;
    if (
      typeof value === 'object' &&
      value !== null &&
      typeof value.agentId === 'string' &&
      Number.isInteger(value.pid) &&
      Number.isInteger(value.generation) &&
      Number.isInteger(value.attempt) &&
      typeof value.instanceId === 'string'
    ) {
      return value as LocalAgentState;
    }
  } catch {
    // An unreadable state file is treated as no state.
  }
  return null;
}

export interface StateStore {
  readonly stateDir: string;
  /** The agent's folder; a permanent INVALID_AGENT_ID for an id that cannot name one. */
  folderOf(agentId: string): string;
  /** Marks the folder as this deployment's (at provision and launch). */
  claim(agentId: string): Promise<void>;
  /** Agent folders owned by this deployment (a folder without an owner file: the default instance's). */
  owned(): Promise<string[]>;
  read(agentId: string): Promise<LocalAgentState | null>;
  /** Writes state.json atomically (temp file + rename), in order per agent; never throws. */
  write(agentId: string, state: LocalAgentState): Promise<void>;
  /** The synchronous form of `write`, for the record that must exist before anything else happens. */
  writeNow(agentId: string, state: LocalAgentState): void;
  /** Resolves once the writes queued for the agent so far are on disk. */
  settled(agentId: string): Promise<void>;
  idle(): Promise<void>;
}

export interface StateStoreOptions {
  readonly stateDir: string;
  /** This deployment (see LocalDriverOptions.instance). */
  readonly instance: string;
  /** True when the instance is the default one, which also owns folders written before owner files existed. */
  readonly isDefaultInstance: boolean;
  readonly log: Logger;
  /** A record of an instance already replaced by a newer one must not overwrite the newer one's. */
  readonly superseded: (agentId: string, state: LocalAgentState) => boolean;
}

export function createStateStore(options: StateStoreOptions): StateStore {
  const { stateDir, log } = options;
  const writes = createKeyedQueue();

  function folderOf(agentId: string): string {
    if (typeof agentId !== 'string' || !SAFE_ID.test(agentId) || agentId === '.' || agentId === '..') {
      throw permanentError('INVALID_AGENT_ID', `agent id ${JSON.stringify(agentId)} cannot name a folder (letters, digits, '.', '_', '-')`);
    }
    return join(stateDir, agentId);
  }

  function ownerOf(agentId: string): string | null {
    try {
      return readFileSync(join(stateDir, agentId, OWNER_FILE), 'utf8').trim();
    } catch {
      return null;
    }
  }

  return {
    stateDir,
    folderOf,
    async claim(agentId) {
      if (ownerOf(agentId) === options.instance) return;
      await writeFile(join(folderOf(agentId), OWNER_FILE), `${options.instance}\n`, { mode: 0o600 });
    },
    async owned() {
      let entries;
      try {
        entries = await readdir(stateDir, { withFileTypes: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw retryableError('LIST_FAILED', `cannot list ${stateDir}: ${errorMessage(error)}`, error);
      }
      return entries
        .filter((e) => e.isDirectory() && SAFE_ID.test(e.name))
        .map((e) => e.name)
        .filter((id) => {
          const owner = ownerOf(id);
          return owner === options.instance || (owner === null && options.isDefaultInstance);
        });
    },
    async read(agentId) {
      try {
        return parseState(await readFile(join(stateDir, agentId, STATE_FILE), 'utf8'));
      } catch {
        return null;
      }
    },
    write(agentId, state) {
      const dir = join(stateDir, agentId);
      return writes.run(agentId, async () => {
        if (options.superseded(agentId, state)) return;
        const temp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}`);
        try {
          await writeFile(temp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
          await rename(temp, join(dir, STATE_FILE));
        } catch (error) {
          // The folder may be gone (destroyed); nothing to record then.
          if ((error as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ agentId, err: errorMessage(error) }, 'could not write state.json');
          await rm(temp, { force: true }).catch(() => undefined);
        }
      });
    },
    writeNow(agentId, state) {
      const dir = join(stateDir, agentId);
      const temp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}`);
      try {
        writeFileSync(temp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
        renameSync(temp, join(dir, STATE_FILE));
      } catch (error) {
        log.warn({ agentId, err: errorMessage(error) }, 'could not write state.json');
        rmSync(temp, { force: true });
      }
    },
    settled: (agentId) => writes.settled(agentId),
    idle: () => writes.idle(),
  };
}
