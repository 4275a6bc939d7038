import { isAppError } from '../../../../../lib/errors.ts';
import {
  agentLabelSelector,
  buildAgentPod,
  cpuQuantity,
  podNameFor,
  type AgentPodInput,
  type PodManifest,
} from '../../../../../services/provisioner/drivers/kubernetes-manifest.ts';

const AGENT_ID = '3f2a9c1e-8b7d-4e6f-9a0b-1c2d3e4f5a6b';

function input(overrides: Partial<AgentPodInput> = {}): AgentPodInput {
  return {
    agentId: AGENT_ID,
    namespace: 'agents',
    image: 'ghcr.io/agent-manager/echo:1.0',
    cpu: 0.5,
    memoryMb: 512,
    gpuCount: 0,
    ...overrides,
  };
}

function invalid(build: () => unknown): { code: string; retryable: boolean; message: string; problems: unknown } {
  try {
    build();
  } catch (error) {
    if (isAppError(error)) return { code: error.code, retryable: error.retryable, message: error.message, problems: error.context.problems };
    throw error;
  }
  throw new Error('expected the build to fail');
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

describe('buildAgentPod', () => {
  it('builds a CPU-only Pod: Guaranteed resources, non-root, no kubelet restarts, nothing GPU', () => {
    const pod = buildAgentPod(input({ generation: 2, attempt: 1, division: 'platform', stopGraceMs: 10_500 }));
    const expected: PodManifest = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `agent-${AGENT_ID}`,
        namespace: 'agents',
        labels: {
          'app.kubernetes.io/name': 'agent',
          'app.kubernetes.io/managed-by': 'agent-manager',
          'agentmanager.io/agent-id': AGENT_ID,
          'agentmanager.io/division': 'platform',
          'agentmanager.io/generation': '2',
          'agentmanager.io/attempt': '1',
        },
        annotations: { 'agentmanager.io/agent-id': AGENT_ID, 'agentmanager.io/division': 'platform' },
      },
      spec: {
        restartPolicy: 'Never',
        automountServiceAccountToken: false,
        enableServiceLinks: false,
        terminationGracePeriodSeconds: 11,
        nodeSelector: { 'kubernetes.io/os': 'linux' },
        securityContext: { runAsNonRoot: true, runAsUser: 65_532, runAsGroup: 65_532, fsGroup: 65_532, seccompProfile: { type: 'RuntimeDefault' } },
        containers: [
          {
            name: 'agent',
            image: 'ghcr.io/agent-manager/echo:1.0',
            imagePullPolicy: 'IfNotPresent',
            env: [
              { name: 'AGENT_ID', value: AGENT_ID },
              { name: 'AGENT_GENERATION', value: '2' },
              { name: 'AGENT_ATTEMPT', value: '1' },
            ],
            resources: { requests: { cpu: '500m', memory: '512Mi' }, limits: { cpu: '500m', memory: '512Mi' } },
            securityContext: {
              allowPrivilegeEscalation: false,
              privileged: false,
              readOnlyRootFilesystem: true,
              runAsNonRoot: true,
              capabilities: { drop: ['ALL'] },
            },
            volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
          },
        ],
        volumes: [{ name: 'tmp', emptyDir: { sizeLimit: '1024Mi' } }],
      },
    };
    expect(pod).toStrictEqual(expected);
    expect(JSON.parse(JSON.stringify(pod))).toStrictEqual(expected);
  });

  it('requests GPUs as an extended resource and targets the GPU pool with a node selector and toleration', () => {
    const pod = buildAgentPod(input({ cpu: 8, memoryMb: 32_768, gpuCount: 2, gpuType: 'NVIDIA-A100-SXM4-80GB' }));
    const [container] = pod.spec.containers;
    expect(container?.resources).toEqual({
      requests: { cpu: '8', memory: '32768Mi', 'nvidia.com/gpu': '2' },
      limits: { cpu: '8', memory: '32768Mi', 'nvidia.com/gpu': '2' },
    });
    expect(pod.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux', 'nvidia.com/gpu.product': 'NVIDIA-A100-SXM4-80GB' });
    expect(pod.spec.tolerations).toEqual([{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
    expect(pod.spec.restartPolicy).toBe('Never');
  });

  it('a GPU pod without a product only selects by the pool options; the product label key is configurable', () => {
    const anyGpu = buildAgentPod(input({ gpuCount: 1 }), { gpuNodeSelector: { 'agentmanager.io/pool': 'gpu' } });
    expect(anyGpu.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux', 'agentmanager.io/pool': 'gpu' });
    expect(anyGpu.spec.tolerations).toHaveLength(1);
    const custom = buildAgentPod(input({ gpuCount: 1, gpuType: 'L4' }), { gpuProductLabel: 'cloud.example.com/accelerator' });
    expect(custom.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux', 'cloud.example.com/accelerator': 'L4' });
    // The pool selector is for GPU pods only.
    expect(buildAgentPod(input(), { gpuNodeSelector: { 'agentmanager.io/pool': 'gpu' } }).spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux' });
  });

  it('takes the environment by reference only: secret names and keys, never values', () => {
    const pod = buildAgentPod(
      input({
        secretEnv: [
          { name: 'OPENAI_API_KEY', secretName: 'agent-llm-credentials', key: 'api-key' },
          { name: 'OPTIONAL_TOKEN', secretName: 'tokens.v2', key: 'token', optional: true },
        ],
        envFromSecrets: ['agent-common-secrets'],
        envFromConfigMaps: ['agent-runtime-config'],
      }),
    );
    const [container] = pod.spec.containers;
    expect(container?.env.slice(1)).toEqual([
      { name: 'OPENAI_API_KEY', valueFrom: { secretKeyRef: { name: 'agent-llm-credentials', key: 'api-key' } } },
      { name: 'OPTIONAL_TOKEN', valueFrom: { secretKeyRef: { name: 'tokens.v2', key: 'token', optional: true } } },
    ]);
    expect(container?.envFrom).toEqual([{ configMapRef: { name: 'agent-runtime-config' } }, { secretRef: { name: 'agent-common-secrets' } }]);
    // The only literal values are the builder's own identifiers.
    expect(container?.env.filter((e) => e.value !== undefined).map((e) => e.name)).toEqual(['AGENT_ID']);
  });

  it('passes command, args, service account and pull secrets through', () => {
    const pod = buildAgentPod(
      input({ command: ['node'], args: ['agent.js', '--verbose'], serviceAccountName: 'agent-runner', imagePullSecrets: ['ghcr-pull'] }),
      { runAsUser: 10_001, tmpSizeMb: 256 },
    );
    expect(pod.spec.containers[0]).toMatchObject({ command: ['node'], args: ['agent.js', '--verbose'] });
    expect(pod.spec.serviceAccountName).toBe('agent-runner');
    expect(pod.spec.imagePullSecrets).toEqual([{ name: 'ghcr-pull' }]);
    expect(pod.spec.securityContext).toMatchObject({ runAsUser: 10_001, runAsGroup: 10_001, fsGroup: 10_001, runAsNonRoot: true });
    expect(pod.spec.volumes).toEqual([{ name: 'tmp', emptyDir: { sizeLimit: '256Mi' } }]);
  });

  it('keeps labels valid for any agentId and division; the originals stay in annotations', () => {
    const weirdId = 'Team_A/agent #7';
    const pod = buildAgentPod(input({ agentId: weirdId, division: 'R&D department' }));
    expect(pod.metadata.labels['agentmanager.io/agent-id']).toBe(pod.metadata.name);
    expect(pod.metadata.labels['agentmanager.io/division']).toBeUndefined();
    expect(pod.metadata.annotations).toEqual({ 'agentmanager.io/agent-id': weirdId, 'agentmanager.io/division': 'R&D department' });
    expect(agentLabelSelector(weirdId)).toBe(`agentmanager.io/agent-id=${pod.metadata.name}`);
    expect(agentLabelSelector(AGENT_ID)).toBe(`agentmanager.io/agent-id=${AGENT_ID}`);
  });
});

describe('podNameFor', () => {
  it('uses the agentId as is when it is already a DNS-1123 label', () => {
    expect(podNameFor(AGENT_ID)).toBe(`agent-${AGENT_ID}`);
    expect(podNameFor('echo-1')).toBe('agent-echo-1');
  });

  it.each([['Agent_One'], ['agent one'], ['ÄGENT'], ['---'], ['a'.repeat(300)], ['x'.repeat(57)], ['UPPER.case.ID'], ['-leading-and-trailing-']])(
    'makes a valid, deterministic name of %p',
    (agentId) => {
      const name = podNameFor(agentId);
      expect(name.length).toBeLessThanOrEqual(63);
      expect(name).toMatch(DNS_LABEL);
      expect(name.startsWith('agent')).toBe(true);
      expect(podNameFor(agentId)).toBe(name);
    },
  );

  it('never gives two different agentIds the same name', () => {
    const ids = ['Agent-One', 'agent-one', 'AGENT-ONE', 'agent_one', 'agent one', 'a'.repeat(100), `${'a'.repeat(100)}b`];
    const names = ids.map(podNameFor);
    expect(new Set(names).size).toBe(ids.length);
  });
});

describe('cpuQuantity', () => {
  it.each([
    [2, '2'],
    [0.5, '500m'],
    [1.25, '1250m'],
    [0.001, '1m'],
    [16, '16'],
  ])('%p cores → %p', (cores, quantity) => {
    expect(cpuQuantity(cores)).toBe(quantity);
  });
});

describe('validation', () => {
  it.each<[string, Partial<AgentPodInput>, RegExp]>([
    ['an empty agentId', { agentId: '' }, /agentId/],
    ['a namespace that is not a DNS label', { namespace: 'Agents_NS' }, /namespace "Agents_NS"/],
    ['an empty image', { image: '' }, /image/],
    ['an image with whitespace', { image: 'ghcr.io/x y' }, /image/],
    ['zero CPU', { cpu: 0 }, /cpu/],
    ['less than a millicore', { cpu: 0.0001 }, /cpu/],
    ['NaN CPU', { cpu: Number.NaN }, /cpu/],
    ['fractional memory', { memoryMb: 1.5 }, /memoryMb/],
    ['zero memory', { memoryMb: 0 }, /memoryMb/],
    ['negative GPUs', { gpuCount: -1 }, /gpuCount/],
    ['fractional GPUs', { gpuCount: 0.5 }, /gpuCount/],
    ['a GPU type without GPUs', { gpuType: 'L4' }, /gpuType is set but gpuCount is 0/],
    ['a GPU type that is no label value', { gpuCount: 1, gpuType: 'A100 80GB' }, /gpuType/],
    ['an invalid env name', { secretEnv: [{ name: '1BAD', secretName: 's', key: 'k' }] }, /secretEnv\[0\]\.name "1BAD"/],
    ['a reserved env name', { secretEnv: [{ name: 'AGENT_ID', secretName: 's', key: 'k' }] }, /AGENT_ID is reserved/],
    [
      'a duplicated env name',
      {
        secretEnv: [
          { name: 'TOKEN', secretName: 's', key: 'a' },
          { name: 'TOKEN', secretName: 's', key: 'b' },
        ],
      },
      /secretEnv\[1\]\.name TOKEN is duplicated/,
    ],
    ['an invalid secret name', { secretEnv: [{ name: 'T', secretName: 'Bad_Secret', key: 'k' }] }, /secretName "Bad_Secret"/],
    ['an invalid secret key', { secretEnv: [{ name: 'T', secretName: 's', key: 'a/b' }] }, /key "a\/b"/],
    ['an invalid envFrom secret', { envFromSecrets: ['UPPER'] }, /envFromSecrets entry "UPPER"/],
    ['an invalid service account', { serviceAccountName: 'Runner!' }, /serviceAccountName/],
    ['a negative grace', { stopGraceMs: -1 }, /stopGraceMs/],
    ['a bad fence', { generation: -1 }, /generation/],
  ])('rejects %s as a permanent POD_SPEC_INVALID', (_what, overrides, message) => {
    const error = invalid(() => buildAgentPod(input(overrides)));
    expect(error.code).toBe('POD_SPEC_INVALID');
    expect(error.retryable).toBe(false);
    expect(error.message).toMatch(message);
  });

  it('reports every problem at once, and never a secret value (there are none to report)', () => {
    const error = invalid(() => buildAgentPod(input({ namespace: '', image: '', cpu: -1, memoryMb: -1, gpuCount: -1 })));
    expect(error.problems).toEqual([
      'namespace "" is not a DNS-1123 label',
      'image must be a non-empty reference without whitespace',
      'cpu must be a number of cores ≥ 0.001',
      'memoryMb must be a positive integer',
      'gpuCount must be a non-negative integer',
    ]);
  });

  it('rejects bad options and malformed input shapes without a TypeError', () => {
    expect(invalid(() => buildAgentPod(input(), { runAsUser: 0 })).message).toMatch(/runAsUser/);
    expect(invalid(() => buildAgentPod(input(), { gpuNodeSelector: { 'bad key!': 'x' } })).message).toMatch(/gpuNodeSelector/);
    expect(invalid(() => buildAgentPod(input(), { gpuProductLabel: 'no spaces allowed' })).message).toMatch(/gpuProductLabel/);
    expect(invalid(() => buildAgentPod(null as unknown as AgentPodInput)).code).toBe('POD_SPEC_INVALID');
    expect(invalid(() => buildAgentPod(input({ secretEnv: 'TOKEN=abc' as unknown as AgentPodInput['secretEnv'] }))).message).toMatch(/secretEnv must be an array/);
    expect(invalid(() => buildAgentPod(input({ secretEnv: [null as unknown as { name: string; secretName: string; key: string }] }))).message).toMatch(
      /secretEnv\[0\] must be/,
    );
    expect(invalid(() => buildAgentPod(input({ command: 'node agent.js' as unknown as string[] }))).message).toMatch(/command must be an array/);
  });
});
