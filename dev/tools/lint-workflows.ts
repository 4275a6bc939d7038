// `node dev/tools/lint-workflows.ts [files…]`: actionlint (dev/tools/actionlint.ts) over the given
// workflows, default .github/workflows/*.y(a)ml; prints each finding, exits 1 if there is any.
import { join } from 'node:path';
import { errorMessage } from '../../lib/errors.ts';
import { ACTIONLINT_VERSION, ensureActionlint, formatFinding, runActionlint, workflowFiles } from './actionlint.ts';

const root = join(import.meta.dirname, '..', '..');

async function main(): Promise<number> {
  const tool = await ensureActionlint(root, (line) => console.error(line));
  const files = process.argv.length > 2 ? process.argv.slice(2) : workflowFiles(root);
  if (!tool.shellcheck) console.error('actionlint: shellcheck is not installed: the shell scripts of `run:` steps are not checked');
  const findings = await runActionlint(tool, root, files);
  for (const finding of findings) console.log(formatFinding(finding));
  console.log(`actionlint ${ACTIONLINT_VERSION}: ${findings.length} finding(s) in ${files.length} file(s)${tool.shellcheck ? ', shellcheck included' : ', without shellcheck'}`);
  return findings.length === 0 ? 0 : 1;
}

process.exitCode = await main().catch((error: unknown) => {
  console.error(`lint-workflows: ${errorMessage(error)}`);
  return 1;
});
