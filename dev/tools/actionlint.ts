/**
 * actionlint over the GitHub workflows, for `node dev/tools/lint-workflows.ts` and the test
 * test/integration/dev/tools/actionlint.test.ts.
 *
 * actionlint is built from the Go module proxy (no release downloads are reachable here) into
 * `~/.cache/agent-manager/actionlint-<version>/actionlint`, outside the checkout, so a fresh clone
 * (CI) reuses it; the first build takes about 20 s to a minute on 2 cores. Its shell checks of
 * `run:` scripts need shellcheck: installed from Debian when missing and running as root (as the
 * stack installs its packages); otherwise actionlint silently skips them, which the report says.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { permanentError } from '../../lib/errors.ts';
import { findGo, goBuildEnv } from '../stack/go.ts';
import { stackContext } from '../stack/index.ts';
import { aptInstall, toolCacheDir } from '../stack/install.ts';
import { commandExists, run } from '../stack/process.ts';

export const ACTIONLINT_VERSION = 'v1.7.12';
const MODULE = 'github.com/rhysd/actionlint';
const BUILD_TIMEOUT_MS = 20 * 60_000;

export const actionlintBinary = (env: NodeJS.ProcessEnv = process.env) => join(toolCacheDir(env, 'actionlint', ACTIONLINT_VERSION), 'actionlint');

export interface ActionlintTool {
  readonly binary: string;
  /** Whether shellcheck is on the PATH (actionlint checks `run:` scripts with it only then). */
  readonly shellcheck: boolean;
}

/**
 * Builds actionlint once per version (into a temporary folder, renamed into place, so a cut-short
 * build never leaves half a binary) and installs shellcheck when it can.
 */
export async function ensureActionlint(root: string, progress: (line: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<ActionlintTool> {
  const ctx = stackContext(root, progress, env);
  const binary = actionlintBinary(env);
  if (!existsSync(binary)) {
    const go = await findGo('actionlint', `actionlint ${ACTIONLINT_VERSION}`, binary);
    const cacheDir = join(binary, '..');
    mkdirSync(join(cacheDir, '..'), { recursive: true });
    const work = mkdtempSync(join(cacheDir, '..', '.build-actionlint-'));
    try {
      progress(`actionlint: building ${ACTIONLINT_VERSION} from the Go module proxy (once; later runs reuse ${binary})`);
      await run('actionlint: go install', go, ['install', '-trimpath', `${MODULE}/cmd/actionlint@${ACTIONLINT_VERSION}`], {
        cwd: work,
        env: goBuildEnv(ctx, work),
        logFile: join(ctx.stackDir, 'logs', 'actionlint-build.log'),
        timeoutMs: BUILD_TIMEOUT_MS,
      });
      const built = join(work, 'actionlint');
      if (!existsSync(built)) throw permanentError('STACK_STEP_FAILED', `actionlint: the build finished without a binary; see ${join(ctx.stackDir, 'logs', 'actionlint-build.log')}`);
      mkdirSync(cacheDir, { recursive: true });
      renameSync(built, binary);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  let shellcheck = await commandExists('shellcheck');
  if (!shellcheck && process.getuid?.() === 0) {
    await aptInstall(ctx, 'actionlint', ['shellcheck']);
    shellcheck = await commandExists('shellcheck');
  }
  return { binary, shellcheck };
}

/** One finding, as actionlint's `-format '{{json .}}'` prints it. */
export interface ActionlintFinding {
  readonly message: string;
  readonly filepath: string;
  readonly line: number;
  readonly column: number;
  readonly kind: string;
}

export const workflowFiles = (root: string): string[] => {
  const dir = join(root, '.github', 'workflows');
  return existsSync(dir) ? readdirSync(dir).filter((name) => /\.ya?ml$/.test(name)).sort().map((name) => join(dir, name)) : [];
};

/** Runs actionlint over the files; its findings (empty: clean). ACTIONLINT_FAILED when it cannot run at all. */
export async function runActionlint(tool: ActionlintTool, root: string, files: readonly string[]): Promise<ActionlintFinding[]> {
  try {
    await run('actionlint', tool.binary, ['-no-color', '-format', '{{json .}}', ...files], { cwd: root, timeoutMs: 5 * 60_000 });
    return [];
  } catch (error) {
    // Exit 1 means findings, printed as a JSON array on stdout; anything else is a failure to run.
    const failed = (error as { cause?: { code?: unknown; stdout?: string } }).cause;
    if (failed?.code === 1 && failed.stdout?.trim().startsWith('[')) return JSON.parse(failed.stdout) as ActionlintFinding[];
    throw permanentError('ACTIONLINT_FAILED', `actionlint could not check the workflows`, error);
  }
}

export const formatFinding = (f: ActionlintFinding) => `${f.filepath}:${f.line}:${f.column}: ${f.message} [${f.kind}]`;
