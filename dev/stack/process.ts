import { spawn, execFile } from 'node:child_process';
import { openSync, closeSync, readFileSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { permanentError, retryableError } from '../../lib/errors.ts';
import type { ComponentStatus } from './types.ts';

const execFileAsync = promisify(execFile);

export interface DetachedProcess {
  command: string;
  args: readonly string[];
  cwd: string;
  logFile: string;
  pidFile: string;
  env?: NodeJS.ProcessEnv;
}

/** Starts a long-running server in its own process group, detached from this CLI, logging to a file. */
export function spawnDetached(options: DetachedProcess): number {
  const log = openSync(options.logFile, 'a');
  try {
    const child = spawn(options.command, options.args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      detached: true,
      stdio: ['ignore', log, log],
    });
    if (child.pid === undefined) {
      throw permanentError('STACK_SPAWN_FAILED', `could not start ${options.command}; see ${options.logFile}`);
    }
    child.unref();
    writeFileSync(options.pidFile, `${child.pid}\n`);
    return child.pid;
  } finally {
    closeSync(log);
  }
}

export function readPid(pidFile: string): number | undefined {
  if (!existsSync(pidFile)) return undefined;
  const pid = Number.parseInt(readFileSync(pidFile, 'utf8').trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Stops the process group started by spawnDetached: `signal` first, SIGKILL after the grace. */
export async function stopProcessGroup(pidFile: string, signal: NodeJS.Signals, graceMs: number): Promise<boolean> {
  const pid = readPid(pidFile);
  if (pid === undefined) return false;
  const signalGroup = (sig: NodeJS.Signals) => {
    try {
      process.kill(-pid, sig);
    } catch {
      try {
        process.kill(pid, sig);
      } catch {
        /* already gone */
      }
    }
  };
  if (isAlive(pid)) {
    signalGroup(signal);
    const deadline = Date.now() + graceMs;
    while (isAlive(pid) && Date.now() < deadline) await sleep(200);
    if (isAlive(pid)) signalGroup('SIGKILL');
  }
  rmSync(pidFile, { force: true });
  return true;
}

/** Polls `check` until it passes or the timeout ends; the error names the component and its log. */
export async function waitUntil(
  component: string,
  check: () => Promise<boolean>,
  options: { timeoutMs: number; logFile: string; pid?: number },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    if (options.pid !== undefined && !isAlive(options.pid)) {
      throw permanentError('STACK_COMPONENT_EXITED', `${component}: the process exited during start-up; see ${options.logFile}`);
    }
    await sleep(300);
  }
  throw retryableError(
    'STACK_COMPONENT_TIMEOUT',
    `${component}: not healthy after ${Math.round(options.timeoutMs / 1000)} s; see ${options.logFile}`,
  );
}

export interface CommandResult {
  stdout: string;
  stderr: string;
}

/** Runs an install/admin command to completion; a failure names the step and keeps its output in a log. */
export async function run(
  step: string,
  command: string,
  args: readonly string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; logFile?: string; timeoutMs?: number } = {},
): Promise<CommandResult> {
  try {
    const result = await execFileAsync(command, [...args], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      timeout: options.timeoutMs ?? 15 * 60_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    if (options.logFile) writeFileSync(options.logFile, `$ ${command} ${args.join(' ')}\n${result.stdout}${result.stderr}`, { flag: 'a' });
    return { stdout: result.stdout, stderr: result.stderr };
  } catch (error) {
    const failed = error as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    const output = `${failed.stdout ?? ''}${failed.stderr ?? ''}`;
    if (options.logFile) writeFileSync(options.logFile, `$ ${command} ${args.join(' ')}\n${output}\n`, { flag: 'a' });
    const where = options.logFile ? `; see ${options.logFile}` : `: ${output.trim().split('\n').slice(-5).join(' | ')}`;
    throw permanentError('STACK_STEP_FAILED', `${step} failed (${command} ${failed.code ?? 'exit non-zero'})${where}`, error);
  }
}

export async function commandExists(command: string): Promise<boolean> {
  try {
    await execFileAsync('sh', ['-c', `command -v ${command}`]);
    return true;
  } catch {
    return false;
  }
}

/** The status of a component whose server this stack may have started (pid file) or found running. */
export async function processStatus(
  component: { name: string; address: string; version: string },
  pidFile: string,
  healthy: () => Promise<boolean>,
): Promise<ComponentStatus> {
  const pid = readPid(pidFile);
  const owned = pid !== undefined && isAlive(pid);
  const up = await healthy().catch(() => false);
  return {
    name: component.name,
    address: component.address,
    version: component.version,
    health: up ? 'healthy' : owned ? 'unhealthy' : 'down',
    owner: owned ? 'stack' : up ? 'external' : 'none',
    pid: owned ? pid : undefined,
  };
}

/** True when something accepts TCP connections on `host:port`. */
export function portInUse(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (inUse: boolean) => {
      socket.destroy();
      resolve(inUse);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** True when `url` answers 2xx within the timeout (an HTTP server's health check). */
export async function httpOk(url: string, timeoutMs = 2000): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return response.ok;
  } catch {
    return false;
  }
}
