/**
 * Rules for the GitHub workflows that actionlint does not check: actions pinned by full commit SHA,
 * least-privilege permissions, concurrency groups, the multisig gate before anything is published,
 * and the settings release.yml and deploy.yml must agree on (thresholds, repositories).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parse } from 'yaml';

const ROOT = join(__dirname, '..', '..', '..');
const WORKFLOWS = join(ROOT, '.github', 'workflows');

interface Step {
  readonly uses?: string;
  readonly run?: string;
  readonly if?: string;
}
interface Job {
  readonly permissions?: Record<string, string> | string;
  readonly needs?: string | string[];
  readonly steps?: Step[];
  readonly uses?: string;
  readonly if?: string;
}
interface Workflow {
  readonly permissions?: Record<string, string> | string;
  readonly concurrency?: unknown;
  readonly env?: Record<string, string>;
  readonly jobs: Record<string, Job>;
}

const files = readdirSync(WORKFLOWS).filter((name) => name.endsWith('.yml'));
const text = (file: string) => readFileSync(file, 'utf8');
const workflow = (name: string) => parse(text(join(WORKFLOWS, name))) as Workflow;
const actionFiles = readdirSync(join(ROOT, '.github', 'actions')).map((dir) => join(ROOT, '.github', 'actions', dir, 'action.yml'));
const needs = (job: Job | undefined) => (job?.needs === undefined ? [] : Array.isArray(job.needs) ? job.needs : [job.needs]);

test('ci, release and deploy exist', () => {
  expect(files).toEqual(expect.arrayContaining(['ci.yml', 'release.yml', 'deploy.yml']));
});

test.each([...files.map((name) => join(WORKFLOWS, name)), ...actionFiles].map((file) => relative(ROOT, file)))('%s: every action is pinned by a full commit SHA (the version in a comment)', (file) => {
  const refs = [...text(join(ROOT, file)).matchAll(/^\s*(?:-\s+)?uses:\s*(\S+)(.*)$/gm)].map((m) => ({ ref: m[1] ?? '', rest: m[2] ?? '' }));
  expect(refs.length).toBeGreaterThan(0);
  const unpinned = refs.filter(({ ref, rest }) => !ref.startsWith('./') && !(/^[\w.-]+\/[\w./-]+@[0-9a-f]{40}$/.test(ref) && /#\s*v\d/.test(rest)));
  expect(unpinned).toEqual([]);
});

test.each(files)('%s: no permissions by default, each job asks for its own, nothing writes unless it publishes', (name) => {
  const wf = workflow(name);
  expect(wf.permissions === undefined ? 'missing' : wf.permissions).toEqual(name === 'ci.yml' ? { contents: 'read' } : {});
  expect(wf.concurrency).toBeDefined();
  for (const [id, job] of Object.entries(wf.jobs)) {
    if (name !== 'ci.yml') expect({ id, permissions: job.permissions ?? 'missing' }).not.toEqual({ id, permissions: 'missing' });
    const writes = Object.entries(typeof job.permissions === 'object' ? job.permissions : {}).filter(([, level]) => level === 'write').map(([scope]) => scope);
    const allowed: Record<string, string[]> = { 'release.yml/candidate': ['packages'], 'release.yml/publish': ['contents', 'packages', 'id-token'] };
    expect({ job: `${name}/${id}`, writes }).toEqual({ job: `${name}/${id}`, writes: writes.filter((scope) => allowed[`${name}/${id}`]?.includes(scope)) });
  }
});

test('release.yml publishes only past the multisig gate, and deploys only what it published', () => {
  const { jobs } = workflow('release.yml');
  const gate = jobs.gate;
  const runs = (gate?.steps ?? []).map((step) => step.run ?? '').join('\n');
  expect(runs).toMatch(/npx agent-manager release verify \\\n[\s\S]*--expect-image-digest "\$IMAGE_DIGEST" --expect-chart-digest "\$CHART_DIGEST" --expect-commit "\$COMMIT"/);
  expect(runs).toMatch(/npx agent-manager release verify --break-glass[\s\S]*--audit-log/);
  expect(gate?.steps?.[0]?.if).toBe('${{ !github.ref_protected }}');
  expect(needs(jobs.publish)).toEqual(['gate']);
  expect(needs(jobs.deploy)).toEqual(expect.arrayContaining(['publish']));
  expect(jobs.deploy?.uses).toBe('./.github/workflows/deploy.yml');
  // The candidate job pushes only a candidate tag, never the version.
  const candidate = (jobs.candidate?.steps ?? []).map((step) => step.run ?? '').join('\n');
  expect(candidate).not.toMatch(/crane tag|cosign sign/);
});

test('release.yml and deploy.yml agree on the multisig policy and the repositories; deploy/ values use the same image', () => {
  const release = workflow('release.yml').env ?? {};
  const deploy = workflow('deploy.yml').env ?? {};
  for (const key of ['RELEASE_THRESHOLD', 'BREAK_GLASS_THRESHOLD', 'IMAGE_REPOSITORY', 'CHART_REPOSITORY']) expect({ key, value: deploy[key] }).toEqual({ key, value: release[key] });
  expect(Number(release.BREAK_GLASS_THRESHOLD)).toBeGreaterThan(Number(release.RELEASE_THRESHOLD));
  const values = parse(readFileSync(join(ROOT, 'deploy', 'production', 'values.yaml'), 'utf8')) as { image: { repository: string } };
  expect(values.image.repository).toBe(release.IMAGE_REPOSITORY);
});

test('deploy.yml: staging, then acceptance through the API, then the canary; a failed canary or promotion rolls back with helm rollback', () => {
  const { jobs } = workflow('deploy.yml');
  for (const id of ['canary', 'promote']) {
    const steps = jobs[id]?.steps ?? [];
    const check = steps.findIndex((step) => /npx agent-manager release canary-check --prometheus "\$PROMETHEUS_URL" --window/.test(step.run ?? ''));
    const rollback = steps.findIndex((step) => /helm rollback agent-manager(-canary)? 0/.test(step.run ?? ''));
    expect({ id, check: check >= 0, rollbackAfterCheck: rollback > check }).toEqual({ id, check: true, rollbackAfterCheck: true });
    expect(steps[rollback]?.if).toMatch(/failure\(\)/);
  }
  const acceptance = (jobs.acceptance?.steps ?? []).map((step) => step.run ?? '').join('\n');
  expect(acceptance).toMatch(/npx agent-manager release acceptance --api "\$API"/);
  expect(needs(jobs.acceptance)).toEqual(['staging']);
  expect(needs(jobs.promote)).toEqual(expect.arrayContaining(['canary']));
  expect(needs(jobs.canary)).toEqual(expect.arrayContaining(['acceptance']));
});
