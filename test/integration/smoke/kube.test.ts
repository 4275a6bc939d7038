/**
 * The stack's optional Kubernetes API server (`stack up --with kube`): what the chart and driver
 * tests rely on — its version, token authentication, RBAC, the CRDs applied from KEDA's and the
 * Prometheus operator's modules (with their schemas enforced), and `stack env` pointing KUBECONFIG at it.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { KUBE_CRD_SOURCES } from '../../../dev/stack/kube.ts';
import { createTestNamespace, kubeAdmin, KUBE_API_URL, kubeconfigPath, kubeFiles, type KubeAdmin, type TestNamespace } from '../../support/kube.ts';

let admin: KubeAdmin;
let ns: TestNamespace;

beforeAll(async () => {
  admin = await kubeAdmin();
  ns = await createTestNamespace('smoke-kube');
});

afterAll(async () => {
  await ns.delete();
});

/** A GET with an optional bearer token: the HTTP status. */
function statusOf(path: string, token?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${KUBE_API_URL}${path}`, { ca: readFileSync(kubeFiles().ca), headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('kube component (etcd + kube-apiserver, no kubelet)', () => {
  it('serves Kubernetes v1.37 over TLS with its own CA; anonymous requests may not read objects, a wrong token is refused', async () => {
    const version = await admin.config.makeApiClient(admin.k8s.VersionApi).getCode();
    expect(version).toMatchObject({ major: '1', minor: '37', gitVersion: 'v1.37.2' });
    expect(await statusOf('/api/v1/namespaces')).toBe(403);
    expect(await statusOf('/api/v1/namespaces', 'not-the-token')).toBe(401);
  });

  it('applies RBAC: a ServiceAccount with no role may not list Pods', async () => {
    const review = await admin.authorization.createSubjectAccessReview({
      body: {
        spec: {
          user: `system:serviceaccount:${ns.name}:default`,
          groups: ['system:serviceaccounts', `system:serviceaccounts:${ns.name}`],
          resourceAttributes: { namespace: ns.name, verb: 'list', resource: 'pods' },
        },
      },
    });
    expect(review.status?.allowed).toBe(false);
  });

  it('has the KEDA and Prometheus-operator CRDs Established, and enforces their schemas', async () => {
    const crds = await admin.config.makeApiClient(admin.k8s.ApiextensionsV1Api).listCustomResourceDefinition();
    const established = new Set(crds.items.filter((c) => c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True')).map((c) => c.metadata?.name));
    const expected = KUBE_CRD_SOURCES.flatMap((s) => s.files.map((f) => f.replace(/^([^_]+)_(.+)\.yaml$/, '$2.$1')));
    for (const name of expected) expect(established).toContain(name);

    const scaledObject = (minReplicaCount: unknown) => ({
      apiVersion: 'keda.sh/v1alpha1',
      kind: 'ScaledObject',
      metadata: { name: 'smoke', namespace: ns.name },
      spec: { scaleTargetRef: { name: 'ingest' }, minReplicaCount, triggers: [{ type: 'kafka', metadata: { topic: 't', lagThreshold: '10' } }] },
    });
    await expect(admin.objects.create(scaledObject('two'))).rejects.toMatchObject({ code: 422 });
    await expect(admin.objects.create(scaledObject(1))).resolves.toMatchObject({ kind: 'ScaledObject' });
  });

  it('`stack env` exports KUBECONFIG (the stack kubeconfig) while it runs', () => {
    const out = execFileSync(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), 'stack', 'env'], { encoding: 'utf8' });
    expect(out).toContain(`KUBECONFIG=${kubeconfigPath()}`);
  });
});
