/**
 * Every GitHub workflow passes actionlint (built from the Go module proxy on first use into
 * ~/.cache/agent-manager/actionlint-<version>, about a minute on 2 cores; shellcheck from Debian
 * when running as root, so the `run:` scripts are checked too). Any finding fails the test.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureActionlint, formatFinding, runActionlint, workflowFiles, type ActionlintTool } from '../../../../dev/tools/actionlint.ts';

const ROOT = join(__dirname, '..', '..', '..', '..');

let tool: ActionlintTool;

beforeAll(async () => {
  tool = await ensureActionlint(ROOT, () => undefined);
}, 25 * 60_000);

test('the workflows are there: ci, release and deploy', () => {
  const names = workflowFiles(ROOT).map((file) => file.slice(file.lastIndexOf('/') + 1));
  expect(names).toEqual(expect.arrayContaining(['ci.yml', 'release.yml', 'deploy.yml']));
});

test('actionlint finds nothing in .github/workflows/*.yml', async () => {
  const findings = await runActionlint(tool, ROOT, workflowFiles(ROOT));
  expect(findings.map(formatFinding)).toEqual([]);
}, 300_000);

test('actionlint does report a broken workflow (the test is not vacuous)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'actionlint-'));
  try {
    const file = join(dir, 'broken.yml');
    // An unknown context property, a job that needs a missing job, and (with shellcheck) an unquoted variable.
    writeFileSync(
      file,
      'on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: [nope]\n    steps:\n      - run: echo ${{ github.no_such_thing }} $UNQUOTED\n',
    );
    const findings = await runActionlint(tool, dir, [file]);
    const kinds = findings.map((finding) => finding.kind);
    expect(kinds).toEqual(expect.arrayContaining(['job-needs', 'expression']));
    if (tool.shellcheck) expect(kinds).toContain('shellcheck');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 300_000);
