/**
 * Who may do what on the contract topics: the Kafka ACLs of least privilege, following the data flow
 * (ARCHITECTURE.md). `aclPlan` is a pure function; `applyAcls` creates the plan on a cluster (what
 * `agent-manager topics create` and the fleet bootstrap do after creating the topics).
 *
 *   kernel       Write agent-requests · Read agent-status, consumer groups `<prefix>kernel*`
 *   ingest       Read agent-requests (group `<prefix>agent-manager-ingest`) · Write agent-requests.dlq
 *                · Write agent-commands, agent-status, audit-events (the outbox)
 *   provisioner  Read agent-commands (group `<prefix>agent-manager-provisioner`) · Write agent-commands.dlq
 *                · Write agent-commands, agent-status, audit-events (the outbox)
 *   heartbeat    Read agent-heartbeats, agent-status (group `<prefix>agent-manager-heartbeat`)
 *                · Write agent-heartbeats.dlq, agent-status.dlq · Write agent-commands, audit-events
 *                (it has no database: its mass-failure audit events are produced directly)
 *   archiver     Read audit-events (group `<prefix>agent-manager-archiver`) · Write audit-events.dlq
 *   agent        Write agent-heartbeats
 *
 * The outbox relay runs in every service that has the database and publishes every unpublished row,
 * whichever service wrote it: so ingest and the provisioner may both write every outbox topic.
 * Write on a topic also allows the idempotent producer's InitProducerId (KIP-679), so no principal
 * needs a cluster right. Topic names are LITERAL (prefix included): a PREFIXED pattern on
 * `agent-requests` would also match `agent-requests.dlq`. Everything else (creating topics and ACLs,
 * reading DLQs, replaying them) is the operator's, a super user.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { AclOperationTypes, AclPermissionTypes, AclResourceTypes, ResourcePatternTypes, type AclEntry, type KafkaAdmin as Admin } from '../kafka/kafkajs.ts';
import { errorMessage, permanentError, retryableError } from '../errors.ts';
import { dlqTopic, type TopicName } from './schemas.ts';

export const KAFKA_ROLES = ['kernel', 'ingest', 'provisioner', 'heartbeat', 'archiver', 'agent'] as const;
export type KafkaRole = (typeof KAFKA_ROLES)[number];

/** The Kafka principal of each role: `User:<role>` unless configured (a certificate's CN with mTLS). */
export type RolePrincipals = Readonly<Record<KafkaRole, string>>;

export const DEFAULT_PRINCIPALS: RolePrincipals = Object.freeze(Object.fromEntries(KAFKA_ROLES.map((role) => [role, `User:${role}`])) as Record<KafkaRole, string>);

export interface AclPlanOptions {
  /** TOPIC_PREFIX: prepended to every topic and consumer group name. */
  readonly prefix?: string;
  /** Defaults to `DEFAULT_PRINCIPALS`. */
  readonly principals?: Partial<RolePrincipals>;
}

type Right =
  | { readonly kind: 'topic'; readonly topic: TopicName; readonly dlq?: boolean; readonly operation: 'read' | 'write' }
  | { readonly kind: 'group'; readonly group: string; readonly pattern: 'literal' | 'prefixed' };

const read = (topic: TopicName): Right => ({ kind: 'topic', topic, operation: 'read' });
const write = (topic: TopicName): Right => ({ kind: 'topic', topic, operation: 'write' });
const writeDlq = (topic: TopicName): Right => ({ kind: 'topic', topic, dlq: true, operation: 'write' });
const group = (name: string, pattern: 'literal' | 'prefixed' = 'literal'): Right => ({ kind: 'group', group: name, pattern });
const OUTBOX: readonly Right[] = [write('agent-commands'), write('agent-status'), write('audit-events')];

/** The rights of each role, by contract topic and consumer group (without prefix). */
export const ROLE_RIGHTS: Readonly<Record<KafkaRole, readonly Right[]>> = {
  kernel: [write('agent-requests'), read('agent-status'), group('kernel', 'prefixed')],
  ingest: [read('agent-requests'), group('agent-manager-ingest'), writeDlq('agent-requests'), ...OUTBOX],
  provisioner: [read('agent-commands'), group('agent-manager-provisioner'), writeDlq('agent-commands'), ...OUTBOX],
  heartbeat: [read('agent-heartbeats'), read('agent-status'), group('agent-manager-heartbeat'), writeDlq('agent-heartbeats'), writeDlq('agent-status'), write('agent-commands'), write('audit-events')],
  archiver: [read('audit-events'), group('agent-manager-archiver'), writeDlq('audit-events')],
  agent: [write('agent-heartbeats')],
};

/**
 * The ACL entries (kafkajs' `AclEntry`, ALLOW from any host) granting each role its rights on the
 * topics and groups of `prefix`. Deterministic: same options, same list, in role order.
 */
export function aclPlan(options: AclPlanOptions = {}): AclEntry[] {
  const prefix = options.prefix ?? '';
  const principals = { ...DEFAULT_PRINCIPALS, ...options.principals };
  return KAFKA_ROLES.flatMap((role) =>
    ROLE_RIGHTS[role].map((right): AclEntry => {
      const common = { principal: principals[role], host: '*', permissionType: AclPermissionTypes.ALLOW };
      if (right.kind === 'group') {
        return {
          ...common,
          resourceType: AclResourceTypes.GROUP,
          resourceName: `${prefix}${right.group}`,
          resourcePatternType: right.pattern === 'prefixed' ? ResourcePatternTypes.PREFIXED : ResourcePatternTypes.LITERAL,
          operation: AclOperationTypes.READ,
        };
      }
      const topic = `${prefix}${right.topic}`;
      return {
        ...common,
        resourceType: AclResourceTypes.TOPIC,
        resourceName: right.dlq ? dlqTopic(topic) : topic,
        resourcePatternType: ResourcePatternTypes.LITERAL,
        operation: right.operation === 'read' ? AclOperationTypes.READ : AclOperationTypes.WRITE,
      };
    }),
  );
}

/**
 * Principals from `KAFKA_ACL_PRINCIPALS` (`kernel=User:kernel-prod,ingest=User:svc-ingest`; a bare
 * name gets `User:`); roles not listed keep `User:<role>`. Throws CONFIG_INVALID naming what is wrong.
 */
export function principalsFromEnv(env: Readonly<Record<string, string | undefined>>): RolePrincipals {
  const raw = env.KAFKA_ACL_PRINCIPALS?.trim();
  const principals: Record<KafkaRole, string> = { ...DEFAULT_PRINCIPALS };
  if (!raw) return principals;
  const problems: string[] = [];
  for (const item of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [role = '', name = ''] = item.split('=', 2).map((s) => s.trim());
    if (!(KAFKA_ROLES as readonly string[]).includes(role)) problems.push(`unknown role "${role}" (expected ${KAFKA_ROLES.join(', ')})`);
    else if (!/^[^\s,=]+$/.test(name)) problems.push(`${role}: expected a principal such as User:${role}, got "${name}"`);
    else principals[role as KafkaRole] = name.includes(':') ? name : `User:${name}`;
  }
  if (problems.length > 0) throw permanentError('CONFIG_INVALID', `invalid configuration:\n  KAFKA_ACL_PRINCIPALS: ${problems.join('; ')}`);
  return principals;
}

export interface AclApplication {
  /** `applied`, or `unsupported` when the cluster has no authorizer (nothing to enforce them). */
  readonly status: 'applied' | 'unsupported';
  readonly entries: number;
}

function errorType(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'type' in error && typeof error.type === 'string' ? error.type : undefined;
}

const aclKey = (e: { resourceType: number; resourceName: string; resourcePatternType: number; principal: string; host: string; operation: number; permissionType: number }) =>
  [e.resourceType, e.resourceName, e.resourcePatternType, e.principal, e.host, e.operation, e.permissionType].join('\u0000');

/**
 * Waits until the broker's authorizer lists every entry. CreateAcls returns once the controller has
 * committed them; the broker applies the metadata a moment later, and a client started in between
 * (a service right after the bootstrap) would be refused. Entries still missing after a while are
 * created again (idempotent): on a loaded broker a CreateAcls was once seen to leave none of them
 * visible for 15 s.
 */
async function untilAuthorizerHas(admin: Admin, entries: readonly AclEntry[], timeoutMs = 60_000, recreateEveryMs = 5_000): Promise<void> {
  const wanted = new Map(entries.map((entry) => [aclKey(entry), entry]));
  const started = Date.now();
  let lastCreate = started;
  for (;;) {
    const { resources } = await admin.describeAcls({
      resourceType: AclResourceTypes.ANY,
      resourcePatternType: ResourcePatternTypes.ANY,
      operation: AclOperationTypes.ANY,
      permissionType: AclPermissionTypes.ANY,
    });
    const present = new Set(resources.flatMap((r) => r.acls.map((a) => aclKey({ ...r, ...a }))));
    const missing = [...wanted].filter(([key]) => !present.has(key)).map(([, entry]) => entry);
    if (missing.length === 0) return;
    const now = Date.now();
    if (now - started > timeoutMs) throw retryableError('ACL_NOT_VISIBLE', `${missing.length} of ${wanted.size} ACLs created but not yet enforced by the broker after ${timeoutMs} ms`);
    if (now - lastCreate >= recreateEveryMs) {
      await admin.createAcls({ acl: missing });
      lastCreate = now;
    }
    await sleep(100);
  }
}

/**
 * Creates the plan's ACLs (idempotent: an existing binding is left as it is) and returns once the
 * broker enforces them. The admin must be connected.
 */
export async function applyAcls(admin: Admin, entries: readonly AclEntry[]): Promise<AclApplication> {
  if (entries.length === 0) return { status: 'applied', entries: 0 };
  try {
    await admin.createAcls({ acl: [...entries] });
    await untilAuthorizerHas(admin, entries);
    return { status: 'applied', entries: entries.length };
  } catch (error) {
    if (errorType(error) === 'SECURITY_DISABLED') return { status: 'unsupported', entries: 0 };
    const message = `creating ${entries.length} ACLs failed: ${errorMessage(error)}`;
    if (errorType(error) === 'CLUSTER_AUTHORIZATION_FAILED') throw permanentError('ACL_CREATE_FORBIDDEN', `${message} (the client's principal may not alter ACLs: use the operator's credentials)`, error);
    throw retryableError('ACL_CREATE_FAILED', message, error);
  }
}

/** Deletes exactly the plan's ACLs (a test's, on its own prefix). */
export async function deleteAcls(admin: Admin, entries: readonly AclEntry[]): Promise<void> {
  if (entries.length === 0) return;
  await admin.deleteAcls({ filters: entries.map((e) => ({ ...e })) });
}
