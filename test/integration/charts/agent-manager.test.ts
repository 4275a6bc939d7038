/**
 * charts/agent-manager against the local stack's real kube-apiserver (`stack up --with kube`):
 * `helm lint --strict`, install / upgrade / rollback of the default, production-like and KEDA-off
 * value sets (four services, the archiver with its S3 settings) (the API server validates every object, the KEDA and Prometheus-operator CRDs their
 * custom resources), values.schema.json refusing wrong types at install, and the provisioner's RBAC
 * as the API server decides it (SubjectAccessReview).
 *
 * No kubelet or controller-manager runs: Deployments make no Pods and the migration hook Job never
 * runs by itself, so the test plays the Job controller and marks each hook Job complete (Helm waits
 * for it). Each test has its own namespaces and release, removed at the end.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parser as promql } from '@prometheus-io/lezer-promql';
import { Agent, fetch } from 'undici';
import { adminToken, KUBE_API_URL, kubeconfigPath, kubeFiles, stackHelmBinary, uniqueNamespace } from '../../support/kube.ts';

const ROOT = join(__dirname, '..', '..', '..');
const CHART = join(ROOT, 'charts', 'agent-manager');
// The stack's own helm and kubeconfig, never $KUBECONFIG: a test must not reach a real cluster.
const HELM = process.env.HELM ?? stackHelmBinary();

// `helm template` and `lint` render for this Kubernetes (the stack's API server), not helm's built-in default.
const KUBE_VERSION = ['--kube-version', '1.37.2'];

const VALUE_SETS: Record<string, string[]> = {
  default: [],
  production: [join(CHART, 'ci', 'values-production.yaml')],
  'keda-off': [join(CHART, 'ci', 'values-keda-off.yaml')],
  // One shard of a sharded fleet (own topic prefix, schema, agents' namespace) on the production-like base.
  'shard research-eu': [join(CHART, 'ci', 'values-production.yaml'), join(CHART, 'examples', 'values-shard-research-eu.yaml')],
};

// ---- the API server, as the stack's admin -------------------------------------------------------

interface Kube {
  readonly server: string;
  readonly token: string;
  readonly dispatcher: Agent;
}

function loadKube(): Kube {
  return { server: KUBE_API_URL, token: adminToken(), dispatcher: new Agent({ connect: { ca: readFileSync(kubeFiles().ca, 'utf8') } }) };
}

interface ApiResponse {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

async function api(kube: Kube, method: string, path: string, body?: unknown): Promise<ApiResponse> {
  const response = await fetch(`${kube.server}${path}`, {
    method,
    dispatcher: kube.dispatcher,
    headers: { authorization: `Bearer ${kube.token}`, 'content-type': 'application/json', accept: 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function apiOk(kube: Kube, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const response = await api(kube, method, path, body);
  if (response.status >= 300) throw new Error(`${method} ${path}: HTTP ${response.status}: ${JSON.stringify(response.body).slice(0, 500)}`);
  return response.body;
}

const itemsOf = (list: Record<string, unknown>) => (list.items ?? []) as Array<{ metadata: { name: string; uid: string; annotations?: Record<string, string> }; [key: string]: unknown }>;
const namesOf = (list: Record<string, unknown>) => itemsOf(list).map((item) => item.metadata.name).sort();

// ---- helm ---------------------------------------------------------------------------------------

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function helm(args: readonly string[], timeoutMs = 180_000): Promise<Run> {
  return new Promise((resolve) => {
    // Rendering and linting need no server; the rest talks to the stack's.
    const kube = ['template', 'lint'].includes(args[0] ?? '') ? [] : ['--kubeconfig', kubeconfigPath()];
    execFile(HELM, [...args, ...kube], { env: { ...process.env, KUBECONFIG: '' }, timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? ((error as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function helmRun(args: readonly string[]): Promise<Run> {
  const run = await helm(args);
  if (run.code !== 0) throw new Error(`helm ${args.join(' ')} failed (${run.code}):\n${run.stderr}${run.stdout}`);
  return run;
}

const helmOk = async (args: readonly string[]): Promise<string> => (await helmRun(args)).stdout;

const valueArgs = (files: readonly string[]) => files.flatMap((file) => ['-f', file]);

// ---- a test's world -----------------------------------------------------------------------------

interface World {
  readonly namespace: string;
  readonly agentsNamespace: string;
  readonly release: string;
  readonly fullname: string;
  readonly args: string[];
}

function world(valueSet: string): World {
  const namespace = uniqueNamespace('it-chart');
  const release = `am${namespace.slice(-6)}`;
  // Production-like agents live in their own namespace (a Role there); the others in the release's.
  const agentsNamespace = valueSet === 'default' || valueSet === 'keda-off' ? namespace : `${namespace}-agents`;
  const args = [...valueArgs(VALUE_SETS[valueSet] ?? []), '--namespace', namespace, '--set', `namespace=${namespace}`, '--set', `services.provisioner.agentsNamespace=${agentsNamespace}`];
  return { namespace, agentsNamespace, release, fullname: `${release}-agent-manager`, args };
}

async function createNamespaces(kube: Kube, w: World): Promise<void> {
  for (const name of new Set([w.namespace, w.agentsNamespace])) {
    await apiOk(kube, 'POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: { 'pod-security.kubernetes.io/enforce': 'restricted', 'pod-security.kubernetes.io/warn': 'restricted' } } });
  }
}

/** Everything the release and its hooks left, then the namespaces (finalized: no namespace controller runs). */
async function removeWorld(kube: Kube, w: World): Promise<void> {
  await helm(['uninstall', w.release, '--namespace', w.namespace, '--no-hooks', '--timeout', '60s']);
  for (const namespace of new Set([w.namespace, w.agentsNamespace])) {
    // Background: a Job's default (orphan) adds a finalizer that only the garbage collector removes.
    const now = { propagationPolicy: 'Background', gracePeriodSeconds: 0 };
    for (const path of [`/apis/batch/v1/namespaces/${namespace}/jobs`, `/api/v1/namespaces/${namespace}/serviceaccounts`, `/api/v1/namespaces/${namespace}/pods`, `/apis/coordination.k8s.io/v1/namespaces/${namespace}/leases`]) {
      await api(kube, 'DELETE', path, now);
    }
    await api(kube, 'DELETE', `/api/v1/namespaces/${namespace}`);
    const current = await api(kube, 'GET', `/api/v1/namespaces/${namespace}`);
    if (current.status === 200) {
      const ns = current.body as { spec?: { finalizers?: string[] } };
      await api(kube, 'PUT', `/api/v1/namespaces/${namespace}/finalize`, { ...ns, spec: { ...ns.spec, finalizers: [] } });
    }
  }
  // Nothing of the release may outlive it in etcd (objects of a finalized namespace stay otherwise).
  const selector = `?labelSelector=${encodeURIComponent(`app.kubernetes.io/instance=${w.release}`)}`;
  const left: string[] = [];
  for (const path of ['/apis/batch/v1/jobs', '/api/v1/configmaps', '/api/v1/serviceaccounts', '/apis/apps/v1/deployments', '/apis/rbac.authorization.k8s.io/v1/roles']) {
    left.push(...namesOf(await apiOk(kube, 'GET', path + selector)).map((name) => `${path}/${name}`));
  }
  if (left.length > 0) throw new Error(`left behind by ${w.release}: ${left.join(', ')}`);
}

/**
 * Plays the Job controller for the migration hook: waits for a Job of that name whose uid is not in
 * `seen`, checks what it runs, and marks it complete the way the controller would. Returns its uid.
 */
async function completeHookJob(kube: Kube, w: World, seen: ReadonlySet<string>, timeoutMs = 90_000): Promise<string> {
  const path = `/apis/batch/v1/namespaces/${w.namespace}/jobs/${w.fullname}-migrate`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await api(kube, 'GET', path);
    const job = found.body as { metadata?: { uid?: string; annotations?: Record<string, string> }; spec?: { template?: { spec?: { containers?: Array<{ args?: string[] }> } } }; status?: Record<string, unknown> };
    const uid = job.metadata?.uid;
    if (found.status === 200 && uid !== undefined && !seen.has(uid)) {
      expect(job.metadata?.annotations?.['helm.sh/hook']).toBe('pre-install,pre-upgrade');
      expect(job.spec?.template?.spec?.containers?.[0]?.args).toEqual(['migrate']);
      const now = new Date();
      const started = new Date(now.getTime() - 1_000).toISOString().replace(/\.\d+Z$/, 'Z');
      const finished = now.toISOString().replace(/\.\d+Z$/, 'Z');
      const condition = (type: string) => ({ type, status: 'True', lastProbeTime: finished, lastTransitionTime: finished, reason: 'CompletionsReached', message: 'Reached expected number of succeeded pods' });
      await apiOk(kube, 'PUT', `${path}/status`, {
        ...job,
        status: { startTime: started, completionTime: finished, succeeded: 1, active: 0, ready: 0, terminating: 0, uncountedTerminatedPods: {}, conditions: [condition('SuccessCriteriaMet'), condition('Complete')] },
      });
      return uid;
    }
    if (Date.now() > deadline) throw new Error(`no new hook Job ${w.fullname}-migrate within ${timeoutMs} ms`);
    await sleep(200);
  }
}

/** Runs a helm install/upgrade while completing its hook Job; returns the Job's uid and helm's output. */
async function withHook(kube: Kube, w: World, seen: Set<string>, args: readonly string[]): Promise<{ uid: string; run: Run }> {
  const running = helmRun(args);
  const failed = running.then(() => undefined);
  const uid = await Promise.race([completeHookJob(kube, w, seen), failed.then(() => { throw new Error(`helm ${args[0]} ended before its hook Job appeared`); })]).catch(async (error: unknown) => {
    await running; // helm's own error says more
    throw error;
  });
  seen.add(uid);
  return { uid, run: await running };
}

interface Deployed {
  readonly deployments: string[];
  readonly configMaps: string[];
  readonly scaledObjects: string[];
  readonly hpas: string[];
}

async function deployedObjects(kube: Kube, w: World): Promise<Deployed> {
  const ns = w.namespace;
  const selector = `?labelSelector=${encodeURIComponent(`app.kubernetes.io/instance=${w.release}`)}`;
  const custom = async (path: string) => {
    const response = await api(kube, 'GET', path + selector);
    return response.status === 200 ? namesOf(response.body) : [];
  };
  return {
    deployments: namesOf(await apiOk(kube, 'GET', `/apis/apps/v1/namespaces/${ns}/deployments${selector}`)),
    configMaps: namesOf(await apiOk(kube, 'GET', `/api/v1/namespaces/${ns}/configmaps${selector}`)),
    scaledObjects: await custom(`/apis/keda.sh/v1alpha1/namespaces/${ns}/scaledobjects`),
    hpas: namesOf(await apiOk(kube, 'GET', `/apis/autoscaling/v2/namespaces/${ns}/horizontalpodautoscalers${selector}`)),
  };
}

async function configValue(kube: Kube, w: World, key: string): Promise<string | undefined> {
  const map = (await apiOk(kube, 'GET', `/api/v1/namespaces/${w.namespace}/configmaps/${w.fullname}-config`)) as { data?: Record<string, string> };
  return map.data?.[key];
}

/** The PromQL syntax errors of an expression (Prometheus' own grammar), as the text around each. */
function promqlErrors(expr: string): string[] {
  const errors: string[] = [];
  promql.parse(expr).iterate({
    enter: (node) => {
      if (node.type.isError) errors.push(`at ${node.from}: ${JSON.stringify(expr.slice(Math.max(0, node.from - 20), node.to + 20))}`);
    },
  });
  return errors;
}

async function canI(kube: Kube, user: string, attributes: Record<string, string>): Promise<boolean> {
  const review = (await apiOk(kube, 'POST', '/apis/authorization.k8s.io/v1/subjectaccessreviews', {
    apiVersion: 'authorization.k8s.io/v1',
    kind: 'SubjectAccessReview',
    spec: { user, groups: ['system:serviceaccounts', `system:serviceaccounts:${user.split(':')[2] ?? ''}`, 'system:authenticated'], resourceAttributes: attributes },
  })) as { status?: { allowed?: boolean } };
  return review.status?.allowed === true;
}

// ---- the tests ----------------------------------------------------------------------------------

// Not skipped when missing: `npm test` starts the kube component (which builds helm); say what to run.
beforeAll(() => {
  if (!existsSync(HELM)) throw new Error(`no helm at ${HELM}: run \`npx agent-manager stack up --with kube\` (it builds helm), or set HELM`);
});

describe('helm lint and render', () => {
  const sets = { ...VALUE_SETS, 'shard commerce-us': [join(CHART, 'examples', 'values-shard-commerce-us.yaml')] };

  test.each(Object.entries(sets))('helm lint --strict: %s', async (_name, files) => {
    const out = await helmOk(['lint', '--strict', CHART, ...KUBE_VERSION, ...valueArgs(files)]);
    expect(out).toContain('0 chart(s) failed');
  });

  test('wrong value types are refused by values.schema.json', async () => {
    for (const [flag, value, problem] of [
      ['--set-string', 'kafka.partitions=12', "at '/kafka/partitions': got string, want integer"],
      ['--set', 'defaults.replicas=two', "at '/defaults/replicas': got string, want integer"],
      ['--set', 'keda.enabled=yes', "at '/keda/enabled': got string, want boolean"],
      ['--set', 'secrets.source=inline', "at '/secrets/source': value must be one of"],
      ['--set', 'kafka.brokers=kafka', "at '/kafka/brokers': 'kafka' does not match pattern"],
      ['--set', 'services.ingest.topics=agent-requests', "at '/services/ingest/topics': got string, want array"],
      ['--set', 'services.ingest.api.port=99999', "at '/services/ingest/api/port'"],
      ['--set', 'kafka.topicPrefix=a b', "at '/kafka/topicPrefix'"],
      ['--set', 'archive.bucket=Audit_Archive', "at '/archive/bucket': 'Audit_Archive' does not match pattern"],
      ['--set', 'archive.prefix=/audit/', "at '/archive/prefix'"],
      ['--set', 'archive.credentials.files.AWS_SECRET=s3-secret', "invalid propertyName 'AWS_SECRET'"],
      ['--set', 'archive.retentionDays=0', "at '/archive/retentionDays'"],
      // A misspelt setting is refused too, not silently ignored.
      ['--set', 'kafka.broker=kafka:9093', "additional properties 'broker' not allowed"],
    ] as const) {
      const run = await helm(['template', 'am', CHART, ...KUBE_VERSION, flag, value]);
      expect({ value, code: run.code }).toEqual({ value, code: 1 });
      expect(run.stderr).toContain('values don\'t meet the specifications of the schema');
      expect(run.stderr).toContain(problem);
    }
  });

  test('misconfigurations the schema cannot see are refused by the templates', async () => {
    const cases: Array<[string[], string]> = [
      [['--set', 'defaults.autoscaling.maxReplicas=13'], 'is above kafka.partitions (12)'],
      [['--set', 'kafka.partitions=4'], 'services.archiver.autoscaling.maxReplicas (12) is above kafka.partitions (4)'],
      [['--set', 'shutdown.terminationGracePeriodSeconds=20'], 'must be above preStopSleepSeconds + the drain'],
      [['--set', 'env.DATABASE_URL=postgres://u:p@db/x'], 'env.DATABASE_URL is a secret'],
      [['--set', 'services.provisioner.env.S3_SECRET_ACCESS_KEY=abc'], 'services.provisioner.env.S3_SECRET_ACCESS_KEY is a secret'],
      [['--set', 'services.archiver.env.S3_ACCESS_KEY_ID=AKIA0000'], 'services.archiver.env.S3_ACCESS_KEY_ID is a secret'],
      // The archiver cannot run without its bucket and region; one S3 key file without the other is half a credential.
      [['--set', 'archive.bucket='], 'archive.bucket is required while services.archiver.enabled'],
      [['--set', 'archive.s3.region='], 'archive.s3.region is required'],
      [['--set', 'archive.credentials.files.S3_ACCESS_KEY_ID=s3-id'], 'archive.credentials.files names S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY together or neither'],
    ];
    for (const [args, message] of cases) {
      const run = await helm(['template', 'am', CHART, ...KUBE_VERSION, ...args]);
      expect({ args, code: run.code, error: run.stderr.includes(message) ? message : run.stderr }).toEqual({ args, code: 1, error: message });
    }
    // A vault: reference is a reference, not a secret.
    await helmOk(['template', 'am', CHART, ...KUBE_VERSION, '--set', 'env.DATABASE_URL=vault:kv/agent-manager#database-url']);
    // Without the archiver no bucket is needed.
    await helmOk(['template', 'am', CHART, ...KUBE_VERSION, '--set', 'services.archiver.enabled=false', '--set', 'archive.bucket=']);
  });

  test('the default render: restricted Pods, probes, grace above the drain, no secret in any value', async () => {
    const out = await helmOk(['template', 'am', CHART, ...KUBE_VERSION]);
    expect(out).toContain('args: ["run", "ingest"]');
    expect(out).toContain('args: ["run", "provisioner"]');
    expect(out).toContain('args: ["run", "heartbeat"]');
    expect(out).toContain('args: ["run", "archiver"]');
    expect(out).toMatch(/terminationGracePeriodSeconds: 38\n/); // 3 s preStop + 25 s drain + 10 s margin
    expect(out).toContain('path: /livez');
    expect(out).toContain('path: /readyz');
    expect(out).toContain('DATABASE_URL_FILE: "/var/run/secrets/agent-manager/database-url"');
    expect(out).not.toContain('hostPath');
    expect(out).not.toMatch(/kind: Secret\n/);
    // Autoscaled (KEDA by default): the Deployments leave replicas to the HPA KEDA makes.
    expect(out).not.toMatch(/^ {2}replicas:/m);
    expect(out.match(/^ {2}minReplicaCount: 2$/gm)).toHaveLength(4);
    const fixed = await helmOk(['template', 'am', CHART, ...KUBE_VERSION, '--set', 'keda.enabled=false', '--set', 'hpa.enabled=false']);
    expect(fixed.match(/^ {2}replicas: 2$/gm)).toHaveLength(4);
    expect(fixed).not.toContain('kind: HorizontalPodAutoscaler');
  });

  test("the archiver's S3 settings and keys reach the archiver only (and the hook Job's s3-init with initBucket)", async () => {
    type Doc = { kind: string; metadata: { name: string; annotations?: Record<string, string> }; data?: Record<string, string>; spec?: Record<string, unknown> };
    // The Kubernetes client's own YAML reader (a dependency already); ESM, so imported here.
    const { loadAllYaml } = await import('@kubernetes/client-node');
    const render = async (args: string[]) => (loadAllYaml(await helmOk(['template', 'am', CHART, ...KUBE_VERSION, ...args])) as Array<Doc | null>).filter((d): d is Doc => d !== null);
    const byName = (docs: Doc[], kind: string, name: string) => docs.find((d) => d.kind === kind && d.metadata.name === name);
    const podSpec = (doc: Doc | undefined) => (doc?.spec as { template: { metadata: { annotations?: Record<string, string> }; spec: { containers: Array<{ name: string; args: string[]; env?: Array<{ name: string; value: string }> }>; volumes: Array<{ name: string; projected?: { sources: Array<{ secret?: { name: string; items: Array<{ key: string }> } }> } }> } } }).template;

    // Defaults: the AWS SDK's default chain, no key files anywhere.
    const plain = await render([]);
    expect(byName(plain, 'ConfigMap', 'am-agent-manager-archiver')?.data).toMatchObject({ ARCHIVE_BUCKET: 'agent-manager-audit', ARCHIVE_RETENTION_DAYS: '2555', S3_REGION: 'us-east-1' });
    expect(byName(plain, 'ConfigMap', 'am-agent-manager-archiver')?.data).not.toHaveProperty('ARCHIVE_PREFIX'); // the service's default: <TOPIC_PREFIX>audit-events
    expect(JSON.stringify(plain)).not.toContain('S3_ACCESS_KEY_ID');
    expect(podSpec(byName(plain, 'Job', 'am-agent-manager-migrate')).spec.containers.map((c) => c.name)).toEqual(['migrate']);

    // Keys from a Secret: the archiver's Pods only; IRSA and initBucket: the hook Job's s3-init too.
    const keyed = await render([
      '--set', 'archive.credentials.files.S3_ACCESS_KEY_ID=s3-id', '--set', 'archive.credentials.files.S3_SECRET_ACCESS_KEY=s3-secret', '--set', 'archive.credentials.existingSecret=am-s3',
      '--set', 'archive.credentials.roleArn=arn:aws:iam::123456789012:role/archiver', '--set', 'archive.initBucket=true', '--set', 'archive.s3.endpoint=https://minio.storage.svc:9000', '--set', 'archive.s3.forcePathStyle=true', '--set', 'archive.prefix=audit',
    ]);
    expect(byName(keyed, 'ConfigMap', 'am-agent-manager-archiver')?.data).toMatchObject({
      S3_ACCESS_KEY_ID_FILE: '/var/run/secrets/agent-manager/s3-id',
      S3_SECRET_ACCESS_KEY_FILE: '/var/run/secrets/agent-manager/s3-secret',
      S3_ENDPOINT: 'https://minio.storage.svc:9000',
      S3_FORCE_PATH_STYLE: 'true',
      ARCHIVE_PREFIX: 'audit',
    });
    for (const service of ['ingest', 'provisioner', 'heartbeat']) {
      expect([service, byName(keyed, 'ConfigMap', `am-agent-manager-${service}`)?.data?.S3_ACCESS_KEY_ID_FILE]).toEqual([service, undefined]);
      expect([service, JSON.stringify(byName(keyed, 'Deployment', `am-agent-manager-${service}`))]).not.toEqual([service, expect.stringContaining('am-s3')]);
      expect(byName(keyed, 'ServiceAccount', `am-agent-manager-${service}`)?.metadata.annotations).toBeUndefined();
    }
    const sources = podSpec(byName(keyed, 'Deployment', 'am-agent-manager-archiver')).spec.volumes.find((v) => v.name === 'secrets')?.projected?.sources ?? [];
    expect(sources.map((s) => s.secret?.name)).toEqual(['agent-manager', 'agent-manager-kafka-archiver', 'am-s3']);
    expect(byName(keyed, 'ServiceAccount', 'am-agent-manager-archiver')?.metadata.annotations).toEqual({ 'eks.amazonaws.com/role-arn': 'arn:aws:iam::123456789012:role/archiver' });
    expect(byName(keyed, 'ServiceAccount', 'am-agent-manager-migrate')?.metadata.annotations).toMatchObject({ 'eks.amazonaws.com/role-arn': 'arn:aws:iam::123456789012:role/archiver' });
    const job = podSpec(byName(keyed, 'Job', 'am-agent-manager-migrate')).spec.containers;
    expect(job.map((c) => [c.name, c.args])).toEqual([['migrate', ['migrate']], ['s3-init', ['s3', 'init']]]);
    const envOf = (c: (typeof job)[number] | undefined) => Object.fromEntries((c?.env ?? []).map((e) => [e.name, e.value]));
    expect(envOf(job[0])).not.toHaveProperty('S3_ACCESS_KEY_ID_FILE');
    expect(envOf(job[1])).toMatchObject({ ARCHIVE_BUCKET: 'agent-manager-audit', ARCHIVE_RETENTION_DAYS: '2555', S3_ACCESS_KEY_ID_FILE: '/var/run/secrets/agent-manager/s3-id' });
    const migratePolicy = byName(keyed, 'NetworkPolicy', 'am-agent-manager-migrate')?.spec as { egress: Array<{ ports: Array<{ port: number }> }> };
    expect(migratePolicy.egress.flatMap((e) => e.ports.map((p) => p.port))).toContain(443);

    // The Vault Agent injector: the S3 files are injected into the archiver's Pods only.
    const vault = await render(['-f', join(CHART, 'ci', 'values-keda-off.yaml')]);
    for (const service of ['ingest', 'provisioner', 'heartbeat', 'archiver']) {
      const annotations = podSpec(byName(vault, 'Deployment', `am-agent-manager-${service}`)).metadata.annotations ?? {};
      expect([service, 'vault.hashicorp.com/agent-inject-secret-s3-secret-access-key' in annotations]).toEqual([service, service === 'archiver']);
    }
    expect(Object.keys(podSpec(byName(vault, 'Job', 'am-agent-manager-migrate')).metadata.annotations ?? {}).filter((a) => a.includes('s3-'))).toEqual([]);
  });

  test('the alerts and the dashboard use only metrics the services export', async () => {
    const exported = new Set<string>();
    const sources = ['lib', 'services'].flatMap((dir) => readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts')).map((f) => join(ROOT, dir, f)));
    for (const file of sources) for (const match of readFileSync(file, 'utf8').matchAll(/name: '(agent_manager_[a-z0-9_]+)'/g)) exported.add(match[1] ?? '');
    const rendered = await helmOk(['template', 'am', CHART, ...KUBE_VERSION, '--show-only', 'templates/prometheusrule.yaml', '--show-only', 'templates/dashboard-configmap.yaml']);
    const used = new Set([...rendered.matchAll(/agent_manager_[a-z0-9_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')));
    expect(used.size).toBeGreaterThan(5);
    expect([...used].filter((name) => !exported.has(name))).toEqual([]);
  });
});

describe('install, upgrade and rollback into the real API server', () => {
  let kube: Kube;
  beforeAll(async () => {
    kubeconfigPath(); // says what to run when the stack has no API server
    kube = loadKube();
    const version = await api(kube, 'GET', '/version').catch((error: unknown) => {
      throw new Error(`the stack's API server does not answer at ${kube.server} (${String(error)}): run \`npx agent-manager stack up --with kube\``);
    });
    expect(version.status).toBe(200);
  });
  afterAll(async () => {
    await kube?.dispatcher.close();
  });

  test.each(Object.keys(VALUE_SETS))('%s values', async (valueSet) => {
    const w = world(valueSet);
    await createNamespaces(kube, w);
    try {
      const seen = new Set<string>();
      // No --wait: no kubelet runs, so no Pod would ever be Ready. Helm still waits for the hook Job.
      const first = await withHook(kube, w, seen, ['install', w.release, CHART, ...w.args, '--timeout', '150s']);
      // The namespaces warn on anything below the `restricted` Pod Security Standard: nothing did.
      expect(first.run.stderr).not.toContain('PodSecurity');
      const installed = await deployedObjects(kube, w);
      const components = ['archiver', 'heartbeat', 'ingest', 'provisioner'].map((c) => `${w.fullname}-${c}`);
      expect(installed.deployments).toEqual(components);
      if (valueSet === 'keda-off') {
        expect(installed.scaledObjects).toEqual([]);
        expect(installed.hpas).toEqual(components);
      } else {
        expect(installed.scaledObjects).toEqual(components);
        expect(installed.hpas).toEqual([]);
      }
      expect(installed.configMaps).toEqual(expect.arrayContaining([`${w.fullname}-config`, `${w.fullname}-dashboard`, ...components]));
      const ns = w.namespace;
      const sel = `?labelSelector=${encodeURIComponent(`app.kubernetes.io/instance=${w.release}`)}`;
      expect(namesOf(await apiOk(kube, 'GET', `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets${sel}`))).toEqual(components);
      expect(namesOf(await apiOk(kube, 'GET', `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies${sel}`))).toEqual([...components, `${w.fullname}-default-deny`, `${w.fullname}-migrate`].sort());
      expect(namesOf(await apiOk(kube, 'GET', `/apis/monitoring.coreos.com/v1/namespaces/${ns}/servicemonitors${sel}`))).toEqual([w.fullname]);
      const rules = itemsOf(await apiOk(kube, 'GET', `/apis/monitoring.coreos.com/v1/namespaces/${ns}/prometheusrules${sel}`)) as unknown as Array<{ metadata: { name: string }; spec: { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> } }>;
      expect(rules.map((r) => r.metadata.name)).toEqual([w.fullname]);
      const alerts = rules.flatMap((r) => r.spec.groups.flatMap((g) => g.rules));
      // The seed's alerts, each expression valid PromQL.
      expect(alerts.map((a) => a.alert)).toEqual(
        expect.arrayContaining(['AgentManagerProvisioningFailureRate', 'AgentManagerMissedHeartbeats', 'AgentManagerAuditPipelineLag', 'AgentManagerAuditArchiverLag', 'AgentManagerAuditArchiveDayNotClosing', 'AgentManagerConsumerLag', 'AgentManagerDLQGrowth', 'AgentManagerKeyRotationFailures']),
      );
      expect(alerts.map((a) => ({ alert: a.alert, errors: promqlErrors(a.expr) })).filter((a) => a.errors.length > 0)).toEqual([]);
      expect(namesOf(await apiOk(kube, 'GET', `/apis/rbac.authorization.k8s.io/v1/namespaces/${w.agentsNamespace}/roles${sel}`))).toEqual([`${w.fullname}-provisioner`]);
      if (valueSet !== 'keda-off') {
        expect(namesOf(await apiOk(kube, 'GET', `/apis/keda.sh/v1alpha1/namespaces/${ns}/triggerauthentications${sel}`))).toEqual(components.map((c) => `${c}-kafka`));
      }
      // The Deployment as stored: the server applied its defaults to what the chart sent.
      const deployment = (await apiOk(kube, 'GET', `/apis/apps/v1/namespaces/${ns}/deployments/${w.fullname}-provisioner`)) as {
        spec: { replicas: number; template: { spec: { automountServiceAccountToken: boolean; securityContext: Record<string, unknown>; containers: Array<{ securityContext: Record<string, unknown> }> } } };
      };
      expect(deployment.spec.template.spec.automountServiceAccountToken).toBe(true);
      expect(deployment.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
      expect(deployment.spec.template.spec.containers[0]?.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
      expect(await configValue(kube, w, 'LOG_LEVEL')).toBe('info');
      // The archiver's own settings, and (production: archive.initBucket) the hook Job's s3-init container.
      const archiverConfig = (await apiOk(kube, 'GET', `/api/v1/namespaces/${ns}/configmaps/${w.fullname}-archiver`)) as { data?: Record<string, string> };
      expect(archiverConfig.data?.ARCHIVE_BUCKET).toMatch(/^[a-z0-9.-]+$/);
      const hookJob = (await apiOk(kube, 'GET', `/apis/batch/v1/namespaces/${ns}/jobs/${w.fullname}-migrate`)) as { spec: { template: { spec: { containers: Array<{ name: string }> } } } };
      expect(hookJob.spec.template.spec.containers.map((c) => c.name)).toEqual(valueSet === 'production' || valueSet.startsWith('shard') ? ['migrate', 's3-init'] : ['migrate']);

      // Upgrade: a new hook Job (the previous one replaced) migrates before the Deployments change.
      const second = await withHook(kube, w, seen, ['upgrade', w.release, CHART, ...w.args, '--set', 'logLevel=debug', '--timeout', '150s']);
      expect(second.uid).not.toBe(first.uid);
      expect(second.run.stderr).not.toContain('PodSecurity');
      expect(await configValue(kube, w, 'LOG_LEVEL')).toBe('debug');

      // Rollback to revision 1: no hook (nothing to migrate back), the settings as they were.
      await helmOk(['rollback', w.release, '1', '--namespace', ns, '--timeout', '60s']);
      expect(await configValue(kube, w, 'LOG_LEVEL')).toBe('info');
      const job = (await apiOk(kube, 'GET', `/apis/batch/v1/namespaces/${ns}/jobs/${w.fullname}-migrate`)) as { metadata: { uid: string } };
      expect(job.metadata.uid).toBe(second.uid);
      const history = JSON.parse(await helmOk(['history', w.release, '--namespace', ns, '--output', 'json'])) as Array<{ revision: number; status: string; description: string }>;
      expect(history.map((h) => [h.revision, h.status])).toEqual([
        [1, 'superseded'],
        [2, 'superseded'],
        [3, 'deployed'],
      ]);
    } finally {
      await removeWorld(kube, w);
    }
  }, 600_000);

  test('wrong value types are refused at install: nothing is created', async () => {
    const w = world('default');
    await createNamespaces(kube, w);
    try {
      const run = await helm(['install', w.release, CHART, ...w.args, '--set', 'defaults.autoscaling.maxReplicas=many']);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain("at '/defaults/autoscaling/maxReplicas': got string, want integer");
      const releases = await apiOk(kube, 'GET', `/api/v1/namespaces/${w.namespace}/secrets?labelSelector=owner%3Dhelm`);
      expect(namesOf(releases)).toEqual([]);
      expect(namesOf(await apiOk(kube, 'GET', `/apis/batch/v1/namespaces/${w.namespace}/jobs`))).toEqual([]);
    } finally {
      await removeWorld(kube, w);
    }
  });

  test("the provisioner's ServiceAccount may manage Pods and its Lease in the agents' namespace, and read no Secret", async () => {
    const w = world('production'); // agents in their own namespace
    await createNamespaces(kube, w);
    try {
      await withHook(kube, w, new Set(), ['install', w.release, CHART, ...w.args, '--timeout', '150s']);
      const provisioner = `system:serviceaccount:${w.namespace}:${w.fullname}-provisioner`;
      const ingest = `system:serviceaccount:${w.namespace}:${w.fullname}-ingest`;
      const agents = w.agentsNamespace;
      const lease = 'agent-manager-provisioner-reconciler';
      const pods = (verb: string, namespace = agents) => ({ namespace, verb, resource: 'pods', group: '' });

      for (const verb of ['create', 'get', 'list', 'update', 'delete']) expect([verb, await canI(kube, provisioner, pods(verb))]).toEqual([verb, true]);
      expect(await canI(kube, provisioner, { namespace: agents, verb: 'create', resource: 'leases', group: 'coordination.k8s.io' })).toBe(true);
      expect(await canI(kube, provisioner, { namespace: agents, verb: 'update', resource: 'leases', group: 'coordination.k8s.io', name: lease })).toBe(true);

      // Not: Secrets, other Leases, exec, Pods elsewhere, anything for the other services.
      expect(await canI(kube, provisioner, { namespace: agents, verb: 'get', resource: 'secrets', group: '' })).toBe(false);
      expect(await canI(kube, provisioner, { namespace: agents, verb: 'list', resource: 'secrets', group: '' })).toBe(false);
      expect(await canI(kube, provisioner, { namespace: w.namespace, verb: 'get', resource: 'secrets', group: '' })).toBe(false);
      expect(await canI(kube, provisioner, { namespace: agents, verb: 'update', resource: 'leases', group: 'coordination.k8s.io', name: 'someone-else' })).toBe(false);
      expect(await canI(kube, provisioner, { namespace: agents, verb: 'create', resource: 'pods', subresource: 'exec', group: '' })).toBe(false);
      expect(await canI(kube, provisioner, pods('create', w.namespace))).toBe(false);
      expect(await canI(kube, provisioner, pods('create', 'default'))).toBe(false);
      expect(await canI(kube, ingest, pods('create'))).toBe(false);
      expect(await canI(kube, ingest, pods('list'))).toBe(false);

      // And as the API server itself decides a real request (impersonating the ServiceAccount).
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'probe-agent' },
        spec: {
          securityContext: { runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [{ name: 'agent', image: 'agent:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }],
        },
      };
      // The admission plugin needs the namespace's default ServiceAccount, which no controller made.
      await apiOk(kube, 'POST', `/api/v1/namespaces/${agents}/serviceaccounts`, { metadata: { name: 'default' } });
      const asProvisioner = async (method: string, path: string, body?: unknown) => {
        const response = await fetch(`${kube.server}${path}`, {
          method,
          dispatcher: kube.dispatcher,
          headers: { authorization: `Bearer ${kube.token}`, 'impersonate-user': provisioner, 'impersonate-group': 'system:serviceaccounts', 'content-type': 'application/json' },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        });
        await response.text();
        return response.status;
      };
      expect(await asProvisioner('POST', `/api/v1/namespaces/${agents}/pods`, pod)).toBe(201);
      expect(await asProvisioner('GET', `/api/v1/namespaces/${agents}/secrets`)).toBe(403);
      expect(await asProvisioner('POST', `/api/v1/namespaces/${w.namespace}/pods`, pod)).toBe(403);
    } finally {
      await removeWorld(kube, w);
    }
  }, 300_000);
});
