/**
 * deploy/ (the values deploy.yml installs with) against the chart, rendered by the stack's helm
 * (`stack up --with kube` builds it): `helm lint --strict` of each set, the canary's shape (one Pod
 * of the provisioner and one of the heartbeat service, nothing that scales or alerts), and the
 * Service names that deploy.yml's canary-check selectors tell apart.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { stackHelmBinary } from '../../../dev/stack/kube.ts';

const ROOT = join(__dirname, '..', '..', '..');
const CHART = join(ROOT, 'charts', 'agent-manager');
const PRODUCTION = join(ROOT, 'deploy', 'production', 'values.yaml');
const CANARY = join(ROOT, 'deploy', 'production', 'canary-values.yaml');
const STAGING = join(ROOT, 'deploy', 'staging', 'values.yaml');

jest.setTimeout(120_000);

interface Manifest {
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace?: string };
  readonly spec?: { readonly replicas?: number };
  readonly data?: Record<string, string>;
}

function helm(args: string[]): string {
  const binary = stackHelmBinary();
  if (!existsSync(binary)) throw new Error(`no helm at ${binary}: \`npx agent-manager stack up --with kube\` builds it`);
  return execFileSync(binary, args, { cwd: ROOT, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
}

function render(release: string, namespace: string, values: string[]): Manifest[] {
  const out = helm(['template', release, CHART, '--namespace', namespace, '--kube-version', '1.37.2', ...values.flatMap((file) => ['--values', file])]);
  return parseAllDocuments(out)
    .map((doc) => doc.toJS() as Manifest | null)
    .filter((doc): doc is Manifest => doc !== null);
}

/** The `service=~"…"` regex of a selector in deploy.yml's env, anchored as PromQL anchors it. */
function selectorRegex(name: string): RegExp {
  const env = (parse(readFileSync(join(ROOT, '.github', 'workflows', 'deploy.yml'), 'utf8')) as { env: Record<string, string> }).env;
  const match = /service=~"([^"]+)"/.exec(env[name] ?? '');
  if (!match?.[1]) throw new Error(`deploy.yml's ${name} has no service=~"…" matcher`);
  return new RegExp(`^(?:${match[1]})$`);
}

const named = (docs: Manifest[], kind: string) => docs.filter((doc) => doc.kind === kind).map((doc) => doc.metadata.name).sort();

test.each([
  ['production', [PRODUCTION]],
  ['canary', [PRODUCTION, CANARY]],
  ['staging', [PRODUCTION, STAGING]],
])('helm lint --strict: %s', (_name, values) => {
  expect(helm(['lint', '--strict', CHART, '--kube-version', '1.37.2', ...values.flatMap((file) => ['--values', file])])).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
});

test('the canary: one provisioner and one heartbeat Pod, nothing that scales, no PDB, no alerts of its own', () => {
  const docs = render('agent-manager-canary', 'illuvrse-agent-manager', [PRODUCTION, CANARY]);
  const deployments = docs.filter((doc) => doc.kind === 'Deployment');
  expect(deployments.map((doc) => [doc.metadata.name, doc.spec?.replicas])).toEqual(
    expect.arrayContaining([
      ['agent-manager-canary-heartbeat', 1],
      ['agent-manager-canary-provisioner', 1],
    ]),
  );
  expect(deployments).toHaveLength(2);
  for (const kind of ['ScaledObject', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'PrometheusRule']) expect({ kind, names: named(docs, kind) }).toEqual({ kind, names: [] });
  // It is scraped like the stable Pods, so canary-check has its series.
  expect(named(docs, 'ServiceMonitor')).toEqual(['agent-manager-canary']);
});

test("deploy.yml's selectors tell the canary's Services from the stable ones", () => {
  const canary = selectorRegex('CANARY_SELECTOR');
  const stable = selectorRegex('STABLE_SELECTOR');
  const canaryServices = named(render('agent-manager-canary', 'illuvrse-agent-manager', [PRODUCTION, CANARY]), 'Service');
  const stableServices = named(render('agent-manager', 'illuvrse-agent-manager', [PRODUCTION]), 'Service');
  expect(canaryServices).toEqual(['agent-manager-canary-heartbeat', 'agent-manager-canary-provisioner']);
  expect(stableServices).toEqual(['agent-manager-archiver', 'agent-manager-heartbeat', 'agent-manager-ingest', 'agent-manager-provisioner']);
  for (const service of canaryServices) expect({ service, canary: canary.test(service), stable: stable.test(service) }).toEqual({ service, canary: true, stable: false });
  for (const service of stableServices) expect({ service, canary: canary.test(service), stable: stable.test(service) }).toEqual({ service, canary: false, stable: true });
});

test("staging: its own namespaces (the release's and the agents') and topic prefix", () => {
  const docs = render('agent-manager', 'illuvrse-agent-manager-staging', [PRODUCTION, STAGING]);
  expect(new Set(docs.map((doc) => doc.metadata.namespace).filter(Boolean))).toEqual(new Set(['illuvrse-agent-manager-staging', 'illuvrse-agents-staging']));
  const config = docs.find((doc) => doc.kind === 'ConfigMap' && doc.metadata.name === 'agent-manager-config');
  expect(config?.data?.TOPIC_PREFIX).toBe('staging.');
  // deploy.yml's acceptance client (CN acceptance) may instantiate, destroy and read in its division, with a known template.
  const identities = docs.find((doc) => doc.kind === 'ConfigMap' && doc.metadata.name === 'agent-manager-ingest-identities');
  const parsed = JSON.parse(identities?.data?.['identities.json'] ?? '{}') as { identities?: Record<string, { roles: string[] }>; roles?: Record<string, unknown> };
  expect(parsed.identities?.acceptance).toEqual({ roles: ['acceptance'] });
  expect(parsed.roles?.acceptance).toEqual({ actions: ['INSTANTIATE', 'DESTROY'], divisions: ['acceptance'], read: true });
  const ingestConfig = docs.find((doc) => doc.kind === 'ConfigMap' && doc.metadata.name === 'agent-manager-ingest');
  expect(ingestConfig?.data?.INGEST_KNOWN_TEMPLATES?.split(',')).toContain('support-assistant');
});
