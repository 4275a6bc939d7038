import kafkajs from 'kafkajs';
import { aclPlan, DEFAULT_PRINCIPALS, KAFKA_ROLES, principalsFromEnv } from '../../../../lib/contracts/acls.ts';

const { AclOperationTypes, AclPermissionTypes, AclResourceTypes, ResourcePatternTypes } = kafkajs;

/** `Write t`, `Read group g`, `Read group g*` for one principal. */
function rightsOf(principal: string, prefix = ''): string[] {
  return aclPlan({ prefix })
    .filter((e) => e.principal === principal)
    .map((e) => {
      const op = e.operation === AclOperationTypes.READ ? 'Read' : e.operation === AclOperationTypes.WRITE ? 'Write' : `op${e.operation}`;
      const group = e.resourceType === AclResourceTypes.GROUP ? 'group ' : '';
      const star = e.resourcePatternType === ResourcePatternTypes.PREFIXED ? '*' : '';
      return `${op} ${group}${e.resourceName}${star}`;
    })
    .sort();
}

describe('aclPlan', () => {
  it('only the Kernel may write agent-requests', () => {
    const writers = aclPlan().filter((e) => e.resourceName === 'agent-requests' && e.operation === AclOperationTypes.WRITE);
    expect(writers.map((e) => e.principal)).toEqual(['User:kernel']);
  });

  it('gives each role exactly its part of the data flow', () => {
    expect(rightsOf('User:kernel')).toEqual(['Read agent-status', 'Read group kernel*', 'Write agent-requests']);
    expect(rightsOf('User:ingest')).toEqual([
      'Read agent-requests',
      'Read group agent-manager-ingest',
      'Write agent-commands',
      'Write agent-requests.dlq',
      'Write agent-status',
      'Write audit-events',
    ]);
    expect(rightsOf('User:provisioner')).toEqual([
      'Read agent-commands',
      'Read group agent-manager-provisioner',
      'Write agent-commands',
      'Write agent-commands.dlq',
      'Write agent-status',
      'Write audit-events',
    ]);
    expect(rightsOf('User:heartbeat')).toEqual([
      'Read agent-heartbeats',
      'Read agent-status',
      'Read group agent-manager-heartbeat',
      'Write agent-commands',
      'Write agent-heartbeats.dlq',
      'Write agent-status.dlq',
      'Write audit-events',
    ]);
    expect(rightsOf('User:archiver')).toEqual(['Read audit-events', 'Read group agent-manager-archiver', 'Write audit-events.dlq']);
    expect(rightsOf('User:agent')).toEqual(['Write agent-heartbeats']);
  });

  it('grants nothing on the cluster or on transactional ids, and only ALLOW from any host', () => {
    const plan = aclPlan();
    expect(new Set(plan.map((e) => e.resourceType))).toEqual(new Set([AclResourceTypes.TOPIC, AclResourceTypes.GROUP]));
    expect(plan.every((e) => e.permissionType === AclPermissionTypes.ALLOW && e.host === '*')).toBe(true);
  });

  it('names topics literally with the prefix (a prefixed pattern on a topic would also match its DLQ)', () => {
    const plan = aclPlan({ prefix: 't1.' });
    const topics = plan.filter((e) => e.resourceType === AclResourceTypes.TOPIC);
    expect(topics.every((e) => e.resourcePatternType === ResourcePatternTypes.LITERAL && e.resourceName.startsWith('t1.'))).toBe(true);
    expect(rightsOf('User:kernel', 't1.')).toEqual(['Read group t1.kernel*', 'Read t1.agent-status', 'Write t1.agent-requests']);
    expect(rightsOf('User:agent', 't1.')).toEqual(['Write t1.agent-heartbeats']);
  });

  it('uses the configured principals', () => {
    const plan = aclPlan({ principals: { kernel: 'User:kernel-prod' } });
    expect(plan.some((e) => e.principal === 'User:kernel')).toBe(false);
    expect(plan.filter((e) => e.principal === 'User:kernel-prod')).toHaveLength(3);
  });

  it('is deterministic', () => {
    expect(aclPlan({ prefix: 'x.' })).toEqual(aclPlan({ prefix: 'x.' }));
  });
});

describe('principalsFromEnv', () => {
  it('defaults every role to User:<role>', () => {
    expect(principalsFromEnv({})).toEqual(DEFAULT_PRINCIPALS);
    expect(Object.keys(DEFAULT_PRINCIPALS)).toEqual([...KAFKA_ROLES]);
  });

  it('reads role=principal pairs, adding User: to a bare name', () => {
    expect(principalsFromEnv({ KAFKA_ACL_PRINCIPALS: 'kernel=User:kernel-prod, ingest=svc-ingest' })).toMatchObject({ kernel: 'User:kernel-prod', ingest: 'User:svc-ingest', agent: 'User:agent' });
  });

  it('names every bad entry', () => {
    expect(() => principalsFromEnv({ KAFKA_ACL_PRINCIPALS: 'kernal=User:k,agent=' })).toThrow(/KAFKA_ACL_PRINCIPALS: unknown role "kernal".*agent: expected a principal/);
  });
});
