/**
 * The rules a request must follow before ingest accepts it. Pure: no I/O.
 *
 * Two levels:
 * - `parseAgentRequestRecord`: the contract of a decoded `agent-requests` record (types, uuids,
 *   timestamps). A record failing it is not a request ingest can answer (its requestId or agentId
 *   cannot even key a status event), so the worker dead-letters it.
 * - `validateRequest`: the semantic rules (per action, bounds on resources, known templates, image
 *   references, labels, environment references). A request failing them is REJECTED with a reason
 *   naming every problem.
 */
import { z } from 'zod';
import { AGENT_ACTIONS, type AgentRequest } from '../../lib/contracts/types.ts';
import { permanentError } from '../../lib/errors.ts';

export const LIMITS = {
  cpuMillicores: { min: 1, max: 64_000 },
  memoryMiB: { min: 64, max: 1_048_576 },
  gpuCount: { min: 0, max: 16 },
  idempotencyKeyLength: 256,
  requestedByLength: 256,
  commandArgs: 256,
  commandArgLength: 4_096,
  environment: 128,
  labels: 64,
  imageLength: 512,
  referenceLength: 512,
} as const;

/** Stores an environment value may come from; the value itself never travels in a request. */
export const REFERENCE_SCHEMES = ['vault', 'config', 'secret'] as const;

export interface ValidationRules {
  /** Template names a request may instantiate (exact match). */
  readonly knownTemplates: readonly string[];
}

export type ValidationResult = { readonly ok: true } | { readonly ok: false; readonly code: 'VALIDATION_FAILED'; readonly reason: string; readonly problems: readonly string[] };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A DNS-1123 label: what divisions and regions look like (they end up in labels and names). */
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Kubernetes label key: an optional DNS-subdomain prefix and a name of at most 63 characters. */
const LABEL_KEY = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
/** Kubernetes label value: empty, or at most 63 characters. */
const LABEL_VALUE = /^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const REFERENCE = new RegExp(`^(${REFERENCE_SCHEMES.join('|')}):[^\\s]+$`);
/** Whether `text` contains a C0 control character or DEL. */
function hasControl(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}

/**
 * An OCI/Docker image reference (the grammar of distribution/reference): optional registry
 * host[:port], lower-case path components, an optional tag and an optional digest.
 */
const DOMAIN = '(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?';
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const TAG = '[\\w][\\w.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}';
const DOMAIN_ONLY = new RegExp(`^${DOMAIN}$`);
const REPOSITORY = new RegExp(`^${PATH_COMPONENT}(?:/${PATH_COMPONENT})*(?::${TAG})?(?:@${DIGEST})?$`);

/**
 * Whether `value` is an image reference. As Docker reads it, the first segment is a registry only
 * when it looks like a host (has a "." or ":", or is "localhost"); otherwise it is part of the
 * (lower-case) repository path: `UPPER/case` is not a reference.
 */
export function isImageReference(value: string): boolean {
  if (value.length === 0 || value.length > LIMITS.imageLength) return false;
  const slash = value.indexOf('/');
  const first = slash < 0 ? '' : value.slice(0, slash);
  const hostLike = first.includes('.') || first.includes(':') || first === 'localhost';
  if (hostLike && !DOMAIN_ONLY.test(first)) return false;
  const repository = hostLike ? value.slice(slash + 1) : value;
  // The name (registry and path, without tag or digest) is at most 255 characters.
  const name = (value.split('@')[0] ?? '').replace(/:[\w][\w.-]{0,127}$/, '');
  return name.length <= 255 && REPOSITORY.test(repository);
}

const show = (value: unknown) => JSON.stringify(value);

const lowerUuid = () => z.string().regex(UUID, { error: (issue) => `must be a lower-case uuid (8-4-4-4-12), got ${show(issue.input)}` });

// -------------------------------------------------------------------------------------------------
// The contract of a decoded record

const recordResourcesSchema = z.object({ cpuMillicores: z.int(), memoryMiB: z.int(), gpuCount: z.int(), gpuType: z.string().nullable() });
const recordSpecSchema = z.object({
  template: z.string().nullable(),
  image: z.string().nullable(),
  command: z.array(z.string()),
  environment: z.array(z.object({ name: z.string(), ref: z.string() })),
  resources: recordResourcesSchema,
});

/** The shape of an `agent-requests` value as avsc decodes it, uuid formats included. */
export const agentRequestRecordSchema = z.object({
  requestId: lowerUuid(),
  idempotencyKey: z.string(),
  action: z.enum(AGENT_ACTIONS),
  agentId: lowerUuid().nullable(),
  spec: recordSpecSchema.nullable(),
  division: z.string(),
  region: z.string().nullable(),
  labels: z.record(z.string(), z.string()),
  requestedBy: z.string(),
  createdAt: z.date({ error: 'must be a timestamp' }).refine((d) => !Number.isNaN(d.getTime()), { error: 'must be a valid timestamp' }),
});

function describeIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((issue) => (issue.path.length === 0 ? issue.message : `${issue.path.map(String).join('.')}: ${issue.message}`));
}

/**
 * The worker's `validate`: a decoded record that is not a well-formed AgentRequest throws a
 * permanent VALIDATION_FAILED (the runtime dead-letters it with the reason).
 */
export function parseAgentRequestRecord(value: unknown): AgentRequest {
  const result = agentRequestRecordSchema.safeParse(value);
  if (result.success) return result.data;
  throw permanentError('VALIDATION_FAILED', `not a well-formed AgentRequest: ${describeIssues(result.error.issues).join('; ')}`);
}

// -------------------------------------------------------------------------------------------------
// The semantic rules

const bounded = (name: keyof typeof LIMITS & ('cpuMillicores' | 'memoryMiB' | 'gpuCount')) =>
  z
    .int({ error: 'must be a whole number' })
    .min(LIMITS[name].min, { error: (issue) => `must be at least ${LIMITS[name].min} (got ${show(issue.input)})` })
    .max(LIMITS[name].max, { error: (issue) => `must be at most ${LIMITS[name].max} (got ${show(issue.input)})` });

const resourcesSchema = z
  .object({
    cpuMillicores: bounded('cpuMillicores'),
    memoryMiB: bounded('memoryMiB'),
    gpuCount: bounded('gpuCount'),
    gpuType: z.string().nullable(),
  })
  .superRefine((resources, ctx) => {
    if (resources.gpuCount > 0 && (resources.gpuType === null || resources.gpuType.trim() === '')) {
      ctx.addIssue({ code: 'custom', path: ['gpuType'], message: `is required when gpuCount is ${resources.gpuCount}` });
    }
    if (resources.gpuCount === 0 && resources.gpuType !== null) {
      ctx.addIssue({ code: 'custom', path: ['gpuType'], message: `must be null when gpuCount is 0 (got ${show(resources.gpuType)})` });
    }
    if (resources.gpuType !== null && resources.gpuType !== '' && !LABEL_VALUE.test(resources.gpuType)) {
      ctx.addIssue({ code: 'custom', path: ['gpuType'], message: `must be a GPU model name of at most 63 letters, digits, "-", "_" or "." (got ${show(resources.gpuType)})` });
    }
  });

function specSchema(rules: ValidationRules) {
  const known = new Set(rules.knownTemplates);
  const knownList = rules.knownTemplates.length === 0 ? 'none are configured' : `known: ${rules.knownTemplates.join(', ')}`;
  return z
    .object({
      template: z
        .string()
        .refine((t) => known.has(t), { error: (issue) => `unknown template ${show(issue.input)} (${knownList})` })
        .nullable(),
      image: z
        .string()
        .refine(isImageReference, { error: (issue) => `${show(issue.input)} is not a valid image reference ([registry[:port]/]path[:tag][@digest], lower-case path)` })
        .nullable(),
      command: z
        .array(
          z
            .string()
            .max(LIMITS.commandArgLength, { error: `each argument must be at most ${LIMITS.commandArgLength} characters` })
            .refine((arg) => !arg.includes('\u0000'), { error: 'arguments must not contain NUL characters' }),
        )
        .max(LIMITS.commandArgs, { error: `must have at most ${LIMITS.commandArgs} arguments` }),
      environment: z
        .array(
          z.object({
            name: z.string().regex(ENV_NAME, { error: (issue) => `${show(issue.input)} is not a valid environment variable name` }),
            ref: z
              .string()
              .max(LIMITS.referenceLength, { error: `must be at most ${LIMITS.referenceLength} characters` })
              .regex(REFERENCE, { error: `must be a reference to a store (${REFERENCE_SCHEMES.map((s) => `${s}:…`).join(', ')}), never a value` }),
          }),
        )
        .max(LIMITS.environment, { error: `must have at most ${LIMITS.environment} variables` })
        .superRefine((environment, ctx) => {
          const seen = new Set<string>();
          for (const [i, variable] of environment.entries()) {
            if (seen.has(variable.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `${variable.name} is defined twice` });
            seen.add(variable.name);
          }
        }),
      resources: resourcesSchema,
    })
    .superRefine((spec, ctx) => {
      if (spec.template === null && spec.image === null) ctx.addIssue({ code: 'custom', message: 'needs a template or an image (at least one)' });
    });
}

function requestSchema(rules: ValidationRules) {
  return z
    .object({
      requestId: lowerUuid(),
      idempotencyKey: z
        .string()
        .min(1, { error: 'must not be empty' })
        .max(LIMITS.idempotencyKeyLength, { error: (issue) => `must be at most ${LIMITS.idempotencyKeyLength} characters (got ${String((issue.input as string).length)})` })
        .refine((key) => !hasControl(key), { error: 'must not contain control characters' }),
      action: z.enum(AGENT_ACTIONS, { error: (issue) => `must be one of ${AGENT_ACTIONS.join(', ')} (got ${show(issue.input)})` }),
      agentId: lowerUuid().nullable(),
      spec: specSchema(rules).nullable(),
      division: z.string().regex(DNS_LABEL, { error: (issue) => `must be 1-63 lower-case letters, digits or "-", starting and ending with a letter or digit (got ${show(issue.input)})` }),
      region: z
        .string()
        .regex(DNS_LABEL, { error: (issue) => `must be 1-63 lower-case letters, digits or "-", e.g. eu-west-1 (got ${show(issue.input)})` })
        .nullable(),
      labels: z
        .record(z.string(), z.string())
        .superRefine((labels, ctx) => {
          const entries = Object.entries(labels);
          if (entries.length > LIMITS.labels) ctx.addIssue({ code: 'custom', message: `must have at most ${LIMITS.labels} labels (got ${entries.length})` });
          for (const [key, value] of entries) {
            if (key.length > 317 || !LABEL_KEY.test(key)) ctx.addIssue({ code: 'custom', path: [key], message: 'is not a valid label key ([prefix/]name, name at most 63 letters, digits, "-", "_" or ".")' });
            if (!LABEL_VALUE.test(value)) ctx.addIssue({ code: 'custom', path: [key], message: `value ${show(value)} is not a valid label value (at most 63 letters, digits, "-", "_" or ".")` });
          }
        }),
      requestedBy: z
        .string()
        .min(1, { error: 'must not be empty' })
        .max(LIMITS.requestedByLength, { error: `must be at most ${LIMITS.requestedByLength} characters` })
        .refine((who) => !hasControl(who), { error: 'must not contain control characters' }),
      createdAt: z.date().refine((d) => !Number.isNaN(d.getTime()), { error: 'must be a valid timestamp' }),
    })
    .superRefine((request, ctx) => {
      if (request.action === 'INSTANTIATE') {
        if (request.agentId !== null) ctx.addIssue({ code: 'custom', path: ['agentId'], message: 'must be null for INSTANTIATE (ingest assigns it from the idempotency key)' });
        if (request.spec === null) ctx.addIssue({ code: 'custom', path: ['spec'], message: 'is required for INSTANTIATE' });
        if (request.region === null) ctx.addIssue({ code: 'custom', path: ['region'], message: 'is required for INSTANTIATE' });
      } else {
        if (request.agentId === null) ctx.addIssue({ code: 'custom', path: ['agentId'], message: `is required for ${request.action}` });
        if (request.spec !== null) ctx.addIssue({ code: 'custom', path: ['spec'], message: `must be null for ${request.action} (only INSTANTIATE carries a spec)` });
        // A region on another action is allowed and ignored (the agent stays where it is): Kernels
        // often send the agent's region along.
      }
    });
}

const schemas = new WeakMap<ValidationRules, ReturnType<typeof requestSchema>>();

/** Every semantic problem of a request, or ok. Never throws. */
export function validateRequest(request: AgentRequest, rules: ValidationRules): ValidationResult {
  let schema = schemas.get(rules);
  if (!schema) schemas.set(rules, (schema = requestSchema(rules)));
  const result = schema.safeParse(request);
  if (result.success) return { ok: true };
  const problems = describeIssues(result.error.issues);
  return { ok: false, code: 'VALIDATION_FAILED', reason: problems.join('; '), problems };
}

/** Whether the idempotency key itself is usable: a request with an unusable key cannot be remembered under it. */
export function isUsableIdempotencyKey(key: string): boolean {
  return key.length >= 1 && key.length <= LIMITS.idempotencyKeyLength && !hasControl(key);
}
