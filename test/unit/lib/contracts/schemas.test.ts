import { resolve } from 'node:path';
import { errorCode, isAppError } from '../../../../lib/errors.ts';
import {
  avroType,
  checkBackwardCompatible,
  defaultSchemasDir,
  dlqTopic,
  recordKey,
  topicContract,
  TOPICS,
  type AvroRecordSchema,
  type TopicName,
  type TopicRecords,
} from '../../../../lib/contracts/schemas.ts';
import {
  AGENT_ACTIONS,
  AGENT_COMMAND_TYPES,
  AGENT_STATES,
  type AgentCommand,
  type AgentHeartbeat,
  type AgentRequest,
  type AgentSpec,
  type AgentStatus,
  type AuditEvent,
} from '../../../../lib/contracts/types.ts';

const schemasDir = defaultSchemasDir(resolve(__dirname, '../../../..'));

const spec: AgentSpec = {
  template: 'support-agent',
  image: 'registry.example.com/agents/support:1.4.2',
  command: ['node', 'agent.js', '--verbose'],
  environment: [{ name: 'OPENAI_API_KEY', ref: 'vault:kv/agents/support#api-key' }],
  resources: { cpuMillicores: 1500, memoryMiB: 2048, gpuCount: 1, gpuType: 'nvidia-a100-80gb' },
};

const request: AgentRequest = {
  requestId: '0f8fad5b-d9cb-469f-a165-70867728950e',
  idempotencyKey: 'kernel-req-42',
  action: 'INSTANTIATE',
  agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
  spec,
  division: 'customer-care',
  region: 'eu-west-1',
  labels: { team: 'care', tier: 'gold' },
  requestedBy: 'user:alice@example.com',
  createdAt: new Date('2025-01-02T03:04:05.678Z'),
};

const command: AgentCommand = {
  commandId: '3b241101-e2bb-4255-8caf-4136c566a962',
  agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
  command: 'RECOVER',
  requestId: '0f8fad5b-d9cb-469f-a165-70867728950e',
  spec,
  division: 'customer-care',
  region: 'eu-west-1',
  labels: { team: 'care' },
  issuedBy: 'service:heartbeat',
  issuedAt: new Date('2025-01-02T03:04:06.000Z'),
  reason: 'missed 3 heartbeats',
  attempt: 2,
};

const status: AgentStatus = {
  eventId: 'a8098c1a-f86e-41d5-8a9b-7d2b7e4f6c1d',
  agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
  state: 'UNHEALTHY',
  previousState: 'RUNNING',
  reason: 'missed 3 heartbeats',
  requestId: '0f8fad5b-d9cb-469f-a165-70867728950e',
  commandId: '3b241101-e2bb-4255-8caf-4136c566a962',
  version: 9_007_199_254_740_000,
  time: new Date('2025-01-02T03:04:07.000Z'),
  instanceId: 'host-1:4242',
};

const heartbeat: AgentHeartbeat = {
  agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
  instanceId: 'host-1:4242',
  pid: 4242,
  sequence: 12_345_678_901,
  sentAt: new Date('2025-01-02T03:04:08.000Z'),
  metrics: { cpuPercent: 12.5, memoryRssBytes: 5_368_709_120, custom: { queueDepth: 3 } },
  intervalMs: 2_000,
  stopping: false,
};

const audit: AuditEvent = {
  eventId: 'e0b1a0c2-8f4d-4a51-9c8e-2f0c1d2e3f40',
  time: new Date('2025-01-02T03:04:09.000Z'),
  actor: 'user:alice@example.com',
  action: 'agent.state_changed',
  agentId: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
  requestId: '0f8fad5b-d9cb-469f-a165-70867728950e',
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  payload: JSON.stringify({ from: 'RUNNING', to: 'UNHEALTHY' }),
  hash: 'a'.repeat(64),
};

/** A fully populated value of each topic's TypeScript type: the parity samples. */
const samples: { [T in TopicName]: TopicRecords[T] } = {
  'agent-requests': request,
  'agent-commands': command,
  'agent-status': status,
  'agent-heartbeats': heartbeat,
  'audit-events': audit,
};

/** Every record schema (top level and nested) of a parsed schema, by full name. */
function records(schema: unknown, namespace: string, found = new Map<string, AvroRecordSchema>()): Map<string, AvroRecordSchema> {
  if (Array.isArray(schema)) {
    for (const branch of schema) records(branch, namespace, found);
  } else if (typeof schema === 'object' && schema !== null) {
    const s = schema as Record<string, unknown>;
    const ns = typeof s.namespace === 'string' ? s.namespace : namespace;
    if (s.type === 'record') {
      const record = s as unknown as AvroRecordSchema;
      found.set(`${ns}.${record.name}`, record);
      for (const field of record.fields) records(field.type, ns, found);
    } else if (s.type === 'array') records(s.items, ns, found);
    else if (s.type === 'map') records(s.values, ns, found);
  }
  return found;
}

/** The enum symbols of a parsed schema, by enum name. */
function enums(schema: unknown, found = new Map<string, string[]>()): Map<string, string[]> {
  if (Array.isArray(schema)) {
    for (const branch of schema) enums(branch, found);
  } else if (typeof schema === 'object' && schema !== null) {
    const s = schema as Record<string, unknown>;
    if (s.type === 'enum' && typeof s.name === 'string') found.set(s.name, s.symbols as string[]);
    if (s.type === 'record') for (const field of s.fields as { type: unknown }[]) enums(field.type, found);
    if (s.type === 'array') enums(s.items, found);
    if (s.type === 'map') enums(s.values, found);
  }
  return found;
}

function expectIncompatible(previous: object, next: object, fragment: string): void {
  let caught: unknown;
  try {
    checkBackwardCompatible(previous, next, 'agent-status-value');
  } catch (error) {
    caught = error;
  }
  expect(isAppError(caught)).toBe(true);
  expect(errorCode(caught)).toBe('SCHEMA_INCOMPATIBLE');
  expect(isAppError(caught) && caught.retryable).toBe(false);
  expect((caught as Error).message).toContain('agent-status-value');
  expect((caught as Error).message).toContain(fragment);
}

describe('topic contracts (schemas/*.avsc)', () => {
  it('has one schema per topic, each a record in the io.agentmanager.v1 namespace', () => {
    expect(TOPICS).toEqual(['agent-requests', 'agent-commands', 'agent-status', 'agent-heartbeats', 'audit-events']);
    for (const topic of TOPICS) {
      const contract = topicContract(topic, schemasDir);
      expect(contract.subject).toBe(`${topic}-value`);
      expect(contract.schema.type).toBe('record');
      expect(contract.schema.namespace).toBe('io.agentmanager.v1');
      expect(contract.type.name).toBe(`io.agentmanager.v1.${contract.schema.name}`);
    }
    expect(dlqTopic('agent-requests')).toBe('agent-requests.dlq');
  });

  it.each(TOPICS)('%s: every record and every field has a doc', (topic) => {
    for (const [name, record] of records(topicContract(topic, schemasDir).schema, '')) {
      expect({ record: name, doc: typeof record.doc === 'string' && record.doc.length > 0 }).toEqual({ record: name, doc: true });
      for (const field of record.fields) {
        expect({ field: `${name}.${field.name}`, doc: typeof field.doc === 'string' && field.doc.length > 0 }).toEqual({ field: `${name}.${field.name}`, doc: true });
      }
    }
  });

  it.each(TOPICS)('%s: optional fields are unions with null first and default null', (topic) => {
    for (const record of records(topicContract(topic, schemasDir).schema, '').values()) {
      for (const field of record.fields) {
        const type: unknown = field.type;
        if (Array.isArray(type)) {
          const first: unknown = type[0];
          expect({ field: field.name, first, default: field.default }).toEqual({ field: field.name, first: 'null', default: null });
        }
      }
    }
  });

  it('uses the timestamp-millis and uuid logical types', () => {
    const fields = topicContract('agent-status', schemasDir).schema.fields;
    expect(fields.find((f) => f.name === 'time')?.type).toEqual({ type: 'long', logicalType: 'timestamp-millis' });
    expect(fields.find((f) => f.name === 'eventId')?.type).toEqual({ type: 'string', logicalType: 'uuid' });
  });

  it('repeats the AgentSpec record identically in agent-requests and agent-commands', () => {
    const specOf = (topic: TopicName) => records(topicContract(topic, schemasDir).schema, '').get('io.agentmanager.v1.AgentSpec');
    expect(specOf('agent-requests')).toBeDefined();
    expect(specOf('agent-commands')).toEqual(specOf('agent-requests'));
  });

  it('has the enum symbols of the TypeScript constants', () => {
    expect(enums(topicContract('agent-requests', schemasDir).schema).get('AgentAction')).toEqual([...AGENT_ACTIONS]);
    expect(enums(topicContract('agent-commands', schemasDir).schema).get('AgentCommandType')).toEqual([...AGENT_COMMAND_TYPES]);
    expect(enums(topicContract('agent-status', schemasDir).schema).get('AgentState')).toEqual([...AGENT_STATES]);
  });
});

describe('TypeScript types in parity with the schemas', () => {
  it.each(TOPICS)('%s: the sample has exactly the fields of every record, is valid, and round-trips', (topic) => {
    const contract = topicContract(topic, schemasDir);
    const sample = samples[topic];
    const invalid: string[] = [];
    expect(contract.type.isValid(sample, { noUndeclaredFields: true, errorHook: (path) => invalid.push(path.join('.')) })).toBe(true);
    expect(invalid).toEqual([]);
    expect(Object.keys(sample)).toEqual(contract.schema.fields.map((f) => f.name));

    // Nested records too: the sample's object at each record-typed field has that record's fields.
    const nested = records(contract.schema, '');
    const check = (value: unknown, record: AvroRecordSchema) => {
      expect(Object.keys(value as object)).toEqual(record.fields.map((f) => f.name));
    };
    for (const record of nested.values()) {
      if (record.name === 'AgentSpec' && 'spec' in sample) check(sample.spec, record);
      if (record.name === 'ResourceRequest' && 'spec' in sample) check(sample.spec?.resources, record);
      if (record.name === 'EnvironmentReference' && 'spec' in sample) check(sample.spec?.environment[0], record);
      if (record.name === 'HeartbeatMetrics' && 'metrics' in sample) check(sample.metrics, record);
    }

    const decoded: unknown = contract.fromBuffer(contract.toBuffer(sample));
    expect(decoded).toEqual(sample);
  });

  it('decodes timestamp-millis as a Date and uuid as a string', () => {
    const contract = topicContract('agent-status', schemasDir);
    const decoded = contract.fromBuffer(contract.toBuffer(status));
    expect(decoded.time).toBeInstanceOf(Date);
    expect(decoded.time.getTime()).toBe(status.time.getTime());
    expect(typeof decoded.eventId).toBe('string');
    expect(contract.type.isValid({ ...status, time: status.time.getTime() })).toBe(false);
    expect(contract.type.isValid({ ...status, time: new Date(Number.NaN) })).toBe(false);
  });

  it('fills optional fields with their defaults when an older writer did not have them', () => {
    const contract = topicContract('agent-status', schemasDir);
    const older = { ...contract.schema, fields: contract.schema.fields.filter((f) => f.name !== 'commandId' && f.name !== 'reason') };
    const olderType = avroType(older, 'older agent-status');
    const { commandId: _c, reason: _r, ...olderValue } = status;
    const decoded: unknown = contract.type.fromBuffer(olderType.toBuffer(olderValue), contract.type.createResolver(olderType));
    expect(decoded).toEqual({ ...status, commandId: null, reason: null });
  });

  it('refuses values outside the contract', () => {
    const contract = topicContract('agent-requests', schemasDir);
    expect(contract.type.isValid({ ...request, action: 'PAUSE' })).toBe(false);
    expect(contract.type.isValid({ ...request, requestedBy: undefined })).toBe(false);
    expect(() => contract.toBuffer({ ...request, labels: { n: 1 } } as unknown as AgentRequest)).toThrow();
  });

  it('keys records by agentId (idempotency key for INSTANTIATE without one, eventId for audit without agent)', () => {
    expect(recordKey('agent-status', status)).toBe(status.agentId);
    expect(recordKey('agent-requests', { ...request, agentId: null })).toBe(request.idempotencyKey);
    expect(recordKey('audit-events', { ...audit, agentId: null })).toBe(audit.eventId);
    expect(recordKey('agent-heartbeats', heartbeat)).toBe(heartbeat.agentId);
  });
});

describe('checkBackwardCompatible', () => {
  const base = () => topicContract('agent-status', schemasDir).schema;
  const withFields = (fields: AvroRecordSchema['fields']) => ({ ...base(), fields });

  it('accepts the same schema, an added optional field with a default, and an added enum symbol', () => {
    expect(() => checkBackwardCompatible(base(), base(), 'agent-status-value')).not.toThrow();
    expect(() => checkBackwardCompatible(JSON.stringify(base()), JSON.stringify(base()), 'agent-status-value')).not.toThrow();
    const added = withFields([...base().fields, { name: 'note', doc: 'A note.', type: ['null', 'string'], default: null }]);
    expect(() => checkBackwardCompatible(base(), added, 'agent-status-value')).not.toThrow();
    const moreStates = withFields(
      base().fields.map((f) => (f.name === 'state' ? { ...f, type: { ...(f.type as object), symbols: [...AGENT_STATES, 'ARCHIVED'] } } : f)),
    );
    expect(() => checkBackwardCompatible(base(), moreStates, 'agent-status-value')).not.toThrow();
  });

  it('refuses an added required field, naming it', () => {
    expectIncompatible(base(), withFields([...base().fields, { name: 'owner', doc: 'Owner.', type: 'string' }]), 'field owner was added without a default');
  });

  it('refuses a changed type, naming the field and the types', () => {
    const changed = withFields(base().fields.map((f) => (f.name === 'version' ? { ...f, type: 'string' } : f)));
    expectIncompatible(base(), changed, 'field version: cannot read the old long values as string');
  });

  it('refuses making an optional field required', () => {
    const required = withFields(base().fields.map((f) => (f.name === 'reason' ? { name: 'reason', doc: 'Why.', type: 'string' } : f)));
    expectIncompatible(base(), required, 'field reason');
  });

  it('refuses removing an enum symbol', () => {
    const fewer = withFields(
      base().fields.map((f) => (f.name === 'state' ? { ...f, type: { ...(f.type as object), symbols: AGENT_STATES.filter((s) => s !== 'FAILED') } } : f)),
    );
    expectIncompatible(base(), fewer, 'enum symbols FAILED were removed');
  });

  it('reports an invalid schema as SCHEMA_INVALID', () => {
    const codeOf = (fn: () => void) => {
      try {
        fn();
        return 'no error';
      } catch (error) {
        return errorCode(error);
      }
    };
    expect(codeOf(() => checkBackwardCompatible('{not json', base(), 'agent-status-value'))).toBe('SCHEMA_INVALID');
    const invalid = { type: 'record', name: 'X', fields: [{ name: 'a', type: 'nope' }] };
    expect(codeOf(() => checkBackwardCompatible(base(), invalid, 'agent-status-value'))).toBe('SCHEMA_INVALID');
  });
});
