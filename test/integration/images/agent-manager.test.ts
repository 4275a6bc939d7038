/**
 * The image (images/agent-manager/Dockerfile), built with the stack's podman (`npm run image`) and
 * run with testcontainers through podman's Docker-compatible socket (`stack up --with containers`):
 * `run ingest` as User:ingest against the local stack (host network; the Kafka client certificate
 * mounted read-only, as the chart mounts secrets), on a read-only root filesystem as the image's
 * non-root user; /livez and /readyz answer; SIGTERM drains it and it exits 0 well within the grace.
 *
 * Where no container engine is present (no podman, or its API socket is not there) the suite says
 * so and is skipped; the test command starts one.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka } from 'kafkajs';
import pg from 'pg';
import { GenericContainer, getContainerRuntimeClient, Wait, type StartedTestContainer } from 'testcontainers';
import { eventually } from '../../support/runtime.ts';
import { createFleetWorld, type FleetWorld } from '../../support/fleet.ts';
import { testKafkaConfig, uniqueName } from '../../support/stack.ts';

jest.setTimeout(180_000);

const ROOT = join(__dirname, '..', '..', '..');
const SOCKET = join(ROOT, '.stack', 'podman.sock');
const IMAGE = 'localhost/agent-manager:test';
const SECRETS = '/run/secrets/kafka';
/** The image's user (images/agent-manager/Dockerfile). */
const IMAGE_UID = 65532;
const SHUTDOWN_GRACE_MS = 15_000;
/** `stack env` variables for tools on the host (podman, kubectl), not for a service. */
const HOST_ONLY = ['DOCKER_HOST', 'TESTCONTAINERS_RYUK_DISABLED', 'CONTAINERS_CONF', 'KUBECONFIG'];
/** What Kubernetes gives a Pod by default (the chart's terminationGracePeriodSeconds is above the drain). */
const STOP_TIMEOUT_MS = 30_000;

function missingEngine(): string | undefined {
  if (spawnSync('podman', ['--version']).status !== 0) return 'podman is not installed';
  if (!existsSync(SOCKET)) return `podman's API socket ${SOCKET} is not there`;
  return undefined;
}

const missing = missingEngine();
if (missing) console.log(`image test skipped: no container engine (${missing}); \`npx agent-manager stack up --with containers\` provides one`);
// testcontainers talks to the stack's podman (where the image is built), whatever DOCKER_HOST says.
process.env.DOCKER_HOST = `unix://${SOCKET}`;
process.env.TESTCONTAINERS_RYUK_DISABLED = 'true';

/** A container whose root filesystem is read-only, as the chart runs it (testcontainers has no option for it). */
class ReadOnlyContainer extends GenericContainer {
  constructor(image: string) {
    super(image);
    this.hostConfig.ReadonlyRootfs = true;
  }
}

/** `agent-manager stack env --as ingest`, as an operator would read it. */
function stackEnvAs(principal: string): Record<string, string> {
  const out = execFileSync(process.execPath, [join(ROOT, 'bin', 'agent-manager.js'), 'stack', 'env', '--as', principal], { cwd: ROOT, encoding: 'utf8' });
  const env: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const match = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line);
    if (match?.[1] !== undefined && match[2] !== undefined) env[match[1]] = match[2];
  }
  return env;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

async function exitCodeOf(containerId: string): Promise<number> {
  const client = await getContainerRuntimeClient();
  const info = await client.container.inspect(client.container.getById(containerId));
  return info.State.ExitCode;
}

async function removeContainer(containerId: string): Promise<void> {
  const client = await getContainerRuntimeClient();
  await client.container.remove(client.container.getById(containerId), { removeVolumes: true }).catch(() => undefined);
}

(missing ? describe.skip : describe)('the agent-manager image under podman', () => {
  let world: FleetWorld;
  let secretsDir: string;
  let env: Record<string, string>;
  let httpPort: number;

  beforeAll(async () => {
    // Cached layers: seconds after a source change; a few minutes on a machine that never built it.
    const build = spawnSync(process.execPath, [join(ROOT, 'images', 'agent-manager', 'build.ts'), IMAGE], { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (build.status !== 0) throw new Error(`npm run image failed (${build.status}):\n${`${build.stdout}${build.stderr}`.slice(-4000)}`);

    world = await createFleetWorld('image');
    // The ingest principal's files (root's, mode 0600 in .stack/pki), copied for the container's user
    // (owned by it where this test may chown, as root on the project machines) and mounted read-only.
    const stack = stackEnvAs('ingest');
    secretsDir = mkdtempSync(join(tmpdir(), 'image-kafka-'));
    const files = { KAFKA_SSL_CA_FILE: 'ca.crt', KAFKA_SSL_CERT_FILE: 'tls.crt', KAFKA_SSL_KEY_FILE: 'tls.key' } as const;
    const owned = process.getuid?.() === 0;
    for (const [name, file] of Object.entries(files)) copyFileSync(stack[name] ?? '', join(secretsDir, file));
    for (const path of [secretsDir, ...Object.values(files).map((file) => join(secretsDir, file))]) {
      if (owned) chownSync(path, IMAGE_UID, IMAGE_UID);
      chmodSync(path, path === secretsDir ? (owned ? 0o500 : 0o755) : owned ? 0o400 : 0o444);
    }
    httpPort = await freePort();
    env = {
      // The stack's addresses; no other files than the three mounted (the agents' and the Kernel's are not ingest's).
      ...Object.fromEntries(Object.entries(stack).filter(([name]) => !name.endsWith('_FILE') && !HOST_ONLY.includes(name))),
      ...Object.fromEntries(Object.entries(files).map(([name, file]) => [name, `${SECRETS}/${file}`])),
      TOPIC_PREFIX: world.env.TOPIC_PREFIX ?? '',
      DATABASE_SCHEMA: world.schema,
      HTTP_PORT: String(httpPort),
      HTTP_HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS),
    };
  }, 15 * 60_000);

  afterAll(async () => {
    if (secretsDir) rmSync(secretsDir, { recursive: true, force: true });
    if (!world) return;
    const admin = new Kafka(testKafkaConfig('image-teardown')).admin();
    try {
      await admin.connect();
      const prefix = world.env.TOPIC_PREFIX ?? '';
      const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(prefix));
      if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
    } finally {
      await admin.disconnect().catch(() => undefined);
      await world.teardown();
    }
  });

  test('run ingest: read-only root, user 65532, /livez and /readyz, SIGTERM drains and exits 0 within the grace', async () => {
    let logs = '';
    let container: StartedTestContainer | undefined;
    try {
      container = await new ReadOnlyContainer(IMAGE)
        .withNetworkMode('host')
        .withEnvironment(env)
        .withBindMounts([{ source: secretsDir, target: SECRETS, mode: 'ro' }])
        .withDroppedCapabilities('ALL')
        .withSecurityOpt('no-new-privileges')
        .withCommand(['run', 'ingest'])
        .withLogConsumer((stream) => stream.on('data', (chunk: Buffer | string) => (logs += chunk.toString())))
        .withWaitStrategy(Wait.forLogMessage(/running; SIGTERM or Ctrl-C to stop/))
        .withStartupTimeout(90_000)
        .start();
      const id = container.getId();

      const live = await fetch(`http://127.0.0.1:${httpPort}/livez`);
      expect(live.status).toBe(200);
      await eventually(async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`)).status === 200, 60_000, '/readyz 200');

      // The image's user, a read-only root, and tini as PID 1. (podman adds tmpfs on /tmp, /var/tmp
      // and /run to a read-only container; the service writes to none of them.)
      expect((await container.exec(['id', '-u'])).output.trim()).toBe(String(IMAGE_UID));
      const rootMount = (await container.exec(['cat', '/proc/mounts'])).output.split('\n').map((line) => line.split(' ')).find((fields) => fields[1] === '/');
      expect(rootMount?.[3]?.split(',')).toContain('ro');
      expect((await container.exec(['cat', '/proc/1/cmdline'])).output.split('\0')[0]).toBe('/usr/bin/tini');
      const client = await getContainerRuntimeClient();
      const info = await client.container.inspect(client.container.getById(id));
      expect(info.HostConfig.ReadonlyRootfs).toBe(true);
      expect(info.Config.User).toBe(`${IMAGE_UID}:${IMAGE_UID}`);

      // `podman stop` sends the image's STOPSIGNAL (SIGTERM) and SIGKILLs after the timeout: exit 137.
      const stopping = Date.now();
      await container.stop({ timeout: STOP_TIMEOUT_MS, remove: false });
      const stoppedInMs = Date.now() - stopping;
      container = undefined;
      expect(await exitCodeOf(id)).toBe(0);
      expect(stoppedInMs).toBeLessThan(SHUTDOWN_GRACE_MS);
      expect(logs).toMatch(/"signal":"SIGTERM".*"msg":"draining"/);
      await removeContainer(id);
    } catch (error) {
      console.log(`container output:\n${logs.slice(-6000)}`);
      throw error;
    } finally {
      await container?.stop({ timeout: 1_000 }).catch(() => undefined);
    }
  });

  test("migrate (the chart's hook Job): applies the image's migrations into a new schema as user 65532, exits 0", async () => {
    const schema = uniqueName('image_migrate').replace(/[^a-z0-9_]/g, '_');
    let logs = '';
    try {
      const container = await new ReadOnlyContainer(IMAGE)
        .withNetworkMode('host')
        .withEnvironment({ ...env, DATABASE_SCHEMA: schema })
        .withBindMounts([{ source: secretsDir, target: SECRETS, mode: 'ro' }])
        .withDroppedCapabilities('ALL')
        .withCommand(['migrate'])
        .withLogConsumer((stream) => stream.on('data', (chunk: Buffer | string) => (logs += chunk.toString())))
        .withWaitStrategy(Wait.forOneShotStartup())
        .withStartupTimeout(90_000)
        .start();
      const id = container.getId();
      expect(await exitCodeOf(id)).toBe(0);
      expect(logs).toMatch(/migrate: applied \S/);
      await removeContainer(id);
    } finally {
      const db = new pg.Client({ connectionString: env.DATABASE_URL });
      await db.connect();
      await db.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
      await db.end();
    }
  });

  test('PID 1 is tini: SIGTERM ends even a process that installs no handler (node as PID 1 would ignore it)', async () => {
    const container = await new ReadOnlyContainer(IMAGE)
      .withNetworkMode('host')
      .withEntrypoint(['/usr/bin/tini', '--', 'node', '-e', "console.log('up'); setInterval(() => {}, 1000)"])
      .withWaitStrategy(Wait.forLogMessage('up'))
      .start();
    const id = container.getId();
    const stopping = Date.now();
    await container.stop({ timeout: STOP_TIMEOUT_MS, remove: false });
    expect(Date.now() - stopping).toBeLessThan(5_000);
    // 128 + SIGTERM: killed by the signal tini forwarded, not by the SIGKILL after the timeout (137).
    expect(await exitCodeOf(id)).toBe(143);
    await removeContainer(id);
  });
});
