import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_STACK } from './endpoints.ts';
import { findGo, goBuildEnv } from './go.ts';
import { toolCacheDir } from './install.ts';
import { commandExists, httpOk, processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { permanentError } from '../../lib/errors.ts';

/**
 * An OPA server standing in for SentinelNet, the policy decision point the provisioner asks before
 * provisioning. OPA is built from source with the Go toolchain (`go install`, pure Go, no cgo): the
 * module proxy is reachable where release downloads are not. The binary lands in
 * `~/.cache/agent-manager/opa-<version>/opa`, outside the checkout, and is reused by the next runs
 * and fresh clones (and by the tests that compare the Rego policy with the in-process evaluator).
 */
export const OPA_VERSION = '1.22.3';
const OPA_MODULE = 'github.com/open-policy-agent/opa';
/** Where the policy data document is mounted (the Rego policy reads `data.agentmanager.config`). */
export const OPA_DATA_PATH = 'agentmanager.config';
/** The policy and its data, relative to the project's root. */
export const OPA_POLICY_FILE = 'policies/sentinelnet.rego';
export const OPA_DATA_FILE = 'policies/local-policy.json';

const { host, port } = LOCAL_STACK.opa;
const base = `http://${host}:${port}`;
const BUILD_TIMEOUT_MS = 45 * 60_000;

/** The stack's OPA binary (present once `stack up` has built it), cached outside the checkout by version. */
export function stackOpaBinary(env: NodeJS.ProcessEnv = process.env): string {
  return join(toolCacheDir(env, 'opa', OPA_VERSION), 'opa');
}


/** The version an opa binary reports (`Version: 1.22.3`), or undefined when it does not run. */
async function opaVersion(binary: string): Promise<string | undefined> {
  if (!existsSync(binary)) return undefined;
  try {
    const { stdout } = await run('opa version', binary, ['version'], { timeoutMs: 30_000 });
    return /^Version:\s*v?(\S+)/m.exec(stdout)?.[1] ?? 'unknown';
  } catch {
    return undefined;
  }
}


/**
 * True when the server at the stack's address answers `/health` AND has the provisioning policy
 * loaded (a decision with a boolean `allow`): another OPA on the port without it is not reused.
 */
async function policyLoaded(): Promise<boolean> {
  try {
    const response = await fetch(`${base}/v1/data/agentmanager/provisioning`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input: {} }),
      signal: AbortSignal.timeout(2000),
    });
    if (!response.ok) return false;
    const body = (await response.json()) as { result?: { allow?: unknown } };
    return typeof body.result?.allow === 'boolean';
  } catch {
    return false;
  }
}

export function opaComponent(): StackComponent {
  const name = 'opa';
  const files = (ctx: StackContext) => ({
    dir: join(ctx.stackDir, 'opa'),
    binDir: toolCacheDir(ctx.env, 'opa', OPA_VERSION),
    bin: stackOpaBinary(ctx.env),
    pid: join(ctx.stackDir, 'opa', 'pid'),
    log: join(ctx.stackDir, 'logs', 'opa.log'),
    installLog: join(ctx.stackDir, 'logs', 'opa-install.log'),
    policy: join(ctx.root, OPA_POLICY_FILE),
    data: join(ctx.root, OPA_DATA_FILE),
  });
  const healthy = () => httpOk(`${base}/health`);
  const noPolicy = (log: string) =>
    permanentError(
      'STACK_OPA_NO_POLICY',
      `opa: the server on ${base} is up but has no agentmanager.provisioning policy loaded (another OPA on port ${port}? ` +
        `a Rego error in ${OPA_POLICY_FILE}?); see ${log}`,
    );

  return {
    name,
    version: `OPA v${OPA_VERSION} (${OPA_POLICY_FILE}, data ${OPA_DATA_FILE} at ${OPA_DATA_PATH})`,
    address: base,
    env: () => ({ OPA_URL: base }),
    async install(ctx) {
      const f = files(ctx);
      const installed = await opaVersion(f.bin);
      if (installed === OPA_VERSION) return;
      if (installed !== undefined) ctx.progress(`opa: ${f.bin} is version ${installed}, not ${OPA_VERSION}; rebuilding`);
      const go = await findGo('opa', `OPA ${OPA_VERSION}`, stackOpaBinary(ctx.env));
      mkdirSync(f.binDir, { recursive: true });
      mkdirSync(f.dir, { recursive: true });
      ctx.progress(
        `opa: building OPA v${OPA_VERSION} from source with Go (go install ${OPA_MODULE}@v${OPA_VERSION}); ` +
          `the first build takes a minute or two on 2 cores (longer while the other components start), later runs reuse ${f.bin}; log: ${f.installLog}`,
      );
      const started = Date.now();
      const ticker = setInterval(() => ctx.progress(`opa: still building (${Math.round((Date.now() - started) / 1000)} s)`), 60_000);
      ticker.unref();
      // Niced, so that the build leaves CPU to the JVMs starting beside it.
      const nice = await commandExists('nice');
      const goArgs = ['install', '-v', `${OPA_MODULE}@v${OPA_VERSION}`];
      try {
        await run(`opa: go install ${OPA_MODULE}@v${OPA_VERSION}`, nice ? 'nice' : go, nice ? ['-n', '10', go, ...goArgs] : goArgs, {
          cwd: f.dir,
          env: goBuildEnv(ctx, f.binDir),
          logFile: f.installLog,
          timeoutMs: BUILD_TIMEOUT_MS,
        });
      } finally {
        clearInterval(ticker);
      }
      const built = await opaVersion(f.bin);
      if (built !== OPA_VERSION) {
        throw permanentError(
          'STACK_STEP_FAILED',
          `opa: the build finished but ${f.bin} ${built === undefined ? 'does not run' : `reports version ${built}`}; see ${f.installLog}`,
        );
      }
      ctx.progress(`opa: built OPA v${OPA_VERSION} in ${Math.round((Date.now() - started) / 1000)} s`);
    },
    async start(ctx) {
      const f = files(ctx);
      if (await healthy()) {
        if (!(await policyLoaded())) throw noPolicy(f.log);
        return 'reused';
      }
      for (const file of [f.policy, f.data]) {
        if (!existsSync(file)) throw permanentError('STACK_OPA_POLICY_MISSING', `opa: ${file} is missing; the policy server cannot start without it`);
      }
      mkdirSync(f.dir, { recursive: true });
      ctx.progress(`opa: starting on ${base} with ${OPA_POLICY_FILE} and ${OPA_DATA_FILE} at data.${OPA_DATA_PATH}`);
      const pid = spawnDetached({
        command: f.bin,
        args: [
          'run',
          '--server',
          '--addr',
          `${host}:${port}`,
          '--log-level',
          'error',
          // No version check against GitHub releases (no calls to the internet).
          '--skip-version-check',
          // Reload the policy and its data when the files change, so the running server never
          // serves a stale copy of what the in-process evaluator reads.
          '--watch',
          `${OPA_DATA_PATH}:${f.data}`,
          f.policy,
        ],
        cwd: f.dir,
        logFile: f.log,
        pidFile: f.pid,
      });
      await waitUntil(name, healthy, { timeoutMs: 30_000, logFile: f.log, pid });
      if (!(await policyLoaded())) throw noPolicy(f.log);
      return 'started';
    },
    stop: (ctx) => stopProcessGroup(files(ctx).pid, 'SIGTERM', 10_000),
    async status(ctx) {
      const f = files(ctx);
      const status = await processStatus(this, f.pid, healthy);
      if (status.health !== 'healthy' || (await policyLoaded())) return status;
      return { ...status, health: 'unhealthy', version: `${status.version}: policy not loaded` };
    },
  };
}

