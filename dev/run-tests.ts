// `npm test` after `stack up`: the suite in two passes. The first runs everything but `test/outage/`
// in parallel; the second runs `test/outage/` one file at a time, because those tests stop and
// restart the stack's shared servers (Postgres, Redis, the registry), which would break any test
// running beside them. Both passes always run; their jest JSON reports are merged into
// `.stack/test-results.json`, the file `.ci/run` reads its summary line from.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

interface JestReport {
  success: boolean;
  numTotalTests: number;
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  numTodoTests: number;
  numTotalTestSuites: number;
  numFailedTestSuites: number;
  numRuntimeErrorTestSuites: number;
  testResults: unknown[];
}

const root = join(import.meta.dirname, '..');
const jest = join(root, 'node_modules', '.bin', 'jest');

function pass(name: string, args: string[]): JestReport | undefined {
  const outputFile = join(root, '.stack', `test-results-${name}.json`);
  rmSync(outputFile, { force: true });
  console.log(`\n== tests: ${name} ==`);
  const result = spawnSync(jest, [...args, '--json', `--outputFile=${outputFile}`], { cwd: root, stdio: 'inherit' });
  if (result.error) console.error(`tests: could not run jest: ${result.error.message}`);
  return existsSync(outputFile) ? (JSON.parse(readFileSync(outputFile, 'utf8')) as JestReport) : undefined;
}

const reports = [
  pass('main', ['--testPathIgnorePatterns', '/test/outage/']),
  pass('outage', ['--runInBand', '--passWithNoTests', 'test/outage/']),
];

const merged: JestReport = {
  success: reports.every((r) => r?.success === true),
  numTotalTests: 0,
  numPassedTests: 0,
  numFailedTests: 0,
  numPendingTests: 0,
  numTodoTests: 0,
  numTotalTestSuites: 0,
  numFailedTestSuites: 0,
  // A pass that produced no report (jest crashed) counts as a suite that could not run.
  numRuntimeErrorTestSuites: reports.filter((r) => r === undefined).length,
  testResults: [],
};
for (const report of reports) {
  if (!report) continue;
  for (const key of ['numTotalTests', 'numPassedTests', 'numFailedTests', 'numPendingTests', 'numTodoTests', 'numTotalTestSuites', 'numFailedTestSuites', 'numRuntimeErrorTestSuites'] as const) {
    merged[key] += report[key];
  }
  merged.testResults.push(...report.testResults);
}
writeFileSync(join(root, '.stack', 'test-results.json'), JSON.stringify(merged));
console.log(`\ntests: ${merged.numPassedTests} passed, ${merged.numFailedTests} failed, ${merged.numPendingTests + merged.numTodoTests} skipped (${merged.numTotalTestSuites} files)`);
process.exitCode = merged.success && merged.numTotalTests > 0 ? 0 : 1;
