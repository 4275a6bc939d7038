import { errorCode } from '../../../../lib/errors.ts';
import { topicPlan, topicSettings, topicSettingsFromEnv, TOPIC_ENV_VARIABLES } from '../../../../lib/contracts/topics.ts';

const DAY_MS = 24 * 60 * 60 * 1000;

function configError(env: Record<string, string | undefined>): Error & { code?: string } {
  try {
    topicSettingsFromEnv(env);
  } catch (error) {
    expect(errorCode(error)).toBe('CONFIG_INVALID');
    return error as Error;
  }
  throw new Error('expected topicSettingsFromEnv to throw');
}

describe('topicSettingsFromEnv', () => {
  it('has local defaults: 12 partitions, rf 1, min.insync.replicas 1, 7 days, audit and DLQs 30 days', () => {
    expect(topicSettingsFromEnv({})).toEqual({
      partitions: 12,
      replicationFactor: 1,
      minInsyncReplicas: 1,
      retentionMs: 7 * DAY_MS,
      auditRetentionMs: 30 * DAY_MS,
      dlqRetentionMs: 30 * DAY_MS,
    });
    expect(topicSettingsFromEnv({ TOPIC_PARTITIONS: '', AUDIT_RETENTION_DAYS: '  ' })).toEqual(topicSettingsFromEnv({}));
  });

  it('reads every variable', () => {
    expect(
      topicSettingsFromEnv({
        TOPIC_PARTITIONS: '24',
        TOPIC_REPLICATION_FACTOR: '3',
        TOPIC_MIN_INSYNC_REPLICAS: '2',
        TOPIC_RETENTION_DAYS: '0.5',
        AUDIT_RETENTION_DAYS: '14',
        DLQ_RETENTION_DAYS: '60',
      }),
    ).toEqual({ partitions: 24, replicationFactor: 3, minInsyncReplicas: 2, retentionMs: DAY_MS / 2, auditRetentionMs: 14 * DAY_MS, dlqRetentionMs: 60 * DAY_MS });
    expect(TOPIC_ENV_VARIABLES).toEqual([
      'TOPIC_PARTITIONS',
      'TOPIC_REPLICATION_FACTOR',
      'TOPIC_MIN_INSYNC_REPLICAS',
      'TOPIC_RETENTION_DAYS',
      'AUDIT_RETENTION_DAYS',
      'DLQ_RETENTION_DAYS',
    ]);
  });

  it('names the variable, its value and what is expected', () => {
    expect(configError({ TOPIC_PARTITIONS: 'twelve' }).message).toContain("TOPIC_PARTITIONS must be a positive whole number (e.g. 12), got 'twelve'");
    expect(configError({ TOPIC_REPLICATION_FACTOR: '1.5' }).message).toContain("TOPIC_REPLICATION_FACTOR must be a positive whole number (e.g. 3), got '1.5'");
    expect(configError({ TOPIC_PARTITIONS: '0' }).message).toContain("TOPIC_PARTITIONS is '0' but must be at least 1");
    expect(configError({ AUDIT_RETENTION_DAYS: '-2' }).message).toContain("AUDIT_RETENTION_DAYS must be a positive number of days (e.g. 30), got '-2'");
  });

  it('keeps audit-events long enough for the archiver to fall behind by days', () => {
    expect(configError({ AUDIT_RETENTION_DAYS: '1' }).message).toContain("AUDIT_RETENTION_DAYS is '1' but must be at least 3 days");
  });

  it('refuses min.insync.replicas above the replication factor', () => {
    const message = configError({ TOPIC_REPLICATION_FACTOR: '2', TOPIC_MIN_INSYNC_REPLICAS: '3' }).message;
    expect(message).toContain("TOPIC_MIN_INSYNC_REPLICAS is '3' but must be at most the replication factor (TOPIC_REPLICATION_FACTOR is 2)");
  });

  it('reports every bad variable at once', () => {
    const message = configError({ TOPIC_PARTITIONS: 'x', DLQ_RETENTION_DAYS: 'y' }).message;
    expect(message).toContain('TOPIC_PARTITIONS');
    expect(message).toContain('DLQ_RETENTION_DAYS');
  });
});

describe('topicSettings', () => {
  it('fills defaults and validates settings given in code', () => {
    expect(topicSettings({ partitions: 3 }).partitions).toBe(3);
    let code = 'no error';
    try {
      topicSettings({ partitions: 0 });
    } catch (error) {
      code = errorCode(error);
    }
    expect(code).toBe('CONFIG_INVALID');
  });
});

describe('topicPlan', () => {
  const settings = topicSettingsFromEnv({ TOPIC_PARTITIONS: '6', TOPIC_REPLICATION_FACTOR: '3', TOPIC_MIN_INSYNC_REPLICAS: '2' });

  it('plans every topic and its .dlq, prefixed, with configs from the settings', () => {
    const plan = topicPlan(settings, { prefix: 't-' });
    expect(plan.map((p) => p.topic)).toEqual([
      't-agent-requests',
      't-agent-requests.dlq',
      't-agent-commands',
      't-agent-commands.dlq',
      't-agent-status',
      't-agent-status.dlq',
      't-agent-heartbeats',
      't-agent-heartbeats.dlq',
      't-audit-events',
      't-audit-events.dlq',
    ]);
    for (const p of plan) {
      expect(p.numPartitions).toBe(6);
      expect(p.replicationFactor).toBe(3);
      expect(p.configEntries).toEqual(
        expect.arrayContaining([
          { name: 'min.insync.replicas', value: '2' },
          { name: 'cleanup.policy', value: 'delete' },
        ]),
      );
    }
  });

  it('keeps audit-events and DLQs 30 days, the other topics 7 days', () => {
    const retention = Object.fromEntries(topicPlan(settings).map((p) => [p.topic, p.configEntries.find((e) => e.name === 'retention.ms')?.value]));
    expect(retention['agent-requests']).toBe(String(7 * DAY_MS));
    expect(retention['agent-heartbeats']).toBe(String(7 * DAY_MS));
    expect(retention['audit-events']).toBe(String(30 * DAY_MS));
    expect(retention['agent-requests.dlq']).toBe(String(30 * DAY_MS));
    expect(retention['audit-events.dlq']).toBe(String(30 * DAY_MS));
  });

  it('stamps audit-events records with the broker\'s append time (the archiver\'s days), and no other topic', () => {
    const types = Object.fromEntries(topicPlan(settings).map((p) => [p.topic, p.configEntries.find((e) => e.name === 'message.timestamp.type')?.value]));
    expect(types['audit-events']).toBe('LogAppendTime');
    expect(types['audit-events.dlq']).toBeUndefined();
    expect(types['agent-requests']).toBeUndefined();
  });

  it('can plan a subset of the topics', () => {
    expect(topicPlan(settings, { topics: ['audit-events'] }).map((p) => p.topic)).toEqual(['audit-events', 'audit-events.dlq']);
  });
});
