/**
 * Process supervision primitives of the local driver: is a pid still the process we started (not a
 * zombie, not a later process that reused the pid), signalling an agent's whole process group, and
 * the environment an agent gets. No state of its own.
 */
import { existsSync, readFileSync } from 'node:fs';
import { errorMessage } from '../../../lib/errors.ts';
import type { Logger } from '../../../lib/logger.ts';
import type { StartFence } from './types.ts';

/** `[state, starttime]` of a process from `/proc/<pid>/stat`; null when unreadable (gone, or no procfs). */
function procStat(pid: number): { state: string; start: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const start = fields[19];
  return state !== undefined && start !== undefined ? { state, start } : null;
}

const HAS_PROCFS = existsSync('/proc/self/stat');

/** The kernel's start time of the process (clock ticks since boot), null without procfs. */
export function processStartOf(pid: number): string | null {
  return HAS_PROCFS ? (procStat(pid)?.start ?? null) : null;
}

/** Alive and still the same process (not a zombie, not a later process that reused the pid). */
export function isAlive(pid: number, processStart: string | null): boolean {
  if (!Number.isInteger(pid) || pid <= 1) return false;
  try {
    process.kill(pid, 0);
  } catch {
    // ESRCH: gone. EPERM: a process of another user holds the pid, so it is not our agent any more.
    return false;
  }
  if (!HAS_PROCFS) return true;
  const stat = procStat(pid);
  if (stat === null || stat.state === 'Z' || stat.state === 'X') return false;
  return processStart === null || stat.start === processStart;
}

/** Sends `signal` to the agent's whole process group (it is the group's leader: pgid = pid). */
export function signalGroup(agentId: string, pid: number, signal: NodeJS.Signals, log: Logger): void {
  if (!Number.isInteger(pid) || pid <= 1) return;
  try {
    process.kill(-pid, signal);
    log.info({ agentId, pid, signal }, 'signalled the agent process group');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return;
    // A group we cannot signal: at least the leader.
    try {
      process.kill(pid, signal);
    } catch {
      log.warn({ agentId, pid, signal, err: errorMessage(error) }, 'could not signal the agent');
    }
  }
}

/** Kills whatever is left in a process group whose leader ended; silent when nothing is. */
export function killGroupRemains(pid: number): void {
  // The leader's pid is not reused while its group still has members, so this cannot hit an
  // unrelated group.
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // ESRCH: nothing left in the group.
  }
}

const INHERITED_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'];

/**
 * An agent's environment: never the provisioner's (it holds database passwords and the like), only
 * PATH, HOME, LANG, LC_ALL, TZ and TMPDIR when set, `agentEnv`, and the agent's id and fence.
 */
export function agentEnvironment(agentId: string, fence: StartFence, agentEnv: Readonly<Record<string, string>>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const name of INHERITED_ENV) if (process.env[name] !== undefined) env[name] = process.env[name];
  Object.assign(env, agentEnv);
  env.AGENT_ID = agentId;
  env.AGENT_GENERATION = String(fence.generation);
  env.AGENT_ATTEMPT = String(fence.attempt);
  return env;
}
