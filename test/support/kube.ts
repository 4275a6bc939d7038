/**
 * The local stack's Kubernetes API server (`npx agent-manager stack up --with kube`) for tests: an
 * admin client, a namespace of the test's own, and the kubelet's part (no kubelet runs: a test that
 * needs a Pod Running, Ready or exited writes its status itself, as envtest users do).
 *
 * `TestNamespace.delete()` / `deleteNamespace` empty and remove a namespace as the namespace
 * controller would (none runs here, so a plain delete would leave it Terminating for ever).
 *
 * Always the stack's own kubeconfig (`.stack/kube/kubeconfig`), never $KUBECONFIG: a test must not
 * reach a developer's real cluster by accident.
 */
import { existsSync, readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import type * as K8s from '@kubernetes/client-node';
import { KUBE_API_URL, kubeStackFiles, stackHelmBinary } from '../../dev/stack/kube.ts';
import { uniqueName } from './stack.ts';

export { KUBE_API_URL, stackHelmBinary };

type KubeModule = typeof K8s;

/** The stack's kube files (kubeconfig, admin token, CA…), relative to the checkout the tests run in. */
export const kubeFiles = () => kubeStackFiles(join(process.cwd(), '.stack'));

/** The kubeconfig of the stack's admin (token in `system:masters`): for helm (`--kubeconfig`) and child processes (KUBECONFIG). */
export function kubeconfigPath(): string {
  const file = kubeFiles().kubeconfig;
  if (!existsSync(file)) throw new Error(`no ${file}: start the Kubernetes API server with \`npx agent-manager stack up --with kube\``);
  return file;
}

/** The static admin token (for raw HTTP, e.g. `Authorization: Bearer …`). */
export const adminToken = () => readFileSync(kubeFiles().adminToken, 'utf8').trim();

export interface KubeAdmin {
  readonly k8s: KubeModule;
  readonly config: K8s.KubeConfig;
  readonly core: K8s.CoreV1Api;
  readonly coordination: K8s.CoordinationV1Api;
  readonly rbac: K8s.RbacAuthorizationV1Api;
  readonly authorization: K8s.AuthorizationV1Api;
  /** Any object (custom resources included), e.g. `objects.create(scaledObject)`. */
  readonly objects: K8s.KubernetesObjectApi;
}

/** Clients acting as the stack's admin. */
export async function kubeAdmin(): Promise<KubeAdmin> {
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  config.loadFromFile(kubeconfigPath());
  return {
    k8s,
    config,
    core: config.makeApiClient(k8s.CoreV1Api),
    coordination: config.makeApiClient(k8s.CoordinationV1Api),
    rbac: config.makeApiClient(k8s.RbacAuthorizationV1Api),
    authorization: config.makeApiClient(k8s.AuthorizationV1Api),
    objects: k8s.KubernetesObjectApi.makeApiClient(config),
  };
}

export interface TestNamespace {
  readonly name: string;
  /** Deletes the namespace and everything in it (see `deleteNamespace`). */
  delete(): Promise<void>;
}

/** One request to the API server as the stack's admin: status and parsed JSON body. */
export function adminRequest(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      `${KUBE_API_URL}${path}`,
      {
        method,
        ca: readFileSync(kubeFiles().ca),
        headers: { authorization: `Bearer ${adminToken()}`, accept: 'application/json', ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // Not JSON: kept as text.
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

interface ApiResourceList {
  resources?: Array<{ name: string; namespaced: boolean; verbs: string[] }>;
}

/** `/api/v1` and the preferred version of every group: the API paths of the namespaced kinds that support deletecollection. */
async function namespacedCollections(): Promise<string[]> {
  const groups = (await adminRequest('GET', '/apis')).body as { groups?: Array<{ preferredVersion?: { groupVersion: string } }> };
  const bases = ['/api/v1', ...(groups.groups ?? []).flatMap((g) => (g.preferredVersion ? [`/apis/${g.preferredVersion.groupVersion}`] : []))];
  const lists = await Promise.all(bases.map(async (base) => ({ base, list: (await adminRequest('GET', base)).body as ApiResourceList })));
  return lists.flatMap(({ base, list }) =>
    (list.resources ?? []).filter((r) => r.namespaced && !r.name.includes('/') && r.verbs.includes('deletecollection')).map((r) => `${base}/namespaces/{ns}/${r.name}`),
  );
}

/**
 * Deletes a namespace the way the controller-manager's namespace controller would (it does not run
 * here: without it a deleted namespace stays Terminating forever, its objects with it): every
 * object in it (Pods at once, grace 0: no kubelet will confirm), then the namespace's finalizer.
 */
export async function deleteNamespace(name: string): Promise<void> {
  const paths = await namespacedCollections();
  await adminRequest('DELETE', `/api/v1/namespaces/${name}`);
  await Promise.all(
    paths.map((path) => adminRequest('DELETE', path.replace('{ns}', name), { gracePeriodSeconds: 0, propagationPolicy: 'Background' })),
  );
  const current = await adminRequest('GET', `/api/v1/namespaces/${name}`);
  if (current.status === 404) return;
  const namespace = current.body as { spec?: { finalizers?: string[] } };
  await adminRequest('PUT', `/api/v1/namespaces/${name}/finalize`, { ...namespace, spec: { ...namespace.spec, finalizers: [] } });
}

/** A namespace name of the test's own (DNS-1123: lowercase, at most 63 characters). */
export function uniqueNamespace(prefix: string): string {
  return uniqueName(prefix.toLowerCase().replace(/[^a-z0-9-]/g, '-').slice(0, 40));
}

/**
 * Creates a namespace of the test's own. With `defaultServiceAccount` (the default) it also creates
 * the `default` ServiceAccount the controller-manager would make, without which no Pod is admitted.
 */
export async function createTestNamespace(prefix: string, options: { defaultServiceAccount?: boolean } = {}): Promise<TestNamespace> {
  const { core } = await kubeAdmin();
  const name = uniqueNamespace(prefix);
  await core.createNamespace({ body: { metadata: { name, labels: { 'agent-manager.test/namespace': 'true' } } } });
  if (options.defaultServiceAccount ?? true) await createDefaultServiceAccount(name);
  return {
    name,
    delete: () => deleteNamespace(name),
  };
}

/** What the controller-manager's service-account controller does for every new namespace. */
export async function createDefaultServiceAccount(namespace: string): Promise<void> {
  const { core } = await kubeAdmin();
  await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'default' } } }).catch((error: unknown) => {
    if ((error as { code?: unknown }).code !== 409) throw error;
  });
}

// ---- acting as the scheduler and the kubelet --------------------------------------------------

/**
 * Binds the Pod to a node, as the scheduler would (the node need not exist). A graceful deletion
 * only waits for a bound Pod: an unbound one is removed at once, whatever the grace.
 */
export async function bindPod(namespace: string, name: string, node = 'stack-node'): Promise<void> {
  const { core } = await kubeAdmin();
  await core.createNamespacedPodBinding({
    name,
    namespace,
    body: { metadata: { name, namespace }, target: { apiVersion: 'v1', kind: 'Node', name: node } },
  });
}

export type PodStatusBody = NonNullable<K8s.V1Pod['status']>;

/** Writes a Pod's status (the `status` subresource, as a kubelet does); retried on a conflict. */
export async function setPodStatus(namespace: string, name: string, status: (pod: K8s.V1Pod) => PodStatusBody): Promise<K8s.V1Pod> {
  const { core } = await kubeAdmin();
  for (let attempt = 0; ; attempt++) {
    const pod = await core.readNamespacedPod({ name, namespace });
    try {
      return await core.replaceNamespacedPodStatus({ name, namespace, body: { ...pod, status: status(pod) } });
    } catch (error) {
      if ((error as { code?: unknown }).code !== 409 || attempt >= 5) throw error;
    }
  }
}

const containerNames = (pod: K8s.V1Pod) => (pod.spec?.containers ?? []).map((c) => c.name);

/** Running with every container ready (the driver reports STARTED). */
export function runningReady(pod: K8s.V1Pod): PodStatusBody {
  const now = new Date();
  return {
    phase: 'Running',
    conditions: [
      { type: 'PodScheduled', status: 'True', lastTransitionTime: now },
      { type: 'Initialized', status: 'True', lastTransitionTime: now },
      { type: 'ContainersReady', status: 'True', lastTransitionTime: now },
      { type: 'Ready', status: 'True', lastTransitionTime: now },
    ],
    containerStatuses: containerNames(pod).map((name) => ({
      name,
      ready: true,
      started: true,
      restartCount: 0,
      image: pod.spec?.containers.find((c) => c.name === name)?.image ?? '',
      imageID: '',
      state: { running: { startedAt: now } },
    })),
  };
}

/** Every container ended with `exitCode` (Failed unless 0). */
export function exited(exitCode: number, signal?: number): (pod: K8s.V1Pod) => PodStatusBody {
  return (pod) => {
    const now = new Date();
    return {
      phase: exitCode === 0 ? 'Succeeded' : 'Failed',
      conditions: [{ type: 'Ready', status: 'False', lastTransitionTime: now }],
      containerStatuses: containerNames(pod).map((name) => ({
        name,
        ready: false,
        restartCount: 0,
        image: pod.spec?.containers.find((c) => c.name === name)?.image ?? '',
        imageID: '',
        state: { terminated: { exitCode, ...(signal !== undefined ? { signal } : {}), reason: exitCode === 0 ? 'Completed' : 'Error', finishedAt: now } },
      })),
    };
  };
}

/**
 * The kubelet's last step of a graceful deletion: once the containers ended it deletes the Pod
 * with grace 0, which removes it from the API. Returns false when it was already gone.
 */
export async function finishDeletion(namespace: string, name: string): Promise<boolean> {
  const { core } = await kubeAdmin();
  try {
    await core.deleteNamespacedPod({ name, namespace, body: { gracePeriodSeconds: 0 } });
    return true;
  } catch (error) {
    if ((error as { code?: unknown }).code === 404) return false;
    throw error;
  }
}
