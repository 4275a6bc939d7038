import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { isAppError } from '../../../../lib/errors.ts';
import { createPolicyDecider, loadLocalPolicyFile, type PolicyDeciderOptions } from '../../../../services/provisioner/policy-client.ts';
import { toPolicyEngineInput, type DivisionUsage, type LocalPolicy, type PolicyInput } from '../../../../services/provisioner/policy.ts';

const root = resolve(__dirname, '../../../..');
const policyFile = resolve(root, 'policies/local-policy.json');
const URL_BASE = 'http://policy.test:8181';
const ENDPOINT = `${URL_BASE}/v1/data/agentmanager/provisioning`;
const FAIL = 'policy decision unavailable, failing closed: ';

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

const none: DivisionUsage = { gpus: 0 };

function expectConfigError(fn: () => unknown, message: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (error) {
    thrown = error;
  }
  expect(isAppError(thrown)).toBe(true);
  if (isAppError(thrown)) {
    expect(thrown.code).toBe('POLICY_CONFIG_INVALID');
    expect(thrown.retryable).toBe(false);
    expect(thrown.message).toMatch(message);
  }
}

interface Call {
  url: string;
  init: RequestInit | undefined;
}

/** A fake fetch answering `answer` and recording the calls. */
function fakeFetch(answer: (call: Call) => Promise<Response> | Response): { fetch: typeof fetch; calls: Call[] } {
  const calls: Call[] = [];
  const impl: typeof fetch = async (url, init) => {
    const call = { url: url instanceof Request ? url.url : url.toString(), init };
    calls.push(call);
    return answer(call);
  };
  return { fetch: impl, calls };
}

function remote(answer: (call: Call) => Promise<Response> | Response, options: Partial<PolicyDeciderOptions> = {}) {
  const fake = fakeFetch(answer);
  return { decider: createPolicyDecider({ url: URL_BASE, fetch: fake.fetch, ...options }), calls: fake.calls };
}

const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });

describe('createPolicyDecider, local mode (no url)', () => {
  const decider = createPolicyDecider({ localPolicy: POLICY });

  it('evaluates the local policy in-process', async () => {
    expect(decider.source).toBe('local');
    await expect(decider.decide(request(), none)).resolves.toEqual({ allow: true, reasons: [], source: 'local' });
  });

  it('denies over the GPU quota of the division, with the reason', async () => {
    await expect(decider.decide(request({ spec: { gpuCount: 3 } }), { gpus: 2 })).resolves.toEqual({
      allow: false,
      reasons: ['division platform GPU quota exceeded: 2 in use + 3 requested > quota 4'],
      source: 'local',
    });
  });

  it('denies an image from a registry that is not allowed', async () => {
    await expect(decider.decide(request({ spec: { image: 'docker.io/evil/miner:latest' } }), none)).resolves.toEqual({
      allow: false,
      reasons: ['image docker.io/evil/miner:latest is not from an allowed registry'],
      source: 'local',
    });
  });

  it('never throws on malformed input: a deny with reasons', async () => {
    const decision = await decider.decide(null as unknown as PolicyInput, null as unknown as DivisionUsage);
    expect(decision.allow).toBe(false);
    expect(decision.source).toBe('local');
    expect(decision.reasons.length).toBeGreaterThan(0);
  });

  it('an empty url means local', () => {
    expect(createPolicyDecider({ url: '', localPolicy: POLICY }).source).toBe('local');
  });
});

describe('createPolicyDecider options (validated at start-up)', () => {
  it.each<[string, PolicyDeciderOptions, RegExp]>([
    ['neither url nor local policy', {}, /url\/localPolicy: neither/],
    ['a url that is not one', { url: 'not a url' }, /option url: expected an http\(s\) URL/],
    ['a url of another scheme', { url: 'ftp://policy.test' }, /option url: expected an http or https URL, got ftp:/],
    ['a url with a query', { url: `${URL_BASE}/?x=1` }, /option url: expected a base URL without query/],
    ['a zero timeout', { url: URL_BASE, timeoutMs: 0 }, /option timeoutMs: expected a positive integer/],
    ['a fractional timeout', { url: URL_BASE, timeoutMs: 1.5 }, /option timeoutMs/],
    ['a path with a space', { url: URL_BASE, path: 'agentmanager/provi sioning' }, /option path/],
    ['an empty path', { url: URL_BASE, path: '/' }, /option path/],
    ['an invalid local policy', { localPolicy: { ...POLICY, maxCpu: -1 } }, /localPolicy is invalid/],
  ])('rejects %s as a permanent POLICY_CONFIG_INVALID', (_what, options, message) => {
    expectConfigError(() => createPolicyDecider(options), message);
  });
});

describe('createPolicyDecider, remote mode (OPA Data API)', () => {
  it('POSTs {"input": …} to {url}/v1/data/agentmanager/provisioning and reads the decision', async () => {
    const { decider, calls } = remote(() => json({ result: { allow: true, reasons: [] }, decision_id: 'd-1' }));
    expect(decider.source).toBe('remote');
    await expect(decider.decide(request({ spec: { gpuCount: 1 } }), { gpus: 3 })).resolves.toEqual({ allow: true, reasons: [], source: 'remote' });
    expect(calls).toHaveLength(1);
    const [call] = calls;
    expect(call?.url).toBe(ENDPOINT);
    expect(call?.init?.method).toBe('POST');
    expect(call?.init?.headers).toMatchObject({ 'content-type': 'application/json' });
    expect(call?.init?.signal).toBeInstanceOf(AbortSignal);
    expect(JSON.parse(call?.init?.body as string)).toEqual({ input: toPolicyEngineInput(request({ spec: { gpuCount: 1 } }), { gpus: 3 }) });
  });

  it('keeps a base path of the url and accepts the path with or without slashes', async () => {
    const { decider, calls } = remote(() => json({ result: { allow: true } }), { url: 'https://gw.test/sentinelnet/', path: '/acme/provisioning/' });
    await decider.decide(request(), none);
    expect(calls[0]?.url).toBe('https://gw.test/sentinelnet/v1/data/acme/provisioning');
  });

  it('returns a deny with the engine’s reasons, sorted', async () => {
    const { decider } = remote(() => json({ result: { allow: false, reasons: ['z reason', 'a reason'] } }));
    await expect(decider.decide(request(), none)).resolves.toEqual({ allow: false, reasons: ['a reason', 'z reason'], source: 'remote' });
  });

  it('never falls back to the local policy when the engine fails', async () => {
    const { decider } = remote(() => json({}), { localPolicy: POLICY });
    const decision = await decider.decide(request(), none);
    expect(decision).toMatchObject({ allow: false, source: 'remote' });
  });

  describe('fails closed, never throws', () => {
    it.each<[string, () => Promise<Response> | Response, RegExp]>([
      ['a 500 status', () => json({ code: 'internal_error', message: 'boom' }, 500), /answered HTTP 500: \{"code":"internal_error","message":"boom"\}/],
      ['a 404 status without a body', () => new Response('', { status: 404 }), /answered HTTP 404$/],
      ['a 302 status', () => new Response('', { status: 302, headers: { location: '/elsewhere' } }), /answered HTTP 302/],
      ['a body that is not JSON', () => new Response('<html>proxy error</html>', { status: 200 }), /a body that is not JSON: <html>proxy error<\/html>/],
      ['an empty body', () => new Response('', { status: 200 }), /a body that is not JSON: \(empty\)/],
      ['no result (wrong path or policy not loaded)', () => json({}), /returned no result \(is the policy loaded at agentmanager\/provisioning\?\)/],
      ['allow that is not a boolean', () => json({ result: { allow: 'true' } }), /malformed decision/],
      ['reasons that are not strings', () => json({ result: { allow: false, reasons: [1] } }), /malformed decision/],
      ['a JSON array', () => json([]), /returned no result/],
      ['JSON null', () => json(null), /malformed decision/],
    ])('%s', async (_what, answer, reason) => {
      const { decider } = remote(answer);
      const decision = await decider.decide(request(), none);
      expect(decision.allow).toBe(false);
      expect(decision.source).toBe('remote');
      expect(decision.reasons).toHaveLength(1);
      expect(decision.reasons[0]?.startsWith(FAIL)).toBe(true);
      expect(decision.reasons[0]).toMatch(reason);
      // Only a 5xx is the engine's outage (asked again later); the rest are answers that deny.
      expect(decision.unavailable).toBe(_what === 'a 500 status' ? true : undefined);
    });

    it('quotes at most 200 characters of an error body', async () => {
      const { decider } = remote(() => new Response('x'.repeat(5000), { status: 503 }));
      const [reason] = (await decider.decide(request(), none)).reasons;
      expect(reason).toMatch(/answered HTTP 503: x{200}…$/);
    });

    it.each<[string, unknown, RegExp]>([
      ['connection refused', new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' }) }), /connection refused by the policy engine at http:\/\/policy\.test:8181\/v1\/data\/agentmanager\/provisioning$/],
      [
        'connection refused on every address (AggregateError)',
        new TypeError('fetch failed', { cause: new AggregateError([Object.assign(new Error('connect ECONNREFUSED ::1:1'), { code: 'ECONNREFUSED' })]) }),
        /connection refused/,
      ],
      ['an unknown host', new TypeError('fetch failed', { cause: Object.assign(new Error('getaddrinfo ENOTFOUND policy.test'), { code: 'ENOTFOUND' }) }), /host cannot be resolved.*ENOTFOUND/],
      ['a reset connection', new TypeError('fetch failed', { cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }) }), /closed the connection/],
      ['anything else', new TypeError('fetch failed', { cause: new Error('self-signed certificate') }), /cannot reach the policy engine at .*: fetch failed: self-signed certificate/],
      ['a non-Error rejection', 'weird', /cannot reach the policy engine at .*: weird/],
    ])('%s', async (_what, failure, reason) => {
      const { decider } = remote(async () => {
        throw failure;
      });
      const decision = await decider.decide(request(), none);
      expect(decision).toMatchObject({ allow: false, source: 'remote', unavailable: true });
      expect(decision.reasons[0]?.startsWith(FAIL)).toBe(true);
      expect(decision.reasons[0]).toMatch(reason);
    });

    it('a fetch that throws synchronously', async () => {
      const throwing = (() => {
        throw new TypeError('Invalid URL');
      }) as unknown as typeof fetch;
      const decision = await createPolicyDecider({ url: URL_BASE, fetch: throwing }).decide(request(), none);
      expect(decision).toMatchObject({ allow: false, source: 'remote' });
      expect(decision.reasons[0]).toMatch(/cannot reach the policy engine.*Invalid URL/);
    });

    it('a timeout: the deadline aborts the call and the reason says so', async () => {
      const { decider, calls } = remote(
        ({ init }) =>
          new Promise<Response>((_resolve, reject) => {
            const signal = init?.signal;
            signal?.addEventListener('abort', () => reject(signal.reason as Error));
          }),
        { timeoutMs: 50 },
      );
      const started = Date.now();
      const decision = await decider.decide(request(), none);
      expect(Date.now() - started).toBeLessThan(2000);
      expect(calls).toHaveLength(1);
      expect(decision).toEqual({
        allow: false,
        reasons: [`${FAIL}timeout: no answer from the policy engine at ${ENDPOINT} within 50 ms`],
        source: 'remote',
        unavailable: true,
      });
    });

    it('a timeout while reading the body', async () => {
      const { decider } = remote(
        ({ init }) =>
          new Response(
            new ReadableStream({
              start(controller) {
                controller.enqueue(new TextEncoder().encode('{"result":'));
                init?.signal?.addEventListener('abort', () => controller.error(init.signal?.reason));
              },
            }),
            { status: 200 },
          ),
        { timeoutMs: 50 },
      );
      const decision = await decider.decide(request(), none);
      expect(decision.allow).toBe(false);
      expect(decision.reasons[0]).toMatch(/timeout: no answer .* within 50 ms/);
    });

    it('malformed input (null) is a deny, not a throw', async () => {
      const { decider, calls } = remote(() => json({ result: { allow: true } }));
      const decision = await decider.decide(null as unknown as PolicyInput, none);
      expect(decision).toMatchObject({ allow: false, source: 'remote' });
      expect(decision.reasons[0]).toMatch(/the request could not be built/);
      expect(calls).toHaveLength(0);
    });
  });
});

describe('loadLocalPolicyFile', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'policy-client-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads and validates the shipped policies/local-policy.json', () => {
    const { description: _description, ...rules } = loadLocalPolicyFile(policyFile);
    expect(rules).toEqual(POLICY);
  });

  it('names the file when it is missing', () => {
    const missing = join(dir, 'missing.json');
    expectConfigError(() => loadLocalPolicyFile(missing), new RegExp(`local policy file ${missing} cannot be read: no such file`));
  });

  it('names the file when it is not JSON', () => {
    const file = join(dir, 'broken.json');
    writeFileSync(file, '{"allowedRegistries": [');
    expectConfigError(() => loadLocalPolicyFile(file), new RegExp(`local policy file ${file} is not valid JSON`));
  });

  it('names the file and the bad key when it breaks the schema', () => {
    const file = join(dir, 'invalid.json');
    writeFileSync(file, JSON.stringify({ ...POLICY, defaultGpuQuota: -1 }));
    expectConfigError(() => loadLocalPolicyFile(file), new RegExp(`local policy file ${file} is invalid:[\\s\\S]*defaultGpuQuota`));
  });

  it('a decider built from the file decides like the in-process rules', async () => {
    const decider = createPolicyDecider({ localPolicy: loadLocalPolicyFile(policyFile) });
    await expect(decider.decide(request({ spec: { gpuCount: 3 }, division: 'marketing' }), none)).resolves.toEqual({
      allow: false,
      reasons: ['division marketing GPU quota exceeded: 0 in use + 3 requested > quota 2'],
      source: 'local',
    });
  });
});
