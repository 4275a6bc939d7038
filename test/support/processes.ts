import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

/** Starts a TypeScript fixture under this Node (24, type stripping) with extra environment. */
export function startFixture(name: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [join(process.cwd(), 'test', 'fixtures', name)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
  });
  child.once('exit', (code, signal) => {
    if (code !== 0 && signal === null && stderr) console.error(`fixture ${name} exited ${code}:\n${stderr}`);
  });
  return child;
}

export function waitForLine(child: ChildProcess, line: string, timeoutMs = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`fixture did not print "${line}" in ${timeoutMs} ms`)), timeoutMs);
    child.stdout?.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes(line)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`fixture exited (${code}) before printing "${line}"`));
    });
  });
}

export function waitForExit(child: ChildProcess, timeoutMs = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    const timer = setTimeout(() => reject(new Error(`fixture did not exit in ${timeoutMs} ms`)), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}
