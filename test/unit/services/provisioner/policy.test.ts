import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { isAppError, permanentError } from '../../../../lib/errors.ts';
import { stackOpaBinary } from '../../../../dev/stack/opa.ts';
import {
  evaluateLocalPolicy,
  failClosed,
  isRegistryAllowed,
  parseImageReference,
  parseLocalPolicy,
  parseRemoteDecision,
  toPolicyEngineInput,
  type DivisionUsage,
  type LocalPolicy,
  type PolicyInput,
} from '../../../../services/provisioner/policy.ts';

const root = resolve(__dirname, '../../../..');
const policyFile = resolve(root, 'policies/local-policy.json');
const regoFile = resolve(root, 'policies/sentinelnet.rego');

const POLICY: LocalPolicy = {
  allowedRegistries: ['ghcr.io/agent-manager', 'registry.internal', 'localhost:5000'],
  gpuQuotaByDivision: { research: 16, platform: 4, support: 0 },
  defaultGpuQuota: 2,
  maxCpu: 16,
  maxMemoryMb: 65_536,
};

function request(overrides: { spec?: Partial<PolicyInput['spec']>; division?: string } = {}): PolicyInput {
  return {
    agentId: 'agent-1',
    action: 'INSTANTIATE',
    spec: { image: 'ghcr.io/agent-manager/echo:1.0', gpuCount: 0, gpuType: null, cpu: 2, memoryMb: 4_096, ...overrides.spec },
    division: overrides.division ?? 'platform',
    region: 'eu-west-1',
    requestedBy: 'kernel',
  };
}

function expectPermanent(fn: () => unknown, code: string, message?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (error) {
    thrown = error;
  }
  expect(isAppError(thrown)).toBe(true);
  if (isAppError(thrown)) {
    expect(thrown.code).toBe(code);
    expect(thrown.retryable).toBe(false);
    if (message !== undefined) expect(thrown.message).toMatch(message);
  }
}

describe('local policy document', () => {
  it('the shipped policies/local-policy.json is valid and is the default used by these tests', () => {
    const parsed = parseLocalPolicy(JSON.parse(readFileSync(policyFile, 'utf8')), policyFile);
    const { description: _description, ...rules } = parsed;
    expect(rules).toEqual(POLICY);
  });

  it.each([
    ['a missing key', { ...POLICY, maxCpu: undefined }, /maxCpu/],
    ['an unknown key (a typo)', { ...POLICY, maxGpus: 3 }, /maxGpus/],
    ['a registry with a scheme', { ...POLICY, allowedRegistries: ['https://ghcr.io'] }, /allowedRegistries/],
    ['a registry with a trailing slash', { ...POLICY, allowedRegistries: ['ghcr.io/'] }, /allowedRegistries/],
    ['an uppercase registry', { ...POLICY, allowedRegistries: ['GHCR.io'] }, /allowedRegistries/],
    ['a negative quota', { ...POLICY, gpuQuotaByDivision: { research: -1 } }, /gpuQuotaByDivision/],
    ['a fractional quota', { ...POLICY, defaultGpuQuota: 0.5 }, /defaultGpuQuota/],
    ['not an object', 'allow everything', /expected object/],
  ])('rejects %s as a permanent POLICY_CONFIG_INVALID', (_what, document, message) => {
    expectPermanent(() => parseLocalPolicy(document, 'test policy'), 'POLICY_CONFIG_INVALID', message);
  });
});

describe('image references', () => {
  it.each([
    ['python:3', 'docker.io', 'library/python'],
    ['acme/agent', 'docker.io', 'acme/agent'],
    ['ghcr.io/agent-manager/echo:1.2', 'ghcr.io', 'agent-manager/echo'],
    ['localhost:5000/echo', 'localhost:5000', 'echo'],
    ['localhost/echo:dev', 'localhost', 'echo'],
    ['REGISTRY.Internal/a/b@sha256:0123abcd', 'registry.internal', 'a/b'],
    ['registry.internal:443/a/b:1@sha256:0123', 'registry.internal:443', 'a/b'],
  ])('%s → %s / %s', (image, registry, repository) => {
    expect(parseImageReference(image)).toEqual({ registry, repository });
  });

  it.each([[''], [' '], ['a b'], ['ghcr.io/'], ['ghcr.io//x'], ['x@'], ['a@b@c'], ['ghcr.io/a:1:2'], ['ghcr.io/a:/b'], ['ünïcode/x'], [42], [null]])(
    'rejects %p',
    (image) => {
      expect(parseImageReference(image)).toBeUndefined();
    },
  );

  it('matches allowed registries and registry paths by whole segments only', () => {
    const allowed = (image: string): boolean => {
      const ref = parseImageReference(image);
      return ref !== undefined && isRegistryAllowed(ref, POLICY.allowedRegistries);
    };
    expect(allowed('ghcr.io/agent-manager/echo:1')).toBe(true);
    expect(allowed('ghcr.io/agent-manager/team/echo')).toBe(true);
    expect(allowed('ghcr.io/agent-manager-evil/echo')).toBe(false);
    expect(allowed('ghcr.io/other/echo')).toBe(false);
    expect(allowed('ghcr.io.evil.com/agent-manager/echo')).toBe(false);
    expect(allowed('registry.internal/anything/at/all:7')).toBe(true);
    expect(allowed('registry.internal.evil.com/x')).toBe(false);
    expect(allowed('localhost:5000/x')).toBe(true);
    expect(allowed('localhost:5001/x')).toBe(false);
    expect(allowed('python:3')).toBe(false);
    expect(isRegistryAllowed({ registry: 'docker.io', repository: 'library/python' }, ['docker.io/library'])).toBe(true);
  });
});

describe('evaluateLocalPolicy', () => {
  const none: DivisionUsage = { gpus: 0 };

  it('allows a request within every rule', () => {
    expect(evaluateLocalPolicy(request(), none, POLICY)).toEqual({ allow: true, reasons: [], source: 'local' });
  });

  it('denies an image from a registry that is not allowed', () => {
    expect(evaluateLocalPolicy(request({ spec: { image: 'docker.io/evil/miner:latest' } }), none, POLICY)).toEqual({
      allow: false,
      reasons: ['image docker.io/evil/miner:latest is not from an allowed registry'],
      source: 'local',
    });
  });

  it('enforces the GPU quota of the division, counting what it already holds', () => {
    const gpus = (gpuCount: number, inUse: number, division = 'platform') =>
      evaluateLocalPolicy(request({ spec: { gpuCount, gpuType: 'NVIDIA-A100' }, division }), { gpus: inUse }, POLICY);
    expect(gpus(2, 2).allow).toBe(true); // exactly the quota of 4
    expect(gpus(3, 2)).toEqual({
      allow: false,
      reasons: ['division platform GPU quota exceeded: 2 in use + 3 requested > quota 4'],
      source: 'local',
    });
    expect(gpus(16, 0, 'research').allow).toBe(true);
    expect(gpus(1, 0, 'support').reasons).toEqual(['division support GPU quota exceeded: 0 in use + 1 requested > quota 0']);
    // A division without its own quota gets the default.
    expect(gpus(2, 0, 'marketing').allow).toBe(true);
    expect(gpus(3, 0, 'marketing').reasons).toEqual(['division marketing GPU quota exceeded: 0 in use + 3 requested > quota 2']);
    // A division over its quota may still run agents without GPUs.
    expect(gpus(0, 9).allow).toBe(true);
    // A division named like an Object.prototype member is just an unknown division.
    expect(gpus(1, 0, 'constructor').allow).toBe(true);
    expect(gpus(3, 0, '__proto__').reasons).toEqual(['division __proto__ GPU quota exceeded: 0 in use + 3 requested > quota 2']);
  });

  it('enforces per-agent CPU and memory maxima', () => {
    expect(evaluateLocalPolicy(request({ spec: { cpu: 16, memoryMb: 65_536 } }), none, POLICY).allow).toBe(true);
    expect(evaluateLocalPolicy(request({ spec: { cpu: 16.5, memoryMb: 65_537 } }), none, POLICY).reasons).toEqual([
      'cpu 16.5 exceeds the maximum of 16',
      'memoryMb 65537 exceeds the maximum of 65536',
    ]);
  });

  it('returns every reason, sorted', () => {
    const decision = evaluateLocalPolicy(
      request({ spec: { image: 'python:3', cpu: 64, gpuCount: 5 }, division: 'platform' }),
      { gpus: 0 },
      POLICY,
    );
    expect(decision.reasons).toEqual([
      'cpu 64 exceeds the maximum of 16',
      'division platform GPU quota exceeded: 0 in use + 5 requested > quota 4',
      'image python:3 is not from an allowed registry',
    ]);
  });

  it('fails closed on malformed input instead of throwing', () => {
    const malformed = {
      agentId: 'x',
      action: 'INSTANTIATE',
      spec: { image: '', gpuCount: -1, cpu: Number.NaN, memoryMb: 1.5 },
      division: '',
      region: '',
      requestedBy: '',
    } as unknown as PolicyInput;
    expect(evaluateLocalPolicy(malformed, { gpus: -2 }, POLICY)).toEqual({
      allow: false,
      reasons: [
        'division must be a non-empty string',
        'spec.cpu must be a positive number',
        'spec.gpuCount must be a non-negative integer',
        'spec.image must be a non-empty image reference',
        'spec.memoryMb must be a positive integer',
        'usage.gpus must be a non-negative integer',
      ],
      source: 'local',
    });
    expect(evaluateLocalPolicy({} as PolicyInput, {} as DivisionUsage, POLICY).allow).toBe(false);
    expect(evaluateLocalPolicy(null as unknown as PolicyInput, null as unknown as DivisionUsage, POLICY).reasons).toHaveLength(6);
  });
});

describe('remote decisions', () => {
  it('builds the engine input the Rego policy reads', () => {
    expect(toPolicyEngineInput(request({ spec: { gpuCount: 1 } }), { gpus: 3 })).toEqual({
      agent: { id: 'agent-1', action: 'INSTANTIATE', requestedBy: 'kernel' },
      spec: { image: 'ghcr.io/agent-manager/echo:1.0', gpuCount: 1, gpuType: null, cpu: 2, memoryMb: 4_096 },
      division: 'platform',
      region: 'eu-west-1',
      usage: { gpus: 3 },
    });
  });

  it('reads allow and deny answers of the OPA Data API', () => {
    expect(parseRemoteDecision({ result: { allow: true, reasons: [] } })).toEqual({ allow: true, reasons: [], source: 'remote' });
    expect(parseRemoteDecision({ result: { allow: true } })).toEqual({ allow: true, reasons: [], source: 'remote' });
    expect(parseRemoteDecision({ result: { allow: false, reasons: ['z', 'a'] }, decision_id: 'd1' })).toEqual({
      allow: false,
      reasons: ['a', 'z'],
      source: 'remote',
    });
    expect(parseRemoteDecision({ result: { allow: false } })).toEqual({
      allow: false,
      reasons: ['denied by policy (no reason given)'],
      source: 'remote',
    });
  });

  it.each([
    ['no result (policy not loaded)', {}, /no result/],
    ['allow not a boolean', { result: { allow: 'true' } }, /malformed/],
    ['reasons not strings', { result: { allow: true, reasons: [1] } }, /malformed/],
    ['a result that is not an object', { result: true }, /malformed/],
    ['null', null, /malformed/],
    ['a string', 'allow', /malformed/],
  ])('fails closed on %s', (_what, body, reason) => {
    const decision = parseRemoteDecision(body);
    expect(decision.allow).toBe(false);
    expect(decision.source).toBe('remote');
    expect(decision.reasons[0]).toMatch(reason);
  });

  it('failClosed denies with the reason', () => {
    expect(failClosed('timeout after 2000 ms')).toEqual({
      allow: false,
      reasons: ['policy decision unavailable, failing closed: timeout after 2000 ms'],
      source: 'remote',
    });
    expect(failClosed('x', 'local').source).toBe('local');
  });
});

// ------------------------------------------------------------------------------------------------
// The Rego policy implements the same rules. With an `opa` binary (OPA_BIN, else the local stack's
// .stack/bin/opa that `stack up` builds, else `opa` on the PATH) every case below is evaluated by
// both and must agree exactly. Without one, only the file's shape is checked, except in CI
// (CI=true, where `npm test` has run `stack up`): there a missing binary fails the comparison
// instead of skipping it.

function findOpa(): string | undefined {
  const candidates = process.env.OPA_BIN ? [process.env.OPA_BIN] : [stackOpaBinary(), 'opa'];
  return candidates.find((candidate) => spawnSync(candidate, ['version'], { encoding: 'utf8' }).status === 0);
}

const opa = findOpa();
const requireOpa = process.env.CI === 'true' || process.env.CI === '1';

describe('policies/sentinelnet.rego', () => {
  const rego = readFileSync(regoFile, 'utf8');

  it('is the agentmanager.provisioning package answering allow and reasons', () => {
    expect(rego).toMatch(/^package agentmanager\.provisioning$/m);
    expect(rego).toMatch(/^default allow := false$/m);
    expect(rego).toMatch(/^allow if count\(reasons\) == 0$/m);
    expect(rego).toMatch(/data\.agentmanager\.config/);
  });

  const cases: Array<[string, unknown]> = [
    ['allowed', toPolicyEngineInput(request(), { gpus: 0 })],
    ['bad registry', toPolicyEngineInput(request({ spec: { image: 'docker.io/evil/miner' } }), { gpus: 0 })],
    ['docker hub short name', toPolicyEngineInput(request({ spec: { image: 'python:3.12' } }), { gpus: 0 })],
    ['registry path prefix trick', toPolicyEngineInput(request({ spec: { image: 'ghcr.io/agent-manager-evil/x' } }), { gpus: 0 })],
    ['host suffix trick', toPolicyEngineInput(request({ spec: { image: 'registry.internal.evil.com/x' } }), { gpus: 0 })],
    ['uppercase registry', toPolicyEngineInput(request({ spec: { image: 'Registry.Internal/a/b@sha256:12' } }), { gpus: 0 })],
    ['registry with port', toPolicyEngineInput(request({ spec: { image: 'localhost:5000/a:1' } }), { gpus: 0 })],
    ['gpu at quota', toPolicyEngineInput(request({ spec: { gpuCount: 2 } }), { gpus: 2 })],
    ['gpu over quota', toPolicyEngineInput(request({ spec: { gpuCount: 3 } }), { gpus: 2 })],
    ['gpu default quota', toPolicyEngineInput(request({ spec: { gpuCount: 3 }, division: 'marketing' }), { gpus: 0 })],
    ['gpu zero quota', toPolicyEngineInput(request({ spec: { gpuCount: 1 }, division: 'support' }), { gpus: 0 })],
    ['cpu-only over gpu quota', toPolicyEngineInput(request(), { gpus: 99 })],
    ['cpu and memory over', toPolicyEngineInput(request({ spec: { cpu: 16.5, memoryMb: 70_000 } }), { gpus: 0 })],
    ['everything wrong', toPolicyEngineInput(request({ spec: { image: 'python', cpu: 99, gpuCount: 20 } }), { gpus: 1 })],
    ['malformed numbers', { agent: {}, spec: { image: 'a b', gpuCount: 1.5, cpu: -1, memoryMb: 0 }, division: 7, usage: { gpus: 'x' } }],
    ['missing everything', {}],
    ['missing spec fields', { spec: {}, division: 'platform', usage: {} }],
  ];

  (opa === undefined && !requireOpa ? it.skip : it).each(cases)('agrees with evaluateLocalPolicy: %s', (_name, input) => {
    if (opa === undefined) throw permanentError('OPA_MISSING', `no opa binary (OPA_BIN, ${stackOpaBinary()} or on the PATH): run \`npx agent-manager stack up\``);
    const local = parseLocalPolicy(JSON.parse(readFileSync(policyFile, 'utf8')));
    const result = spawnSync(
      opa,
      ['eval', '--format', 'json', '--stdin-input', '-d', `agentmanager.config:${policyFile}`, '-d', regoFile, 'data.agentmanager.provisioning'],
      { input: JSON.stringify(input), encoding: 'utf8' },
    );
    expect(result.stderr).toBe('');
    const parsed = JSON.parse(result.stdout) as { result: Array<{ expressions: Array<{ value: unknown }> }> };
    const remote = parseRemoteDecision({ result: parsed.result[0]?.expressions[0]?.value });
    const inProcess = evaluateLocalPolicy(
      {
        ...(input as Record<string, unknown>),
        agentId: '',
        action: '',
        region: '',
        requestedBy: '',
      } as unknown as PolicyInput,
      (input as { usage?: DivisionUsage }).usage as DivisionUsage,
      local,
    );
    expect({ allow: remote.allow, reasons: remote.reasons }).toEqual({ allow: inProcess.allow, reasons: inProcess.reasons });
  });
});
