/**
 * SentinelNet policy decisions for provisioning: the types, the in-process evaluator of the local
 * policy document (the embedded default when no SentinelNet URL is configured), the input sent to
 * a remote policy engine (OPA Data API) and the parsing of its answer. Pure: no I/O here.
 *
 * The rules live twice and must stay the same: `evaluateLocalPolicy` below and
 * `policies/sentinelnet.rego` (which reads `policies/local-policy.json` mounted at
 * `data.agentmanager.config`). Both fail closed: anything malformed or missing is a deny with a
 * reason, and reasons are sorted so both produce identical decisions.
 */
import { z } from 'zod';
import { permanentError } from '../../lib/errors.ts';

export interface AgentResourceSpec {
  /** Image reference, e.g. `ghcr.io/acme/agent:1.2` or `registry.internal:5000/agents/x@sha256:…`. */
  readonly image: string;
  readonly gpuCount: number;
  /** GPU product, e.g. `NVIDIA-A100-SXM4-80GB`; not used by the local rules. */
  readonly gpuType?: string | null;
  /** CPU cores (fractions allowed). */
  readonly cpu: number;
  readonly memoryMb: number;
}

export interface PolicyInput {
  readonly agentId: string;
  /** The lifecycle command being authorized (INSTANTIATE, START, …). */
  readonly action: string;
  readonly spec: AgentResourceSpec;
  readonly division: string;
  readonly region: string;
  /** The service identity that asked (from the mTLS client certificate or the request). */
  readonly requestedBy: string;
}

/** What the division already holds, counted by the caller (agents not DESTROYED/REJECTED/FAILED). */
export interface DivisionUsage {
  readonly gpus: number;
}

export interface PolicyDecision {
  readonly allow: boolean;
  readonly reasons: readonly string[];
  readonly source: 'local' | 'remote';
  /**
   * The engine could not be asked (no answer in time, connection refused, HTTP 5xx): still a deny,
   * but an outage's, not a verdict on the agent, so the caller asks again later instead of rejecting.
   */
  readonly unavailable?: true;
}

const REGISTRY_ENTRY = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(\/[a-z0-9._-]+)*$/;

/** The local policy document (`policies/local-policy.json`), also the data of the Rego policy. */
export const localPolicySchema = z.strictObject({
  /** Free text for humans; ignored by the rules. */
  description: z.string().optional(),
  /**
   * Registries (`ghcr.io`, `registry.internal:5000`) or registry paths (`ghcr.io/acme`) images may
   * come from; a path matches whole segments only. Images without a registry are `docker.io`
   * (`python:3` is `docker.io/library/python`). Empty: every image is denied.
   */
  allowedRegistries: z.array(
    z.string().regex(REGISTRY_ENTRY, 'a lowercase registry host[:port] with an optional /path, without scheme or trailing slash'),
  ),
  /** GPUs a division may hold at once, summed over its agents. */
  gpuQuotaByDivision: z.record(z.string().min(1), z.number().int().nonnegative()),
  /** Quota of a division not listed above. */
  defaultGpuQuota: z.number().int().nonnegative(),
  /** Per agent. */
  maxCpu: z.number().positive(),
  maxMemoryMb: z.number().int().positive(),
});

export type LocalPolicy = z.infer<typeof localPolicySchema>;

/** Validate a parsed policy document; a bad document is a permanent configuration error. */
export function parseLocalPolicy(document: unknown, origin = 'local policy'): LocalPolicy {
  const result = localPolicySchema.safeParse(document);
  if (!result.success) {
    throw permanentError('POLICY_CONFIG_INVALID', `${origin} is invalid:\n${z.prettifyError(result.error)}`, result.error, { origin });
  }
  return result.data;
}

// -------------------------------------------------------------------------------------------------
// Image references (the same parsing as image_ref in sentinelnet.rego)

export interface ImageReference {
  /** Lowercased host[:port]; `docker.io` when the reference names none. */
  readonly registry: string;
  /** Path without tag or digest; `library/<name>` for single-name Docker Hub images. */
  readonly repository: string;
}

/** Printable ASCII except space and `@`, then an optional `@digest`. */
const IMAGE_SHAPE = /^[\x21-\x3f\x41-\x7e]+(@[\x21-\x3f\x41-\x7e]+)?$/;
/** Path segments without `:` or `/`, the last one with an optional `:tag`. */
const REPOSITORY_SHAPE = /^[^/:]+(\/[^/:]+)*(:[^/:]+)?$/;

function isHostLike(segment: string): boolean {
  return segment.includes('.') || segment.includes(':') || segment === 'localhost';
}

/** Split an image reference into registry and repository; `undefined` when it is malformed. */
export function parseImageReference(image: unknown): ImageReference | undefined {
  if (typeof image !== 'string' || !IMAGE_SHAPE.test(image)) return undefined;
  const name = image.split('@')[0] ?? '';
  const parts = name.split('/');
  const first = parts[0] ?? '';
  const explicit = parts.length > 1 && isHostLike(first);
  const registry = explicit ? first.toLowerCase() : 'docker.io';
  const rest = explicit ? parts.slice(1).join('/') : name;
  if (!REPOSITORY_SHAPE.test(rest)) return undefined;
  const path = rest.split(':')[0] ?? '';
  const repository = registry === 'docker.io' && !path.includes('/') ? `library/${path}` : path;
  return { registry, repository };
}

/** Whether `registry/repository` is an allowed entry or lies under one (whole segments only). */
export function isRegistryAllowed(ref: ImageReference, allowedRegistries: readonly string[]): boolean {
  const full = `${ref.registry}/${ref.repository}/`;
  return allowedRegistries.some((entry) => full.startsWith(`${entry.toLowerCase().replace(/\/+$/, '')}/`));
}

// -------------------------------------------------------------------------------------------------
// The rules

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

function isPositive(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value > 0;
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

function record(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
}

/** Every reason to deny, unsorted; empty when allowed. Inputs are checked at run time (fail closed). */
function denials(input: PolicyInput, usage: DivisionUsage, policy: LocalPolicy): string[] {
  const reasons: string[] = [];
  const spec = record(record(input).spec);
  const { image, gpuCount, cpu, memoryMb } = spec;
  const division = record(input).division;
  const gpusInUse = record(usage).gpus;

  const ref = parseImageReference(image);
  if (ref === undefined) reasons.push('spec.image must be a non-empty image reference');
  else if (!isRegistryAllowed(ref, policy.allowedRegistries)) reasons.push(`image ${String(image)} is not from an allowed registry`);

  if (!isCount(gpuCount)) reasons.push('spec.gpuCount must be a non-negative integer');
  if (!isPositive(cpu)) reasons.push('spec.cpu must be a positive number');
  else if (cpu > policy.maxCpu) reasons.push(`cpu ${cpu} exceeds the maximum of ${policy.maxCpu}`);
  if (!isPositive(memoryMb) || !Number.isInteger(memoryMb)) reasons.push('spec.memoryMb must be a positive integer');
  else if (memoryMb > policy.maxMemoryMb) reasons.push(`memoryMb ${memoryMb} exceeds the maximum of ${policy.maxMemoryMb}`);
  if (!isNonEmptyString(division)) reasons.push('division must be a non-empty string');
  if (!isCount(gpusInUse)) reasons.push('usage.gpus must be a non-negative integer');

  if (isCount(gpuCount) && gpuCount > 0 && isCount(gpusInUse) && isNonEmptyString(division)) {
    const quota = Object.hasOwn(policy.gpuQuotaByDivision, division) ? (policy.gpuQuotaByDivision[division] ?? 0) : policy.defaultGpuQuota;
    if (gpusInUse + gpuCount > quota) {
      reasons.push(`division ${division} GPU quota exceeded: ${gpusInUse} in use + ${gpuCount} requested > quota ${quota}`);
    }
  }
  return reasons;
}

/**
 * Evaluate the local policy in-process. `usage` is what the division holds before this request.
 * Never throws: a malformed input is a deny with reasons.
 */
export function evaluateLocalPolicy(input: PolicyInput, usage: DivisionUsage, policy: LocalPolicy): PolicyDecision {
  const reasons = denials(input, usage, policy).sort();
  return { allow: reasons.length === 0, reasons, source: 'local' };
}

/** A deny for when no decision could be had (engine unreachable, timeout, bad answer). */
export function failClosed(reason: string, source: PolicyDecision['source'] = 'remote', options: { unavailable?: boolean } = {}): PolicyDecision {
  return { allow: false, reasons: [`policy decision unavailable, failing closed: ${reason}`], source, ...(options.unavailable ? { unavailable: true as const } : {}) };
}

// -------------------------------------------------------------------------------------------------
// Remote engine (OPA Data API): what to send and how to read the answer

/** The `input` document of `POST /v1/data/agentmanager/provisioning` (see sentinelnet.rego). */
export interface PolicyEngineInput {
  readonly agent: { readonly id: string; readonly action: string; readonly requestedBy: string };
  readonly spec: AgentResourceSpec;
  readonly division: string;
  readonly region: string;
  readonly usage: DivisionUsage;
}

export function toPolicyEngineInput(input: PolicyInput, usage: DivisionUsage): PolicyEngineInput {
  return {
    agent: { id: input.agentId, action: input.action, requestedBy: input.requestedBy },
    spec: input.spec,
    division: input.division,
    region: input.region,
    usage: { gpus: usage.gpus },
  };
}

const remoteAnswerSchema = z.object({
  result: z.object({
    allow: z.boolean(),
    reasons: z.array(z.string()).default([]),
  }),
});

/**
 * Read the engine's JSON answer `{"result": {"allow": bool, "reasons": [...]}}`. Fails closed: no
 * `result` (policy not loaded, wrong path) or any other shape is a deny; only `allow: true` allows.
 */
export function parseRemoteDecision(body: unknown): PolicyDecision {
  if (typeof body === 'object' && body !== null && !('result' in body)) {
    return failClosed('the policy engine returned no result (is the policy loaded at agentmanager/provisioning?)');
  }
  const parsed = remoteAnswerSchema.safeParse(body);
  if (!parsed.success) return failClosed('the policy engine returned a malformed decision');
  const { allow, reasons } = parsed.data.result;
  if (!allow && reasons.length === 0) return { allow: false, reasons: ['denied by policy (no reason given)'], source: 'remote' };
  return { allow, reasons: [...reasons].sort(), source: 'remote' };
}
