import { createServer, type Server, type Socket } from 'node:net';
import { resolve } from 'node:path';
import { createPolicyDecider, loadLocalPolicyFile } from '../../../../services/provisioner/policy-client.ts';
import type { DivisionUsage, PolicyInput } from '../../../../services/provisioner/policy.ts';
import { testEnv } from '../../../support/stack.ts';

// Against the local stack's real OPA (`stack up` serves policies/sentinelnet.rego with
// policies/local-policy.json at data.agentmanager.config), and against local TCP servers that
// misbehave. The remote path must fail closed with a reason, never throw.

const root = resolve(__dirname, '../../../..');
const OPA_URL = testEnv().OPA_URL ?? '';
const FAIL = 'policy decision unavailable, failing closed: ';

function request(overrides: { spec?: Partial<PolicyInput['spec']>; division?: string } = {}): PolicyInput {
  return {
    agentId: 'agent-it-1',
    action: 'INSTANTIATE',
    spec: { image: 'ghcr.io/agent-manager/echo:1.0', gpuCount: 0, gpuType: null, cpu: 2, memoryMb: 4_096, ...overrides.spec },
    division: overrides.division ?? 'platform',
    region: 'eu-west-1',
    requestedBy: 'kernel',
  };
}

const none: DivisionUsage = { gpus: 0 };

function listen(server: Server): Promise<number> {
  return new Promise((resolvePort, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolvePort((server.address() as { port: number }).port));
  });
}

function close(server: Server): Promise<void> {
  return new Promise((done) => server.close(() => done()));
}

describe('policy client against the stack’s OPA server', () => {
  const decider = createPolicyDecider({ url: OPA_URL });

  it('has an OPA_URL', () => {
    expect(OPA_URL).toMatch(/^http:\/\//);
  });

  it('allows a request within every rule', async () => {
    await expect(decider.decide(request(), none)).resolves.toEqual({ allow: true, reasons: [], source: 'remote' });
  });

  it('denies over the GPU quota of the division, with the reason', async () => {
    await expect(decider.decide(request({ spec: { gpuCount: 3, gpuType: 'NVIDIA-A100' } }), { gpus: 2 })).resolves.toEqual({
      allow: false,
      reasons: ['division platform GPU quota exceeded: 2 in use + 3 requested > quota 4'],
      source: 'remote',
    });
    // The same request fits the quota of research (16).
    await expect(decider.decide(request({ spec: { gpuCount: 3 }, division: 'research' }), { gpus: 2 })).resolves.toMatchObject({ allow: true });
  });

  it('denies an image from a registry that is not on the allow-list', async () => {
    await expect(decider.decide(request({ spec: { image: 'docker.io/evil/miner:latest' } }), none)).resolves.toEqual({
      allow: false,
      reasons: ['image docker.io/evil/miner:latest is not from an allowed registry'],
      source: 'remote',
    });
  });

  it('decides exactly like the in-process evaluation of the same policy file', async () => {
    const local = createPolicyDecider({ localPolicy: loadLocalPolicyFile(resolve(root, 'policies/local-policy.json')) });
    const cases: Array<[PolicyInput, DivisionUsage]> = [
      [request(), none],
      [request({ spec: { image: 'python:3.12', cpu: 64, gpuCount: 5 } }), { gpus: 1 }],
      [request({ spec: { gpuCount: 1 }, division: 'support' }), none],
      [request({ spec: { gpuCount: 3 }, division: 'marketing' }), none],
      [request({ spec: { image: 'Registry.Internal/a/b@sha256:12', memoryMb: 70_000 } }), none],
    ];
    for (const [input, usage] of cases) {
      const [fromOpa, inProcess] = await Promise.all([decider.decide(input, usage), local.decide(input, usage)]);
      expect({ allow: fromOpa.allow, reasons: fromOpa.reasons }).toEqual({ allow: inProcess.allow, reasons: inProcess.reasons });
    }
  });

  it('fails closed on a wrong path (OPA answers {} without a result)', async () => {
    const wrong = createPolicyDecider({ url: OPA_URL, path: 'agentmanager/no_such_policy' });
    const decision = await wrong.decide(request(), none);
    expect(decision).toEqual({
      allow: false,
      reasons: [`${FAIL}the policy engine at ${OPA_URL}/v1/data/agentmanager/no_such_policy returned no result (is the policy loaded at agentmanager/no_such_policy?)`],
      source: 'remote',
    });
  });
});

describe('policy client against servers that fail', () => {
  it('fails closed on a timeout: a TCP server that accepts but never answers', async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
    });
    const port = await listen(silent);
    try {
      const decider = createPolicyDecider({ url: `http://127.0.0.1:${port}`, timeoutMs: 300 });
      const started = Date.now();
      const decision = await decider.decide(request(), none);
      const elapsed = Date.now() - started;
      expect(sockets.size).toBeGreaterThan(0); // it did connect: the wait was for an answer
      expect(elapsed).toBeGreaterThanOrEqual(250);
      expect(elapsed).toBeLessThan(3000);
      expect(decision).toEqual({
        allow: false,
        reasons: [`${FAIL}timeout: no answer from the policy engine at http://127.0.0.1:${port}/v1/data/agentmanager/provisioning within 300 ms`],
        source: 'remote',
        unavailable: true,
      });
    } finally {
      for (const socket of sockets) socket.destroy();
      await close(silent);
    }
  });

  it('fails closed when the connection is refused', async () => {
    // A port that was just free: bind, note it, release it.
    const probe = createServer();
    const port = await listen(probe);
    await close(probe);
    const decider = createPolicyDecider({ url: `http://127.0.0.1:${port}` });
    await expect(decider.decide(request(), none)).resolves.toEqual({
      allow: false,
      reasons: [`${FAIL}connection refused by the policy engine at http://127.0.0.1:${port}/v1/data/agentmanager/provisioning`],
      source: 'remote',
      unavailable: true,
    });
  });
});
