import { topicContract } from '../../../../lib/contracts/schemas.ts';
import type { AgentRequest } from '../../../../lib/contracts/types.ts';
import { AGENT_ID_NAMESPACE, agentIdFor, isUuid, requestPayloadHash, uuidV5 } from '../../../../services/ingest/idempotency.ts';
import { requestFromBody } from '../../../../services/ingest/api.ts';

const request: AgentRequest = {
  requestId: '0b8e9a0e-1111-4222-8333-444455556666',
  idempotencyKey: 'kernel-req-1',
  action: 'INSTANTIATE',
  agentId: null,
  spec: {
    template: 'echo',
    image: null,
    command: ['--verbose'],
    environment: [{ name: 'API_KEY', ref: 'vault:kv/agents/echo#api-key' }],
    resources: { cpuMillicores: 500, memoryMiB: 256, gpuCount: 0, gpuType: null },
  },
  division: 'research',
  region: 'eu-west-1',
  labels: { team: 'nlp', app: 'echo' },
  requestedBy: 'kernel',
  createdAt: new Date('2025-01-01T00:00:00Z'),
};

describe('agentIdFor', () => {
  it('implements RFC 9562 UUID v5 (the RFC example: www.example.com in the DNS namespace)', () => {
    expect(uuidV5('www.example.com', '6ba7b810-9dad-11d1-80b4-00c04fd430c8')).toBe('2ed6657d-e927-568b-95e1-2665a8aea6a2');
  });

  it('is deterministic, a version-5 uuid, and differs per key', () => {
    const id = agentIdFor('kernel', 'kernel-req-1');
    expect(agentIdFor('kernel', 'kernel-req-1')).toBe(id);
    expect(isUuid(id)).toBe(true);
    expect(id[14]).toBe('5');
    expect(['8', '9', 'a', 'b']).toContain(id[19]);
    expect(agentIdFor('kernel', 'kernel-req-2')).not.toBe(id);
    expect(id).toBe(uuidV5('["kernel","kernel-req-1"]', AGENT_ID_NAMESPACE));
  });

  it('is scoped to the identity: the same key from another identity is another agent', () => {
    expect(agentIdFor('research-bot', 'kernel-req-1')).not.toBe(agentIdFor('kernel', 'kernel-req-1'));
    // No (identity, key) pair spells another one, whatever separators they contain.
    expect(agentIdFor('a', 'b","c')).not.toBe(agentIdFor('a","b', 'c'));
    expect(agentIdFor('a\n', 'b')).not.toBe(agentIdFor('a', '\nb'));
  });

  it('is pinned: the namespace and the name never change (a retried INSTANTIATE must get the same agent)', () => {
    expect(agentIdFor('kernel', 'kernel-req-1')).toBe('5015103e-eb27-5a04-80ff-8c3ddf448a1c');
  });
});

describe('requestPayloadHash', () => {
  const hash = requestPayloadHash(request);

  it('ignores requestId and createdAt (a retry has new ones) and the order of keys', () => {
    const retry: AgentRequest = { ...request, requestId: 'ffffffff-1111-4222-8333-444455556666', createdAt: new Date() };
    expect(requestPayloadHash(retry)).toBe(hash);
    expect(requestPayloadHash({ ...request, labels: { app: 'echo', team: 'nlp' } })).toBe(hash);
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('changes with every defining field', () => {
    const variants: Partial<AgentRequest>[] = [
      { action: 'STOP' },
      { agentId: '7d444840-9dc0-11d1-b245-5ffdce74fad2' },
      { division: 'platform' },
      { region: 'us-east-1' },
      { labels: { team: 'nlp' } },
      { requestedBy: 'demo-kernel' },
      { spec: request.spec && { ...request.spec, resources: { ...request.spec.resources, cpuMillicores: 501 } } },
      { spec: request.spec && { ...request.spec, command: [] } },
    ];
    for (const variant of variants) expect(requestPayloadHash({ ...request, ...variant })).not.toBe(hash);
  });

  it('is the same for a request sent through Kafka (Avro round trip) and through the API (JSON body with defaults left out)', () => {
    const contract = topicContract('agent-requests', `${process.cwd()}/schemas`);
    const decoded = contract.fromBuffer(contract.toBuffer(request));
    const fromApi = requestFromBody(
      {
        idempotencyKey: 'kernel-req-1',
        action: 'INSTANTIATE',
        spec: { template: 'echo', command: ['--verbose'], environment: [{ name: 'API_KEY', ref: 'vault:kv/agents/echo#api-key' }], resources: { cpuMillicores: 500, memoryMiB: 256 } },
        division: 'research',
        region: 'eu-west-1',
        labels: { app: 'echo', team: 'nlp' },
      },
      'kernel',
      new Date(),
    );
    expect(requestPayloadHash(decoded)).toBe(hash);
    expect(requestPayloadHash(fromApi)).toBe(hash);
  });
});
