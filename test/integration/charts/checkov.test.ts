/**
 * Static checks with checkov (from PyPI) over the image's Dockerfile and the chart, rendered with each
 * of its value sets (the defaults and charts/agent-manager/ci/*.yaml): no failed check, and every
 * skipped one explained where it is skipped — a `# checkov:skip=CKV_…: reason` comment in the
 * Dockerfile, a `checkov.io/skipN: CKV_…=reason` annotation in a template.
 *
 * checkov runs offline (`--skip-download`) from a virtualenv cached outside the checkout,
 * `~/.cache/agent-manager/checkov-<version>`, installed on first use (about 3 minutes). The chart is
 * rendered by the stack's helm (built by `stack up --with kube`).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toolCacheDir } from '../../../dev/stack/install.ts';
import { stackHelmBinary } from '../../../dev/stack/kube.ts';

const CHECKOV_VERSION = '3.3.30';
const ROOT = join(__dirname, '..', '..', '..');
const CHART = join(ROOT, 'charts', 'agent-manager');
const DOCKERFILE = join(ROOT, 'images', 'agent-manager', 'Dockerfile');

jest.setTimeout(120_000);

interface CheckovCheck {
  readonly check_id: string;
  readonly check_name: string;
  readonly resource: string;
  readonly file_line_range: readonly number[];
  readonly check_result: { readonly result: string; readonly suppress_comment?: string };
}

interface CheckovReport {
  readonly results: { readonly failed_checks: CheckovCheck[]; readonly skipped_checks: CheckovCheck[] };
  readonly summary: { readonly passed: number; readonly failed: number; readonly skipped: number; readonly parsing_errors: number };
}

function runOrThrow(command: string, args: readonly string[], timeoutMs: number): string {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 256 * 1024 * 1024 });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.error?.message ?? result.status}):\n${`${result.stdout}${result.stderr}`.slice(-3000)}`);
  return result.stdout;
}

/** checkov in its own virtualenv; a half-made one (no marker) is made again. */
function ensureCheckov(): string {
  const venv = toolCacheDir(process.env, 'checkov', CHECKOV_VERSION);
  const checkov = join(venv, 'bin', 'checkov');
  const marker = join(venv, '.installed');
  if (existsSync(marker)) return checkov;
  rmSync(venv, { recursive: true, force: true });
  runOrThrow('python3', ['-m', 'venv', venv], 120_000);
  runOrThrow(join(venv, 'bin', 'pip'), ['install', '--quiet', `checkov==${CHECKOV_VERSION}`], 15 * 60_000);
  writeFileSync(marker, `checkov ${CHECKOV_VERSION}\n`);
  return checkov;
}

let checkov: string;
let workDir: string;

beforeAll(() => {
  checkov = ensureCheckov();
  workDir = mkdtempSync(join(tmpdir(), 'checkov-'));
}, 20 * 60_000);

afterAll(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

function scan(file: string, framework: 'dockerfile' | 'kubernetes'): CheckovReport {
  // Exit code 1 means failed checks: the report says which, so it is read either way.
  const result = spawnSync(checkov, ['--file', file, '--framework', framework, '--skip-download', '--output', 'json'], { cwd: ROOT, encoding: 'utf8', timeout: 100_000, maxBuffer: 256 * 1024 * 1024 });
  if (result.status !== 0 && result.status !== 1) throw new Error(`checkov failed (${result.error?.message ?? result.status}):\n${result.stderr.slice(-3000)}`);
  return JSON.parse(result.stdout) as CheckovReport;
}

/** Failed checks, and skipped ones whose skip gives no reason, one line each (empty: all good). */
function unexplained(report: CheckovReport): string[] {
  const failed = report.results.failed_checks.map((c) => `FAILED ${c.check_id} (${c.check_name}) on ${c.resource}, lines ${c.file_line_range.join('-')}`);
  const bare = report.results.skipped_checks
    .filter((c) => !c.check_result.suppress_comment?.trim() || c.check_result.suppress_comment.trim() === 'No comment provided')
    .map((c) => `SKIPPED WITHOUT A REASON ${c.check_id} on ${c.resource}`);
  return [...failed, ...bare];
}

test('the Dockerfile: every check passes or is skipped with a reason in the file', () => {
  const report = scan(DOCKERFILE, 'dockerfile');
  expect(report.summary.parsing_errors).toBe(0);
  expect(report.summary.passed).toBeGreaterThan(0);
  expect(unexplained(report)).toEqual([]);
});

const valueSets: Record<string, string[]> = {
  default: [],
  ...Object.fromEntries(
    readdirSync(join(CHART, 'ci'))
      .filter((file) => file.endsWith('.yaml'))
      .map((file) => [file.replace(/^values-|\.yaml$/g, ''), ['--values', join(CHART, 'ci', file)]]),
  ),
};

test.each(Object.keys(valueSets))('the chart with the %s values: every check passes or is skipped with a reason in its template', (name) => {
  const helm = stackHelmBinary();
  if (!existsSync(helm)) throw new Error(`no helm at ${helm}: \`npx agent-manager stack up --with kube\` builds it`);
  const rendered = runOrThrow(helm, ['template', 'am', CHART, '--namespace', 'illuvrse-agent-manager', '--kube-version', '1.37.2', ...(valueSets[name] ?? [])], 60_000);
  const file = join(workDir, `${name}.yaml`);
  writeFileSync(file, rendered);
  const report = scan(file, 'kubernetes');
  expect(report.summary.parsing_errors).toBe(0);
  expect(report.summary.passed).toBeGreaterThan(0);
  expect(unexplained(report)).toEqual([]);
});
