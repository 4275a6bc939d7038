/**
 * The Kubernetes API as the kubernetes driver uses it: the five CoreV1Api calls (`PodApi`; tests
 * pass a fake), the fields of a Pod it reads, and how an API failure maps to the project's errors.
 */
import { AppError, isAppError, permanentError, retryableError } from '../../../lib/errors.ts';
import { describeKubernetesFailure, kubernetesFailure, kubernetesHttpStatus } from '../../../lib/kubernetes-status.ts';
import type { PodManifest } from './kubernetes-manifest.ts';

export interface PodContainerState {
  waiting?: { reason?: string; message?: string };
  running?: { startedAt?: Date };
  terminated?: { exitCode: number; signal?: number; reason?: string; message?: string };
}

/** The fields of a `V1Pod` this driver reads. */
export interface PodObject {
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    labels?: { [key: string]: string };
    annotations?: { [key: string]: string };
    deletionTimestamp?: Date;
  };
  status?: {
    phase?: string;
    reason?: string;
    message?: string;
    conditions?: Array<{ type: string; status: string; reason?: string; message?: string }>;
    containerStatuses?: Array<{ name: string; ready: boolean; state?: PodContainerState }>;
  };
}

/** The CoreV1Api calls the driver makes (object-parameter style of @kubernetes/client-node 1.x/2.x). */
export interface PodApi {
  createNamespacedPod(param: { namespace: string; body: PodManifest }): Promise<PodObject>;
  readNamespacedPod(param: { name: string; namespace: string }): Promise<PodObject>;
  /** An update conditional on `body.metadata.resourceVersion` (409 when the Pod changed since). */
  replaceNamespacedPod(param: { name: string; namespace: string; body: PodObject }): Promise<PodObject>;
  /**
   * The grace goes in the body (DeleteOptions): the API server reads the `gracePeriodSeconds` query
   * parameter only when the DELETE has no body, and a body with preconditions would silently win.
   */
  deleteNamespacedPod(param: { name: string; namespace: string; body?: { gracePeriodSeconds?: number; preconditions?: { uid?: string; resourceVersion?: string } } }): Promise<unknown>;
  listNamespacedPod(param: { namespace: string; labelSelector?: string }): Promise<{ items: PodObject[] }>;
}

/** CoreV1Api from the default kubeconfig (in-cluster service account, KUBECONFIG or ~/.kube/config). */
export async function createKubernetesPodApi(): Promise<PodApi> {
  // Loaded on demand: the client is ESM-only and large, and only this driver needs it.
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  config.loadFromDefault();
  const api: PodApi = config.makeApiClient(k8s.CoreV1Api);
  return api;
}

/** The HTTP status of a client-node error (ApiException.code), or undefined when no answer came. */
export const httpStatusOf = kubernetesHttpStatus;

/**
 * The admission error of a Pod created in a namespace whose `default` ServiceAccount does not exist
 * yet: the controller-manager makes it a moment after the namespace, so right after a namespace is
 * created this 403 is a race, not a refusal.
 */
const DEFAULT_SERVICE_ACCOUNT_MISSING = /serviceaccount "default" not found/;

/**
 * Maps a Kubernetes API failure to the project's taxonomy: invalid (400, 422) and not allowed
 * (401, 403) will fail the same way again; a conflict (409), throttling (429), a server error (5xx)
 * or no answer may succeed later; so may a Pod refused because its namespace's `default`
 * ServiceAccount is not made yet. The message is the server's Status (reason and message).
 */
export function kubernetesError(error: unknown, what: string): AppError {
  if (isAppError(error)) return error;
  const failure = kubernetesFailure(error);
  const status = failure.httpStatus;
  const reason = describeKubernetesFailure(failure);
  const context = { status: status ?? null, reason: failure.reason ?? null };
  if (status === undefined) return retryableError('KUBERNETES_UNREACHABLE', `${what}: the Kubernetes API did not answer: ${reason}`, error, context);
  const message = `${what}: the Kubernetes API answered HTTP ${status}: ${reason}`;
  if (status === 403 && DEFAULT_SERVICE_ACCOUNT_MISSING.test(failure.message)) {
    return retryableError('KUBERNETES_SERVICE_ACCOUNT_PENDING', `${message} (the namespace's default ServiceAccount does not exist yet, as right after the namespace is created)`, error, context);
  }
  if (status === 401 || status === 403) return permanentError('KUBERNETES_FORBIDDEN', message, error, context);
  if (status === 400 || status === 422) return permanentError('KUBERNETES_INVALID', message, error, context);
  if (status === 404) return permanentError('KUBERNETES_NOT_FOUND', message, error, context);
  if (status === 409) return retryableError('KUBERNETES_CONFLICT', message, error, context);
  if (status === 429 || status >= 500) return retryableError('KUBERNETES_UNAVAILABLE', message, error, context);
  return permanentError('KUBERNETES_REJECTED', message, error, context);
}
