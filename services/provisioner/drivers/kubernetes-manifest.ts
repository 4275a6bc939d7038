/**
 * The Pod the `kubernetes` allocator driver creates for an agent, built by a pure function.
 *
 * One Pod per agent, named from the agentId, so the API server itself guarantees that no two
 * instances of an agent run at once (a second create is a 409). `restartPolicy: Never`: the
 * provisioner owns restarts (its lifecycle and restart policy), not the kubelet. Requests equal
 * limits (Guaranteed QoS; extended resources such as `nvidia.com/gpu` require it anyway). The
 * environment comes by reference only: secret names and keys, never values.
 *
 * @kubernetes/client-node is not a dependency yet, so the types below are the subset of its
 * `V1Pod` this builder sets, with the same field names and mutable shapes: a `PodManifest` can be
 * passed where a `V1Pod` is expected.
 */
import { createHash } from 'node:crypto';
import { permanentError } from '../../../lib/errors.ts';

export interface EnvVarSource {
  secretKeyRef?: { name: string; key: string; optional?: boolean };
}

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: EnvVarSource;
}

export interface EnvFromSource {
  secretRef?: { name: string };
  configMapRef?: { name: string };
}

export interface ResourceRequirements {
  requests: Record<string, string>;
  limits: Record<string, string>;
}

export interface ContainerSecurityContext {
  allowPrivilegeEscalation: boolean;
  privileged: boolean;
  readOnlyRootFilesystem: boolean;
  runAsNonRoot: boolean;
  capabilities: { drop: string[] };
}

export interface Container {
  name: string;
  image: string;
  imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  command?: string[];
  args?: string[];
  env: EnvVar[];
  envFrom?: EnvFromSource[];
  resources: ResourceRequirements;
  securityContext: ContainerSecurityContext;
  volumeMounts: Array<{ name: string; mountPath: string }>;
}

export interface Toleration {
  key: string;
  operator: 'Exists' | 'Equal';
  value?: string;
  effect: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
}

export interface PodSecurityContext {
  runAsNonRoot: boolean;
  runAsUser: number;
  runAsGroup: number;
  fsGroup: number;
  seccompProfile: { type: 'RuntimeDefault' };
}

export interface PodManifest {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: {
    name: string;
    namespace: string;
    labels: Record<string, string>;
    annotations: Record<string, string>;
  };
  spec: {
    restartPolicy: 'Never';
    automountServiceAccountToken: boolean;
    enableServiceLinks: boolean;
    serviceAccountName?: string;
    imagePullSecrets?: Array<{ name: string }>;
    terminationGracePeriodSeconds: number;
    nodeSelector: Record<string, string>;
    tolerations?: Toleration[];
    securityContext: PodSecurityContext;
    containers: Container[];
    volumes: Array<{ name: string; emptyDir: { sizeLimit: string } }>;
  };
}

/** An environment variable taken from one key of a Kubernetes Secret. */
export interface SecretEnvRef {
  readonly name: string;
  readonly secretName: string;
  readonly key: string;
  readonly optional?: boolean;
}

export interface AgentPodInput {
  readonly agentId: string;
  readonly namespace: string;
  readonly image: string;
  readonly command?: readonly string[];
  readonly args?: readonly string[];
  /** CPU cores (fractions allowed, down to 1m). */
  readonly cpu: number;
  readonly memoryMb: number;
  readonly gpuCount: number;
  /** GPU product as labelled on the nodes (e.g. `NVIDIA-A100-SXM4-80GB`); only with gpuCount > 0. */
  readonly gpuType?: string | null;
  readonly division?: string;
  /** The deployment (release) the Pod belongs to: `app.kubernetes.io/instance`, what its driver selects on. */
  readonly instance?: string;
  /** The lifecycle fence of this start (labels and env, so the driver can report it back). */
  readonly generation?: number;
  readonly attempt?: number;
  /** Environment by reference: names of secrets and keys, never values. */
  readonly secretEnv?: readonly SecretEnvRef[];
  /** Whole Secrets / ConfigMaps exposed as environment variables. */
  readonly envFromSecrets?: readonly string[];
  readonly envFromConfigMaps?: readonly string[];
  readonly serviceAccountName?: string;
  readonly imagePullSecrets?: readonly string[];
  /** Grace between SIGTERM and SIGKILL on deletion (the lifecycle's stopGraceMs). */
  readonly stopGraceMs?: number;
}

export interface PodManifestOptions {
  /** Node label holding the GPU product (NVIDIA GPU Feature Discovery's by default). */
  readonly gpuProductLabel?: string;
  /** Extra node selector for GPU pods, e.g. a dedicated pool's label. */
  readonly gpuNodeSelector?: Readonly<Record<string, string>>;
  /** UID/GID the agent runs as (non-root). */
  readonly runAsUser?: number;
  /** Size of the writable /tmp (the root filesystem is read-only). */
  readonly tmpSizeMb?: number;
}

export const GPU_RESOURCE = 'nvidia.com/gpu';
export const LABEL_AGENT_ID = 'agentmanager.io/agent-id';
export const LABEL_DIVISION = 'agentmanager.io/division';
export const LABEL_GENERATION = 'agentmanager.io/generation';
export const LABEL_ATTEMPT = 'agentmanager.io/attempt';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const LABEL_INSTANCE = 'app.kubernetes.io/instance';
/** The leader term (lease and fencing token) that last claimed the Pod for a stop or a destroy. */
export const ANNOTATION_FENCING_LEASE = 'agentmanager.io/fencing-lease';
export const ANNOTATION_FENCING_TOKEN = 'agentmanager.io/fencing-token';
/** Set by the builder; a secretEnv entry may not reuse them. */
export const RESERVED_ENV = ['AGENT_ID', 'AGENT_GENERATION', 'AGENT_ATTEMPT'] as const;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SECRET_KEY = /^[-._a-zA-Z0-9]+$/;
const MAX_NAME = 63;

function isDnsLabel(value: unknown): value is string {
  return typeof value === 'string' && value.length <= MAX_NAME && DNS_LABEL.test(value);
}

function isDnsSubdomain(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 253 && DNS_SUBDOMAIN.test(value);
}

function isLabelValue(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 63 && LABEL_VALUE.test(value);
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

/**
 * The Pod name of an agent: `agent-<agentId>` when that is a DNS-1123 label already; otherwise a
 * sanitized, truncated form plus 8 hex digits of the agentId's SHA-256, so distinct ids never
 * share a name and the same id always gets the same one.
 */
export function podNameFor(agentId: string): string {
  const slug = agentId
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-+|-+$/g, '');
  const plain = `agent-${slug}`;
  if (slug === agentId && plain.length <= MAX_NAME) return plain;
  const hash = createHash('sha256').update(agentId).digest('hex').slice(0, 8);
  const head = plain.slice(0, MAX_NAME - hash.length - 1).replace(/-+$/, '');
  return `${head}-${hash}`;
}

/** The label value identifying an agent's Pods: the agentId when it is a valid label value. */
export function agentLabelValue(agentId: string): string {
  return isLabelValue(agentId) && agentId !== '' ? agentId : podNameFor(agentId);
}

/** Label selector for listing/watching an agent's Pods. */
export function agentLabelSelector(agentId: string): string {
  return `${LABEL_AGENT_ID}=${agentLabelValue(agentId)}`;
}

/** Kubernetes CPU quantity: whole cores as `"2"`, otherwise millicores as `"500m"`. */
export function cpuQuantity(cores: number): string {
  const milli = Math.round(cores * 1000);
  return milli % 1000 === 0 ? String(milli / 1000) : `${milli}m`;
}

function problemsOf(input: AgentPodInput, options: PodManifestOptions): string[] {
  const problems: string[] = [];
  const { agentId, namespace, image, cpu, memoryMb, gpuCount, gpuType } = input;
  if (typeof agentId !== 'string' || agentId === '' || agentId.length > 253) problems.push('agentId must be a string of 1 to 253 characters');
  if (!isDnsLabel(namespace)) problems.push(`namespace ${JSON.stringify(namespace)} is not a DNS-1123 label`);
  if (input.instance !== undefined && (!isLabelValue(input.instance) || input.instance === '')) problems.push(`instance ${JSON.stringify(input.instance)} is not a valid label value`);
  if (typeof image !== 'string' || image === '' || /\s/.test(image)) problems.push('image must be a non-empty reference without whitespace');
  if (typeof cpu !== 'number' || !Number.isFinite(cpu) || Math.round(cpu * 1000) < 1) problems.push('cpu must be a number of cores ≥ 0.001');
  if (!isCount(memoryMb) || memoryMb === 0) problems.push('memoryMb must be a positive integer');
  if (!isCount(gpuCount)) problems.push('gpuCount must be a non-negative integer');
  if (gpuType !== undefined && gpuType !== null) {
    if (!isLabelValue(gpuType) || gpuType === '') problems.push(`gpuType ${JSON.stringify(gpuType)} is not a valid node label value`);
    else if (gpuCount === 0) problems.push('gpuType is set but gpuCount is 0');
  }
  for (const [field, list] of [
    ['command', input.command],
    ['args', input.args],
  ] as const) {
    if (list !== undefined && (!Array.isArray(list) || !list.every((item) => typeof item === 'string'))) problems.push(`${field} must be an array of strings`);
  }
  if (input.generation !== undefined && !isCount(input.generation)) problems.push('generation must be a non-negative integer');
  if (input.attempt !== undefined && !isCount(input.attempt)) problems.push('attempt must be a non-negative integer');
  if (input.stopGraceMs !== undefined && !(typeof input.stopGraceMs === 'number' && Number.isFinite(input.stopGraceMs) && input.stopGraceMs >= 0)) {
    problems.push('stopGraceMs must be a non-negative number');
  }

  const seen = new Set<string>(RESERVED_ENV);
  if (input.secretEnv !== undefined && !Array.isArray(input.secretEnv)) problems.push('secretEnv must be an array');
  const secretEnv: readonly SecretEnvRef[] = Array.isArray(input.secretEnv) ? input.secretEnv : [];
  for (const [i, ref] of secretEnv.entries()) {
    const where = `secretEnv[${i}]`;
    if (typeof ref !== 'object' || ref === null) {
      problems.push(`${where} must be {name, secretName, key}`);
      continue;
    }
    if (!ENV_NAME.test(ref.name)) problems.push(`${where}.name ${JSON.stringify(ref.name)} is not a valid environment variable name`);
    else if ((RESERVED_ENV as readonly string[]).includes(ref.name)) problems.push(`${where}.name ${ref.name} is reserved`);
    else if (seen.has(ref.name)) problems.push(`${where}.name ${ref.name} is duplicated`);
    seen.add(ref.name);
    if (!isDnsSubdomain(ref.secretName)) problems.push(`${where}.secretName ${JSON.stringify(ref.secretName)} is not a valid Secret name`);
    if (typeof ref.key !== 'string' || ref.key.length > 253 || !SECRET_KEY.test(ref.key)) problems.push(`${where}.key ${JSON.stringify(ref.key)} is not a valid Secret key`);
  }
  for (const [field, names] of [
    ['envFromSecrets', input.envFromSecrets],
    ['envFromConfigMaps', input.envFromConfigMaps],
    ['imagePullSecrets', input.imagePullSecrets],
  ] as const) {
    if (names !== undefined && !Array.isArray(names)) problems.push(`${field} must be an array of names`);
    const list: readonly string[] = Array.isArray(names) ? names : [];
    for (const name of list) if (!isDnsSubdomain(name)) problems.push(`${field} entry ${JSON.stringify(name)} is not a valid object name`);
  }
  if (input.serviceAccountName !== undefined && !isDnsSubdomain(input.serviceAccountName)) {
    problems.push(`serviceAccountName ${JSON.stringify(input.serviceAccountName)} is not a valid object name`);
  }

  if (options.gpuProductLabel !== undefined && !LABEL_KEY.test(options.gpuProductLabel)) problems.push('options.gpuProductLabel is not a valid label key');
  for (const [key, value] of Object.entries(options.gpuNodeSelector ?? {})) {
    if (!LABEL_KEY.test(key) || !isLabelValue(value)) problems.push(`options.gpuNodeSelector ${key}=${value} is not a valid label`);
  }
  if (options.runAsUser !== undefined && !(isCount(options.runAsUser) && options.runAsUser > 0)) problems.push('options.runAsUser must be a positive integer (non-root)');
  if (options.tmpSizeMb !== undefined && !(isCount(options.tmpSizeMb) && options.tmpSizeMb > 0)) problems.push('options.tmpSizeMb must be a positive integer');
  return problems;
}

/**
 * Build the Pod of one start of an agent. Throws a permanent `POD_SPEC_INVALID` AppError listing
 * every problem when the input cannot make a valid Pod (retrying would fail the same way).
 */
export function buildAgentPod(input: AgentPodInput, options: PodManifestOptions = {}): PodManifest {
  if (typeof input !== 'object' || input === null) throw permanentError('POD_SPEC_INVALID', 'cannot build a Pod: the agent spec is not an object');
  const problems = problemsOf(input, options ?? {});
  if (problems.length > 0) {
    throw permanentError('POD_SPEC_INVALID', `cannot build the Pod of agent ${String(input.agentId)}: ${problems.join('; ')}`, undefined, {
      agentId: input.agentId,
      problems,
    });
  }

  const uid = options.runAsUser ?? 65_532;
  const gpu = input.gpuCount > 0;
  const resources: Record<string, string> = { cpu: cpuQuantity(input.cpu), memory: `${input.memoryMb}Mi` };
  if (gpu) resources[GPU_RESOURCE] = String(input.gpuCount);

  const labels: Record<string, string> = {
    'app.kubernetes.io/name': 'agent',
    [LABEL_MANAGED_BY]: 'agent-manager',
    [LABEL_AGENT_ID]: agentLabelValue(input.agentId),
  };
  if (input.instance !== undefined) labels[LABEL_INSTANCE] = input.instance;
  const annotations: Record<string, string> = { [LABEL_AGENT_ID]: input.agentId };
  if (input.division !== undefined) {
    annotations[LABEL_DIVISION] = input.division;
    if (isLabelValue(input.division) && input.division !== '') labels[LABEL_DIVISION] = input.division;
  }
  if (input.generation !== undefined) labels[LABEL_GENERATION] = String(input.generation);
  if (input.attempt !== undefined) labels[LABEL_ATTEMPT] = String(input.attempt);

  const env: EnvVar[] = [{ name: 'AGENT_ID', value: input.agentId }];
  if (input.generation !== undefined) env.push({ name: 'AGENT_GENERATION', value: String(input.generation) });
  if (input.attempt !== undefined) env.push({ name: 'AGENT_ATTEMPT', value: String(input.attempt) });
  for (const ref of input.secretEnv ?? []) {
    env.push({
      name: ref.name,
      valueFrom: { secretKeyRef: { name: ref.secretName, key: ref.key, ...(ref.optional === true ? { optional: true } : {}) } },
    });
  }
  const envFrom: EnvFromSource[] = [
    ...(input.envFromConfigMaps ?? []).map((name) => ({ configMapRef: { name } })),
    ...(input.envFromSecrets ?? []).map((name) => ({ secretRef: { name } })),
  ];

  const container: Container = {
    name: 'agent',
    image: input.image,
    imagePullPolicy: 'IfNotPresent',
    ...(input.command !== undefined ? { command: [...input.command] } : {}),
    ...(input.args !== undefined ? { args: [...input.args] } : {}),
    env,
    ...(envFrom.length > 0 ? { envFrom } : {}),
    resources: { requests: { ...resources }, limits: { ...resources } },
    securityContext: {
      allowPrivilegeEscalation: false,
      privileged: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ['ALL'] },
    },
    volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
  };

  const nodeSelector: Record<string, string> = { 'kubernetes.io/os': 'linux' };
  if (gpu) {
    Object.assign(nodeSelector, options.gpuNodeSelector ?? {});
    if (input.gpuType !== undefined && input.gpuType !== null) nodeSelector[options.gpuProductLabel ?? 'nvidia.com/gpu.product'] = input.gpuType;
  }

  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: podNameFor(input.agentId), namespace: input.namespace, labels, annotations },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      ...(input.serviceAccountName !== undefined ? { serviceAccountName: input.serviceAccountName } : {}),
      ...(input.imagePullSecrets !== undefined && input.imagePullSecrets.length > 0
        ? { imagePullSecrets: input.imagePullSecrets.map((name) => ({ name })) }
        : {}),
      terminationGracePeriodSeconds: Math.ceil((input.stopGraceMs ?? 30_000) / 1000),
      nodeSelector,
      ...(gpu ? { tolerations: [{ key: GPU_RESOURCE, operator: 'Exists' as const, effect: 'NoSchedule' as const }] } : {}),
      securityContext: { runAsNonRoot: true, runAsUser: uid, runAsGroup: uid, fsGroup: uid, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [container],
      volumes: [{ name: 'tmp', emptyDir: { sizeLimit: `${options.tmpSizeMb ?? 1024}Mi` } }],
    },
  };
}
