/**
 * The optional `kube` component (`stack up --with kube`): a real Kubernetes API server on loopback,
 * for the chart's install tests and the kubernetes driver's and Lease elector's integration tests.
 * Only etcd and kube-apiserver run: no kubelet, scheduler or controller-manager, so Pods stay
 * Pending unless a test patches their status, Jobs never run and a new namespace gets no `default`
 * ServiceAccount by itself.
 *
 * etcd, kube-apiserver and helm are built from the Go module proxy (no release downloads are
 * reachable here) into `~/.cache/agent-manager/<tool>-<version>/<tool>`, outside the checkout, so a
 * fresh clone (CI) reuses them: about 3 (helm) + 2 (etcd) + 9 (kube-apiserver) minutes on 2 cores
 * the first time. k8s.io/kubernetes and etcd's server module keep `replace` directives to their own
 * source trees, which `go install` refuses: each is built from a wrapper module instead (see
 * ../shared/notes/local-stack.md).
 *
 * The API server takes a static admin token (user `admin` in `system:masters`) and authorizes with
 * RBAC; its serving certificate (SAN 127.0.0.1) comes from a CA of its own in `.stack/kube/pki`.
 * `.stack/kube/kubeconfig` holds both; `stack env` exports it as KUBECONFIG while the server runs.
 * The KEDA and Prometheus-operator CRDs a chart uses are applied at every start, from their
 * published Go modules at pinned versions.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, permanentError, retryableError } from '../../lib/errors.ts';
import { findGo, goBuildEnv } from './go.ts';
import { toolCacheDir } from './install.ts';
import { createCertificateAuthority, issueCertificate, loadCertificateAuthority } from './pki.ts';
import { commandExists, httpOk, isAlive, processStatus, readPid, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';

export const KUBE_VERSION = 'v1.37.2';
export const ETCD_VERSION = 'v3.7.3';
export const HELM_VERSION = 'v3.22.0';

/** Where the component listens (off the well-known 6443/2379). */
export const KUBE_STACK = { host: '127.0.0.1', port: 16443, etcdPort: 12379, etcdPeerPort: 12380 } as const;
export const KUBE_API_URL = `https://${KUBE_STACK.host}:${KUBE_STACK.port}`;

/**
 * The CRDs installed at start, from their Go modules. Only the kinds a chart of ours creates: the
 * others (ScaledJob, Prometheus, Alertmanager, ThanosRuler…) carry 0.5–0.8 MB schemas each that
 * would slow every start of the API server on 2 cores for nothing.
 */
export const KUBE_CRD_SOURCES = [
  {
    label: 'KEDA',
    module: 'github.com/kedacore/keda/v2',
    version: 'v2.21.0',
    dir: 'config/crd/bases',
    files: ['keda.sh_scaledobjects.yaml', 'keda.sh_triggerauthentications.yaml', 'keda.sh_clustertriggerauthentications.yaml'],
  },
  {
    label: 'Prometheus operator',
    module: 'github.com/prometheus-operator/prometheus-operator',
    version: 'v0.85.0',
    dir: 'example/prometheus-operator-crd',
    files: [
      'monitoring.coreos.com_servicemonitors.yaml',
      'monitoring.coreos.com_podmonitors.yaml',
      'monitoring.coreos.com_prometheusrules.yaml',
      'monitoring.coreos.com_probes.yaml',
    ],
  },
] as const;

const BUILD_TIMEOUT_MS = 60 * 60_000;
const FIELD_MANAGER = 'agent-manager-stack';

// ---- files ---------------------------------------------------------------------------------

/**
 * The Kubernetes version helm assumes when no cluster is asked (`helm template`, `helm lint`): its
 * Makefile derives it from the client-go it is built with (v0.37 → 1.37); a plain `go install`
 * leaves helm's fallback 1.20, which refuses charts with `kubeVersion: >=1.30`. Part of the cache
 * key, so a helm built without it is rebuilt (a relink: the Go build cache keeps the packages).
 */
const HELM_KUBE_VERSION = { major: '1', minor: '37' } as const;
const HELM_BUILD = `${HELM_VERSION}-k8s${HELM_KUBE_VERSION.major}.${HELM_KUBE_VERSION.minor}`;
export const stackHelmBinary = (env: NodeJS.ProcessEnv = process.env) => join(toolCacheDir(env, 'helm', HELM_BUILD), 'helm');
export const stackEtcdBinary = (env: NodeJS.ProcessEnv = process.env) => join(toolCacheDir(env, 'etcd', ETCD_VERSION), 'etcd');
export const stackKubeApiserverBinary = (env: NodeJS.ProcessEnv = process.env) => join(toolCacheDir(env, 'kube-apiserver', KUBE_VERSION), 'kube-apiserver');

export interface KubeStackFiles {
  readonly dir: string;
  /** Cluster (server, CA data) and user (admin token) in one file: what KUBECONFIG points at. */
  readonly kubeconfig: string;
  /** The static admin token (user `admin`, group `system:masters`). */
  readonly adminToken: string;
  readonly tokens: string;
  readonly ca: string;
  readonly caKey: string;
  readonly servingCert: string;
  readonly servingKey: string;
  readonly serviceAccountKey: string;
  readonly serviceAccountPub: string;
  readonly auditPolicy: string;
  readonly etcdData: string;
  readonly etcdPid: string;
  readonly apiserverPid: string;
  readonly etcdLog: string;
  readonly apiserverLog: string;
  /** Every request the API server served (metadata level): what a test did, when in doubt. */
  readonly auditLog: string;
  readonly installLog: string;
}

/** The component's files under `<stackDir>/kube` (whether or not they exist yet). */
export function kubeStackFiles(stackDir: string): KubeStackFiles {
  const dir = join(stackDir, 'kube');
  const pki = join(dir, 'pki');
  const logs = join(stackDir, 'logs');
  return {
    dir,
    kubeconfig: join(dir, 'kubeconfig'),
    adminToken: join(dir, 'admin-token'),
    tokens: join(dir, 'tokens.csv'),
    ca: join(pki, 'ca.pem'),
    caKey: join(pki, 'ca-key.pem'),
    servingCert: join(pki, 'apiserver.pem'),
    servingKey: join(pki, 'apiserver-key.pem'),
    serviceAccountKey: join(pki, 'sa-key.pem'),
    serviceAccountPub: join(pki, 'sa.pub'),
    auditPolicy: join(dir, 'audit-policy.yaml'),
    etcdData: join(dir, 'etcd'),
    etcdPid: join(dir, 'etcd.pid'),
    apiserverPid: join(dir, 'apiserver.pid'),
    etcdLog: join(logs, 'kube-etcd.log'),
    apiserverLog: join(logs, 'kube-apiserver.log'),
    auditLog: join(logs, 'kube-audit.log'),
    installLog: join(logs, 'kube-install.log'),
  };
}

// ---- building the Go tools -----------------------------------------------------------------



interface GoTool {
  readonly tool: string;
  readonly version: string;
  readonly binary: string;
  readonly minutes: string;
  /** Builds the binary into `out`, working in `work` (a fresh temporary folder). */
  build(go: GoRunner, work: string, out: string): Promise<void>;
}

type GoRunner = (step: string, args: readonly string[], cwd: string, env?: NodeJS.ProcessEnv) => Promise<string>;

/**
 * Builds a tool once: into a temporary folder beside the cache entry, then renamed into place, so
 * a build cut short (or two `stack up` at once) never leaves a half-written binary at the path.
 */
async function ensureGoTool(ctx: StackContext, spec: GoTool): Promise<void> {
  if (existsSync(spec.binary)) return;
  const f = kubeStackFiles(ctx.stackDir);
  const go = await findGo('kube', `${spec.tool} ${spec.version}`, spec.binary);
  const cacheDir = join(spec.binary, '..');
  mkdirSync(cacheDir, { recursive: true });
  // One build at a time per tool (another checkout's `stack up` may be building it): wait for theirs.
  const lock = join(cacheDir, '.build.pid');
  for (;;) {
    try {
      writeFileSync(lock, `${process.pid}\n`, { flag: 'wx' });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = readPid(lock);
      if (owner === undefined || !isAlive(owner)) {
        rmSync(lock, { force: true });
        continue;
      }
      ctx.progress(`kube: ${spec.tool} ${spec.version} is being built by process ${owner}; waiting for ${spec.binary}`);
      while (isAlive(owner) && !existsSync(spec.binary)) await sleep(2_000);
      if (existsSync(spec.binary)) return;
    }
  }
  try {
    await buildGoTool(ctx, spec, go, f, cacheDir);
  } finally {
    rmSync(lock, { force: true });
  }
}

async function buildGoTool(ctx: StackContext, spec: GoTool, go: string, f: KubeStackFiles, cacheDir: string): Promise<void> {
  if (existsSync(spec.binary)) return;
  const work = mkdtempSync(join(cacheDir, '..', `.build-${spec.tool}-`));
  const env = goBuildEnv(ctx);
  const nice = await commandExists('nice');
  const runGo: GoRunner = async (step, args, cwd, extraEnv) => {
    // Niced: the build leaves CPU to the servers starting beside it.
    const { stdout } = await run(`kube: ${step}`, nice ? 'nice' : go, nice ? ['-n', '10', go, ...args] : args, {
      cwd,
      env: { ...env, ...extraEnv },
      logFile: f.installLog,
      timeoutMs: BUILD_TIMEOUT_MS,
    });
    return stdout;
  };
  ctx.progress(`kube: building ${spec.tool} ${spec.version} from the Go module proxy (${spec.minutes} on 2 cores, once: later runs reuse ${spec.binary}); log: ${f.installLog}`);
  const started = Date.now();
  const seconds = () => Math.round((Date.now() - started) / 1000);
  const ticker = setInterval(() => ctx.progress(`kube: still building ${spec.tool} (${seconds()} s)`), 60_000);
  ticker.unref();
  try {
    const out = join(work, spec.tool);
    await spec.build(runGo, work, out);
    if (!existsSync(out)) throw permanentError('STACK_STEP_FAILED', `kube: the ${spec.tool} build finished without a binary; see ${f.installLog}`);
    renameSync(out, spec.binary);
  } finally {
    clearInterval(ticker);
    rmSync(work, { recursive: true, force: true });
  }
  ctx.progress(`kube: built ${spec.tool} ${spec.version} in ${seconds()} s`);
}

/** `go mod download -json <module>@<version>`: the module's extracted source folder (and its go.mod). */
async function downloadModule(run: GoRunner, cwd: string, module: string, version: string): Promise<{ dir: string; goMod: string }> {
  const out = await run(`go mod download ${module}@${version}`, ['mod', 'download', '-json', `${module}@${version}`], cwd, { GOFLAGS: '' });
  const info = JSON.parse(out) as { Dir?: string; GoMod?: string; Error?: string };
  if (info.Error !== undefined || info.Dir === undefined || info.GoMod === undefined) {
    throw permanentError('STACK_STEP_FAILED', `kube: go mod download ${module}@${version}: ${info.Error ?? 'no Dir in the answer'}`);
  }
  return { dir: info.Dir, goMod: info.GoMod };
}

const helmTool = (env: NodeJS.ProcessEnv): GoTool => ({
  tool: 'helm',
  version: HELM_VERSION,
  binary: stackHelmBinary(env),
  minutes: 'about 3 minutes',
  async build(go, work) {
    // No replace directives: a plain `go install`; the version is what `helm version` prints.
    const kube = (pkg: string) => `-X helm.sh/helm/v3/pkg/${pkg}.k8sVersionMajor=${HELM_KUBE_VERSION.major} -X helm.sh/helm/v3/pkg/${pkg}.k8sVersionMinor=${HELM_KUBE_VERSION.minor}`;
    const ldflags = `-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} ${kube('chartutil')} ${kube('lint/rules')}`;
    await go('go install helm', ['install', '-trimpath', '-ldflags', ldflags, `helm.sh/helm/v3/cmd/helm@${HELM_VERSION}`], work, {
      GOBIN: work,
    });
  },
});

const etcdTool = (env: NodeJS.ProcessEnv): GoTool => ({
  tool: 'etcd',
  version: ETCD_VERSION,
  binary: stackEtcdBinary(env),
  minutes: 'about 2 minutes',
  async build(go, work, out) {
    // The server module's `replace => ../api` lines only count in its own repository: required
    // from a wrapper module, its dependencies resolve to their published versions.
    writeFileSync(join(work, 'go.mod'), 'module local/etcd-build\n\ngo 1.24\n');
    await go('go get etcd', ['get', `go.etcd.io/etcd/server/v3@${ETCD_VERSION}`], work);
    await go('go build etcd', ['build', '-trimpath', '-o', out, 'go.etcd.io/etcd/server/v3'], work);
  },
});

const kubeApiserverTool = (env: NodeJS.ProcessEnv): GoTool => ({
  tool: 'kube-apiserver',
  version: KUBE_VERSION,
  binary: stackKubeApiserverBinary(env),
  minutes: 'about 9 minutes',
  async build(go, work, out) {
    // k8s.io/kubernetes requires its staging modules (k8s.io/api, client-go…) at v0.0.0 and
    // replaces them with ./staging/src/…: the wrapper replaces each with its published v0.x.y
    // (the v1.x.y ↔ v0.x.y mapping), the list read from kubernetes' own go.mod.
    const { goMod } = await downloadModule(go, work, 'k8s.io/kubernetes', KUBE_VERSION);
    const staging = [...readFileSync(goMod, 'utf8').matchAll(/^\s*(k8s\.io\/[\w.-]+)\s+=>\s+\.\/staging\//gm)].map((m) => m[1] ?? '');
    if (staging.length === 0) throw permanentError('STACK_STEP_FAILED', `kube: no staging replace directives found in ${goMod}`);
    const stagingVersion = KUBE_VERSION.replace(/^v1\./, 'v0.');
    writeFileSync(
      join(work, 'go.mod'),
      `module local/kube-apiserver-build\n\ngo 1.24\n\nrequire k8s.io/kubernetes ${KUBE_VERSION}\n\nreplace (\n${staging.map((m) => `\t${m} => ${m} ${stagingVersion}\n`).join('')})\n`,
    );
    writeFileSync(join(work, 'tools.go'), '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n');
    await go('go get kube-apiserver', ['get', `k8s.io/kubernetes/cmd/kube-apiserver@${KUBE_VERSION}`], work);
    // Without these the server reports v0.0.0-master, which Helm's kubeVersion checks refuse.
    const [major, minor] = KUBE_VERSION.slice(1).split('.');
    const v = 'k8s.io/component-base/version';
    const ldflags = `-X ${v}.gitVersion=${KUBE_VERSION} -X ${v}.gitMajor=${major} -X ${v}.gitMinor=${minor} -X ${v}.gitTreeState=clean`;
    await go('go build kube-apiserver', ['build', '-trimpath', '-ldflags', ldflags, '-o', out, 'k8s.io/kubernetes/cmd/kube-apiserver'], work);
  },
});

/** Builds what is missing, one at a time (two Go builds at once only share the same 2 cores). */
export async function ensureKubeTools(ctx: StackContext): Promise<void> {
  for (const tool of [etcdTool(ctx.env), kubeApiserverTool(ctx.env), helmTool(ctx.env)]) await ensureGoTool(ctx, tool);
}

// ---- PKI, token, kubeconfig ----------------------------------------------------------------

function writePrivate(path: string, content: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  renameSync(tmp, path);
}

/** Makes what is missing: CA, serving certificate, service-account key pair, admin token, kubeconfig. */
function ensureKubeSecrets(f: KubeStackFiles): void {
  mkdirSync(join(f.ca, '..'), { recursive: true, mode: 0o700 });
  let fresh = false;
  if (!existsSync(f.ca) || !existsSync(f.caKey)) {
    const ca = createCertificateAuthority('Agent Manager local kube CA');
    writePrivate(f.caKey, ca.key);
    writePrivate(f.ca, ca.cert);
    fresh = true;
  }
  if (fresh || !existsSync(f.servingCert) || !existsSync(f.servingKey)) {
    const ca = loadCertificateAuthority(readFileSync(f.caKey, 'utf8'), readFileSync(f.ca, 'utf8'));
    const names = ['127.0.0.1', 'localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local'];
    const serving = issueCertificate(ca, 'kube-apiserver', { serverNames: names, clientAuth: false });
    writePrivate(f.servingKey, serving.key);
    writePrivate(f.servingCert, serving.cert);
  }
  if (!existsSync(f.serviceAccountKey) || !existsSync(f.serviceAccountPub)) {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', {
      modulusLength: 2048,
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    });
    writePrivate(f.serviceAccountKey, privateKey);
    writePrivate(f.serviceAccountPub, publicKey);
  }
  if (!existsSync(f.adminToken)) writePrivate(f.adminToken, `${randomBytes(24).toString('hex')}\n`);
  const token = readFileSync(f.adminToken, 'utf8').trim();
  writePrivate(f.tokens, `${token},admin,admin,"system:masters"\n`);
  writeFileSync(
    f.auditPolicy,
    'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n',
  );
  const caData = Buffer.from(readFileSync(f.ca)).toString('base64');
  writePrivate(
    f.kubeconfig,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '  - name: agent-manager-stack',
      '    cluster:',
      `      server: ${KUBE_API_URL}`,
      `      certificate-authority-data: ${caData}`,
      'users:',
      '  - name: admin',
      '    user:',
      `      token: ${token}`,
      'contexts:',
      '  - name: agent-manager-stack',
      '    context:',
      '      cluster: agent-manager-stack',
      '      user: admin',
      '      namespace: default',
      'current-context: agent-manager-stack',
      '',
    ].join('\n'),
  );
}

/** GET on the API server with the admin token: the status code, or undefined when nothing answers. */
function apiGet(f: KubeStackFiles, path: string, timeoutMs = 3000): Promise<{ status: number; body: string } | undefined> {
  if (!existsSync(f.ca) || !existsSync(f.adminToken)) return Promise.resolve(undefined);
  const ca = readFileSync(f.ca);
  const token = readFileSync(f.adminToken, 'utf8').trim();
  return new Promise((resolve) => {
    const req = request(`${KUBE_API_URL}${path}`, { ca, headers: { authorization: `Bearer ${token}` }, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

/** Ready, and it is ours: our admin token is accepted (a 401 means another server on the port). */
async function apiReady(f: KubeStackFiles): Promise<boolean> {
  return (await apiGet(f, '/readyz'))?.status === 200;
}

const etcdUrl = `http://${KUBE_STACK.host}:${KUBE_STACK.etcdPort}`;
const etcdHealthy = () => httpOk(`${etcdUrl}/health`);

// ---- CRDs ----------------------------------------------------------------------------------

interface CrdObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string };
}

/** Server-side apply of each CRD (no last-applied annotation: the big ones exceed its 256 KB), then waits until Established. */
async function applyCrds(ctx: StackContext, f: KubeStackFiles): Promise<number> {
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  config.loadFromFile(f.kubeconfig);
  const objects = k8s.KubernetesObjectApi.makeApiClient(config);
  const extensions = config.makeApiClient(k8s.ApiextensionsV1Api);
  const go = await findGo('kube', 'the CRDs', 'the module cache');
  const names: string[] = [];
  for (const source of KUBE_CRD_SOURCES) {
    const { stdout } = await run(`kube: go mod download ${source.module}@${source.version}`, go, ['mod', 'download', '-json', `${source.module}@${source.version}`], {
      cwd: f.dir,
      env: { ...goBuildEnv(ctx), GOFLAGS: '' },
      logFile: f.installLog,
      timeoutMs: 10 * 60_000,
    });
    const dir = (JSON.parse(stdout) as { Dir?: string }).Dir;
    if (dir === undefined) throw permanentError('STACK_STEP_FAILED', `kube: go mod download ${source.module}@${source.version} gave no folder; see ${f.installLog}`);
    for (const file of source.files) {
      for (const doc of k8s.loadAllYaml(readFileSync(join(dir, source.dir, file), 'utf8')) as CrdObject[]) {
        if (doc?.kind !== 'CustomResourceDefinition' || doc.metadata?.name === undefined) continue;
        try {
          await objects.patch(doc, undefined, undefined, FIELD_MANAGER, true, k8s.PatchStrategy.ServerSideApply);
        } catch (error) {
          throw retryableError('STACK_STEP_FAILED', `kube: applying the CRD ${doc.metadata.name} (${source.module}@${source.version}/${source.dir}/${file}) failed: ${errorMessage(error).slice(0, 500)}`, error);
        }
        names.push(doc.metadata.name);
      }
    }
  }
  const deadline = Date.now() + 60_000;
  for (const name of names) {
    for (;;) {
      const crd = await extensions.readCustomResourceDefinition({ name });
      if (crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (Date.now() > deadline) throw retryableError('STACK_COMPONENT_TIMEOUT', `kube: the CRD ${name} is not Established after 60 s`);
      await sleep(200);
    }
  }
  return names.length;
}

/**
 * The controller-manager that would make it is not running: the `default` namespace's `default`
 * ServiceAccount, without which no Pod can be created there.
 */
async function ensureDefaultServiceAccount(f: KubeStackFiles): Promise<void> {
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  config.loadFromFile(f.kubeconfig);
  const core = config.makeApiClient(k8s.CoreV1Api);
  try {
    await core.createNamespacedServiceAccount({ namespace: 'default', body: { metadata: { name: 'default' } } });
  } catch (error) {
    if ((error as { code?: unknown }).code !== 409) throw error;
  }
}

// ---- the component -------------------------------------------------------------------------

export function kubeComponent(): StackComponent {
  const name = 'kube';
  const running = (ctx: StackContext) => {
    const pid = readPid(kubeStackFiles(ctx.stackDir).apiserverPid);
    return pid !== undefined && isAlive(pid);
  };

  async function startEtcd(ctx: StackContext, f: KubeStackFiles): Promise<void> {
    if (await etcdHealthy()) return;
    mkdirSync(f.etcdData, { recursive: true, mode: 0o700 });
    ctx.progress(`kube: starting etcd ${ETCD_VERSION} on ${etcdUrl}`);
    const peer = `http://${KUBE_STACK.host}:${KUBE_STACK.etcdPeerPort}`;
    const pid = spawnDetached({
      command: stackEtcdBinary(ctx.env),
      args: [
        '--name=stack',
        `--data-dir=${f.etcdData}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=stack=${peer}`,
        '--log-level=warn',
        // A throw-away development store: no fsync per write (a slow shared disk would otherwise
        // stretch every API write, and the Lease elector's timing with it).
        '--unsafe-no-fsync',
        '--quota-backend-bytes=2147483648',
      ],
      cwd: f.dir,
      logFile: f.etcdLog,
      pidFile: f.etcdPid,
    });
    await waitUntil('kube (etcd)', etcdHealthy, { timeoutMs: 60_000, logFile: f.etcdLog, pid });
  }

  async function startApiserver(ctx: StackContext, f: KubeStackFiles): Promise<void> {
    ctx.progress(`kube: starting kube-apiserver ${KUBE_VERSION} on ${KUBE_API_URL}`);
    const pid = spawnDetached({
      command: stackKubeApiserverBinary(ctx.env),
      args: [
        `--etcd-servers=${etcdUrl}`,
        `--bind-address=${KUBE_STACK.host}`,
        `--advertise-address=${KUBE_STACK.host}`,
        `--secure-port=${KUBE_STACK.port}`,
        // Without it the server refuses a loopback advertise address (no kubernetes Service endpoints).
        '--endpoint-reconciler-type=none',
        `--tls-cert-file=${f.servingCert}`,
        `--tls-private-key-file=${f.servingKey}`,
        `--token-auth-file=${f.tokens}`,
        '--authorization-mode=RBAC',
        `--service-account-key-file=${f.serviceAccountPub}`,
        `--service-account-signing-key-file=${f.serviceAccountKey}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        '--api-audiences=https://kubernetes.default.svc.cluster.local',
        '--service-cluster-ip-range=10.96.0.0/16',
        `--audit-policy-file=${f.auditPolicy}`,
        `--audit-log-path=${f.auditLog}`,
        '--audit-log-maxsize=100',
        '--audit-log-maxbackup=1',
        '--profiling=false',
      ],
      cwd: f.dir,
      logFile: f.apiserverLog,
      pidFile: f.apiserverPid,
    });
    await waitUntil('kube (kube-apiserver)', () => apiReady(f), { timeoutMs: 180_000, logFile: f.apiserverLog, pid });
  }

  return {
    name,
    version: `kube-apiserver ${KUBE_VERSION} + etcd ${ETCD_VERSION} (CRDs: ${KUBE_CRD_SOURCES.map((s) => `${s.label} ${s.version}`).join(', ')}; no kubelet)`,
    address: KUBE_API_URL,
    env(ctx): Record<string, string> {
      // Only while it runs: a KUBECONFIG pointing at a stopped server would send the services' and
      // tests' Kubernetes clients there instead of their own configuration.
      return running(ctx) ? { KUBECONFIG: kubeStackFiles(ctx.stackDir).kubeconfig } : {};
    },
    install: (ctx) => ensureKubeTools(ctx),
    async start(ctx) {
      const f = kubeStackFiles(ctx.stackDir);
      mkdirSync(f.dir, { recursive: true });
      ensureKubeSecrets(f);
      let outcome: 'started' | 'reused' = 'reused';
      if (!(await apiReady(f))) {
        const answer = await apiGet(f, '/readyz');
        if (answer !== undefined && (answer.status === 401 || answer.status === 403)) {
          throw permanentError('STACK_PORT_TAKEN', `kube: another API server answers on ${KUBE_API_URL} and refuses the stack's admin token; stop it or free port ${KUBE_STACK.port}`);
        }
        await startEtcd(ctx, f);
        if (!(await apiReady(f))) {
          // A server left unhealthy (etcd went away under it) is restarted.
          await stopProcessGroup(f.apiserverPid, 'SIGTERM', 15_000);
          await startApiserver(ctx, f);
        }
        outcome = 'started';
      }
      await ensureDefaultServiceAccount(f);
      const crds = await applyCrds(ctx, f);
      ctx.progress(`kube: ${crds} CRDs applied (${KUBE_CRD_SOURCES.map((s) => `${s.module}@${s.version}`).join(', ')}); KUBECONFIG=${f.kubeconfig}`);
      return outcome;
    },
    async stop(ctx) {
      const f = kubeStackFiles(ctx.stackDir);
      const apiserver = await stopProcessGroup(f.apiserverPid, 'SIGTERM', 15_000);
      const etcd = await stopProcessGroup(f.etcdPid, 'SIGTERM', 15_000);
      return apiserver || etcd;
    },
    status(ctx) {
      const f = kubeStackFiles(ctx.stackDir);
      return processStatus(this, f.apiserverPid, async () => (await apiReady(f)) && (await etcdHealthy()));
    },
  };
}
