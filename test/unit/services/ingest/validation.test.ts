import type { AgentRequest, AgentSpec } from '../../../../lib/contracts/types.ts';
import { errorCode, isRetryable } from '../../../../lib/errors.ts';
import { isImageReference, isUsableIdempotencyKey, parseAgentRequestRecord, validateRequest, type ValidationRules } from '../../../../services/ingest/validation.ts';

const rules: ValidationRules = { knownTemplates: ['echo', 'support-assistant'] };

function spec(overrides: Partial<AgentSpec> = {}, resources: Partial<AgentSpec['resources']> = {}): AgentSpec {
  return {
    template: 'echo',
    image: null,
    command: [],
    environment: [{ name: 'API_KEY', ref: 'vault:kv/agents/echo#api-key' }],
    resources: { cpuMillicores: 500, memoryMiB: 256, gpuCount: 0, gpuType: null, ...resources },
    ...overrides,
  };
}

function instantiate(overrides: Partial<AgentRequest> = {}): AgentRequest {
  return {
    requestId: '0b8e9a0e-1111-4222-8333-444455556666',
    idempotencyKey: 'kernel-req-1',
    action: 'INSTANTIATE',
    agentId: null,
    spec: spec(),
    division: 'research',
    region: 'eu-west-1',
    labels: { team: 'nlp', 'app.kubernetes.io/part-of': 'kernel' },
    requestedBy: 'kernel',
    createdAt: new Date('2025-01-01T00:00:00Z'),
    ...overrides,
  };
}

const stop = (overrides: Partial<AgentRequest> = {}): AgentRequest =>
  instantiate({ action: 'STOP', agentId: '7d444840-9dc0-11d1-b245-5ffdce74fad2', spec: null, region: null, ...overrides });

function problems(request: AgentRequest): readonly string[] {
  const result = validateRequest(request, rules);
  return result.ok ? [] : result.problems;
}

describe('validateRequest', () => {
  it('accepts a well-formed INSTANTIATE with a template, with an image, and with both', () => {
    expect(validateRequest(instantiate(), rules)).toEqual({ ok: true });
    expect(validateRequest(instantiate({ spec: spec({ template: null, image: 'ghcr.io/agent-manager/echo:1.2' }) }), rules)).toEqual({ ok: true });
    expect(validateRequest(instantiate({ spec: spec({ image: 'registry.internal:5000/agents/echo@sha256:' + 'a'.repeat(64) }) }), rules)).toEqual({ ok: true });
  });

  it('accepts the other actions with an agentId and no spec (a region is allowed and ignored)', () => {
    for (const action of ['START', 'STOP', 'RESTART', 'DESTROY'] as const) expect(validateRequest(stop({ action }), rules)).toEqual({ ok: true });
    expect(validateRequest(stop({ region: 'local' }), rules)).toEqual({ ok: true });
  });

  it('INSTANTIATE: agentId must be null, spec and region are required', () => {
    expect(problems(instantiate({ agentId: '7d444840-9dc0-11d1-b245-5ffdce74fad2' }))).toEqual(['agentId: must be null for INSTANTIATE (ingest assigns it from the idempotency key)']);
    expect(problems(instantiate({ spec: null }))).toEqual(['spec: is required for INSTANTIATE']);
    expect(problems(instantiate({ region: null }))).toEqual(['region: is required for INSTANTIATE']);
  });

  it('other actions: agentId is required, spec must be null', () => {
    expect(problems(stop({ agentId: null }))).toEqual(['agentId: is required for STOP']);
    expect(problems(stop({ spec: spec() }))).toEqual(['spec: must be null for STOP (only INSTANTIATE carries a spec)']);
    expect(problems(stop({ agentId: 'AGENT-1' }))).toEqual(['agentId: must be a lower-case uuid (8-4-4-4-12), got "AGENT-1"']);
  });

  it('a spec needs a template or an image; the template must be known; the image a valid reference', () => {
    expect(problems(instantiate({ spec: spec({ template: null, image: null }) }))).toEqual(['spec: needs a template or an image (at least one)']);
    expect(problems(instantiate({ spec: spec({ template: 'rm-rf' }) }))).toEqual(['spec.template: unknown template "rm-rf" (known: echo, support-assistant)']);
    expect(validateRequest(instantiate({ spec: spec({ template: 'echo' }) }), { knownTemplates: [] })).toMatchObject({ ok: false, reason: 'spec.template: unknown template "echo" (none are configured)' });
    expect(problems(instantiate({ spec: spec({ template: null, image: 'Not An Image' }) }))).toEqual([
      'spec.image: "Not An Image" is not a valid image reference ([registry[:port]/]path[:tag][@digest], lower-case path)',
    ]);
  });

  it.each([
    ['cpuMillicores', 0, 'must be at least 1 (got 0)'],
    ['cpuMillicores', 64_001, 'must be at most 64000 (got 64001)'],
    ['memoryMiB', 63, 'must be at least 64 (got 63)'],
    ['memoryMiB', 1_048_577, 'must be at most 1048576 (got 1048577)'],
    ['gpuCount', -1, 'must be at least 0 (got -1)'],
  ] as const)('bounds %s (%d)', (field, value, message) => {
    expect(problems(instantiate({ spec: spec({}, { [field]: value }) }))).toEqual([`spec.resources.${field}: ${message}`]);
  });

  it('accepts the bounds themselves', () => {
    expect(validateRequest(instantiate({ spec: spec({}, { cpuMillicores: 1, memoryMiB: 64 }) }), rules)).toEqual({ ok: true });
    expect(validateRequest(instantiate({ spec: spec({}, { cpuMillicores: 64_000, memoryMiB: 1_048_576, gpuCount: 16, gpuType: 'nvidia-a100-80gb' }) }), rules)).toEqual({ ok: true });
  });

  it('gpuType is required exactly when gpuCount > 0; gpuCount 99 is out of bounds', () => {
    expect(problems(instantiate({ spec: spec({}, { gpuCount: 2 }) }))).toEqual(['spec.resources.gpuType: is required when gpuCount is 2']);
    expect(problems(instantiate({ spec: spec({}, { gpuCount: 0, gpuType: 'nvidia-a100' }) }))).toEqual(['spec.resources.gpuType: must be null when gpuCount is 0 (got "nvidia-a100")']);
    expect(problems(instantiate({ spec: spec({}, { gpuCount: 99, gpuType: 'nvidia-a100' }) }))).toEqual(['spec.resources.gpuCount: must be at most 16 (got 99)']);
  });

  it('environment values are references to a store, names valid and unique', () => {
    expect(problems(instantiate({ spec: spec({ environment: [{ name: 'API_KEY', ref: 'sk-live-123' }] }) }))).toEqual([
      'spec.environment.0.ref: must be a reference to a store (vault:…, config:…, secret:…), never a value',
    ]);
    expect(problems(instantiate({ spec: spec({ environment: [{ name: '1BAD', ref: 'config:x' }] }) }))).toEqual(['spec.environment.0.name: "1BAD" is not a valid environment variable name']);
    expect(
      problems(instantiate({ spec: spec({ environment: [{ name: 'A', ref: 'config:x' }, { name: 'A', ref: 'config:y' }] }) })),
    ).toEqual(['spec.environment.1.name: A is defined twice']);
  });

  it('idempotencyKey is 1..256 characters without control characters', () => {
    expect(problems(instantiate({ idempotencyKey: '' }))).toEqual(['idempotencyKey: must not be empty']);
    expect(problems(instantiate({ idempotencyKey: 'k'.repeat(257) }))).toEqual(['idempotencyKey: must be at most 256 characters (got 257)']);
    expect(validateRequest(instantiate({ idempotencyKey: 'k'.repeat(256) }), rules)).toEqual({ ok: true });
    expect(problems(instantiate({ idempotencyKey: 'a\nb' }))).toEqual(['idempotencyKey: must not contain control characters']);
    expect(isUsableIdempotencyKey('k')).toBe(true);
    expect(isUsableIdempotencyKey('')).toBe(false);
    expect(isUsableIdempotencyKey('k'.repeat(257))).toBe(false);
  });

  it('division, region and labels are sane', () => {
    expect(problems(instantiate({ division: 'Research' }))).toEqual(['division: must be 1-63 lower-case letters, digits or "-", starting and ending with a letter or digit (got "Research")']);
    expect(problems(instantiate({ division: '' }))).toHaveLength(1);
    expect(problems(instantiate({ region: 'eu west' }))).toEqual(['region: must be 1-63 lower-case letters, digits or "-", e.g. eu-west-1 (got "eu west")']);
    expect(problems(instantiate({ labels: { 'bad key': 'x' } }))).toEqual(['labels.bad key: is not a valid label key ([prefix/]name, name at most 63 letters, digits, "-", "_" or ".")']);
    expect(problems(instantiate({ labels: { team: 'x'.repeat(64) } }))).toEqual([`labels.team: value "${'x'.repeat(64)}" is not a valid label value (at most 63 letters, digits, "-", "_" or ".")`]);
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`l${i}`, 'v']));
    expect(problems(instantiate({ labels: many }))).toEqual(['labels: must have at most 64 labels (got 65)']);
  });

  it('reports every problem at once, joined in the reason', () => {
    const result = validateRequest(instantiate({ division: 'X', spec: spec({ template: 'nope' }, { gpuCount: 99 }) }), rules);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.code).toBe('VALIDATION_FAILED');
    expect(result.problems.length).toBe(4);
    expect(result.reason).toBe(result.problems.join('; '));
  });
});

describe('isImageReference', () => {
  it.each(['python:3', 'library/python:3.12-slim', 'ghcr.io/agent-manager/echo:1.2', 'localhost:5000/a/b', 'registry.internal/agents/echo:1.0', 'a/b@sha256:' + '0'.repeat(64)])(
    'accepts %s',
    (image) => expect(isImageReference(image)).toBe(true),
  );
  it.each(['', 'UPPER/case', 'has space:1', 'ghcr.io/x:', ':tag', 'a//b', 'a/b@sha256:short', 'x'.repeat(600)])('refuses %s', (image) => expect(isImageReference(image)).toBe(false));
});

describe('parseAgentRequestRecord (the worker validate)', () => {
  it('passes a decoded request through', () => {
    const request = instantiate();
    expect(parseAgentRequestRecord(request)).toEqual(request);
  });

  it('refuses a record whose requestId is not a uuid with a permanent VALIDATION_FAILED', () => {
    let caught: unknown;
    try {
      parseAgentRequestRecord({ ...instantiate(), requestId: 'req-1' });
    } catch (error) {
      caught = error;
    }
    expect(errorCode(caught)).toBe('VALIDATION_FAILED');
    expect(isRetryable(caught)).toBe(false);
    expect(String(caught)).toMatch(/requestId: must be a lower-case uuid/);
  });

  it('refuses something that is not an AgentRequest at all', () => {
    expect(() => parseAgentRequestRecord({ id: 'x', seq: 1 })).toThrow(/not a well-formed AgentRequest/);
  });
});
