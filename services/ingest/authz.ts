/**
 * Who may do what: identities (the `requestedBy` of a Kafka request, the CN of an API client's
 * certificate) have roles; a role allows actions in divisions and, optionally, reads. Loaded from
 * a JSON document (`config/identities.json` by default), validated with zod. The decisions are
 * pure functions of the document.
 *
 * An identity may perform action A in division D when ONE of its roles allows both A and D (roles
 * are not mixed: a role allowing INSTANTIATE in `research` and another allowing DESTROY everywhere
 * do not allow INSTANTIATE everywhere). `*` in `actions` or `divisions` means all. `auditRead` is
 * not scoped by division: the audit trail is read whole, by few.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { AGENT_ACTIONS, type AgentAction } from '../../lib/contracts/types.ts';
import { errorMessage, permanentError } from '../../lib/errors.ts';

export const ANY = '*';

const roleSchema = z.strictObject({
  description: z.string().optional(),
  /** Actions this role may request; `*` for every action, [] for none. */
  actions: z.array(z.union([z.enum(AGENT_ACTIONS), z.literal(ANY)])),
  /** Divisions the role's actions and reads apply to; `*` for every division. */
  divisions: z.array(z.string().min(1)).min(1, { error: 'must list at least one division (or "*")' }),
  /** May read agents and requests of those divisions through the API. Default false. */
  read: z.boolean().default(false),
  /** May read the audit index (`GET /v1/audit`), every division's events. Default false. */
  auditRead: z.boolean().default(false),
});

const identitySchema = z.strictObject({
  description: z.string().optional(),
  roles: z.array(z.string().min(1)).min(1, { error: 'must list at least one role' }),
});

export const identitiesConfigSchema = z
  .strictObject({
    description: z.string().optional(),
    roles: z.record(z.string().min(1), roleSchema),
    identities: z.record(z.string().min(1), identitySchema),
  })
  .superRefine((config, ctx) => {
    for (const [name, identity] of Object.entries(config.identities)) {
      for (const [i, role] of identity.roles.entries()) {
        if (!Object.hasOwn(config.roles, role)) ctx.addIssue({ code: 'custom', path: ['identities', name, 'roles', i], message: `unknown role ${JSON.stringify(role)} (defined: ${Object.keys(config.roles).join(', ') || 'none'})` });
      }
    }
  });

export type IdentitiesConfig = z.output<typeof identitiesConfigSchema>;
export type Role = IdentitiesConfig['roles'][string];

/** Validates a parsed document; `origin` (the file) is named in the error. */
export function parseIdentitiesConfig(document: unknown, origin: string): IdentitiesConfig {
  const result = identitiesConfigSchema.safeParse(document);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${issue.path.map(String).join('.') || '(document)'}: ${issue.message}`);
  throw permanentError('IDENTITIES_CONFIG_INVALID', `identities configuration ${origin} is invalid: ${problems.join('; ')}`, result.error, { file: origin });
}

/** Reads and validates the identities file; every failure names the file. */
export function loadIdentitiesConfig(file: string): IdentitiesConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw permanentError('IDENTITIES_CONFIG_INVALID', `cannot read the identities configuration ${file}: ${errorMessage(error)}`, error, { file });
  }
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw permanentError('IDENTITIES_CONFIG_INVALID', `identities configuration ${file} is not valid JSON: ${errorMessage(error)}`, error, { file });
  }
  return parseIdentitiesConfig(document, file);
}

export type AuthzDecision =
  | { readonly allowed: true }
  | { readonly allowed: false; readonly code: 'UNKNOWN_IDENTITY' | 'UNAUTHORIZED'; readonly reason: string };

export function isKnownIdentity(config: IdentitiesConfig, identity: string): boolean {
  return Object.hasOwn(config.identities, identity);
}

function rolesOf(config: IdentitiesConfig, identity: string): Array<[string, Role]> {
  if (!isKnownIdentity(config, identity)) return [];
  return (config.identities[identity]?.roles ?? []).flatMap((name) => {
    const role = config.roles[name];
    return role ? [[name, role] as [string, Role]] : [];
  });
}

const coversDivision = (role: Role, division: string) => role.divisions.includes(ANY) || role.divisions.includes(division);
const coversAction = (role: Role, action: AgentAction) => role.actions.includes(ANY) || role.actions.includes(action);

const unknownIdentity = (identity: string): AuthzDecision => ({
  allowed: false,
  code: 'UNKNOWN_IDENTITY',
  reason: `identity ${JSON.stringify(identity)} is not configured: it has no roles`,
});

/** Whether `identity` may request `action` on agents of every one of `divisions`. */
export function authorizeAction(config: IdentitiesConfig, identity: string, action: AgentAction, divisions: readonly string[]): AuthzDecision {
  if (!isKnownIdentity(config, identity)) return unknownIdentity(identity);
  const roles = rolesOf(config, identity);
  for (const division of new Set(divisions)) {
    if (!roles.some(([, role]) => coversAction(role, action) && coversDivision(role, division))) {
      return {
        allowed: false,
        code: 'UNAUTHORIZED',
        reason: `identity ${JSON.stringify(identity)} may not ${action} agents of division ${JSON.stringify(division)} (roles: ${roles.map(([name]) => name).join(', ')})`,
      };
    }
  }
  return { allowed: true };
}

/** The divisions `identity` may read: `*` for all, a list, or [] when it may read nothing. */
export function readableDivisions(config: IdentitiesConfig, identity: string): typeof ANY | string[] {
  const readers = rolesOf(config, identity).filter(([, role]) => role.read);
  if (readers.some(([, role]) => role.divisions.includes(ANY))) return ANY;
  return [...new Set(readers.flatMap(([, role]) => role.divisions))].sort();
}

export function mayRead(config: IdentitiesConfig, identity: string, division: string): boolean {
  const divisions = readableDivisions(config, identity);
  return divisions === ANY || divisions.includes(division);
}

/** Whether `identity` may read the audit index (one of its roles has `auditRead`). */
export function mayReadAudit(config: IdentitiesConfig, identity: string): boolean {
  return rolesOf(config, identity).some(([, role]) => role.auditRead);
}
