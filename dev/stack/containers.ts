import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join } from 'node:path';
import { aptInstall, toolCacheDir } from './install.ts';
import { commandExists, processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';

/**
 * `containers` (optional: `stack up --with containers`): a container engine for the image and its
 * test. podman from Debian's packages, with runc (crun fails on these machines: RLIMIT_NOFILE and
 * cgroups in hybrid mode) and cgroupfs, serving the Docker-compatible API on `.stack/podman.sock`
 * for testcontainers. No image registry is reachable, so the base image (`BASE_IMAGE`) is Debian
 * bookworm made by debootstrap and imported under a local name.
 */

export const BASE_SUITE = 'bookworm';
/** The Dockerfile's default BASE_IMAGE: the newest base this stack made. */
export const BASE_IMAGE = `localhost/agent-manager-base:${BASE_SUITE}`;
const DEBIAN_MIRROR = 'http://deb.debian.org/debian';

export interface ContainersFiles {
  readonly dir: string;
  /** CONTAINERS_CONF for every podman command of the stack. */
  readonly conf: string;
  readonly socket: string;
  readonly pid: string;
  readonly log: string;
}

export function containersFiles(stackDir: string): ContainersFiles {
  const dir = join(stackDir, 'containers');
  return { dir, conf: join(dir, 'containers.conf'), socket: join(stackDir, 'podman.sock'), pid: join(dir, 'pid'), log: join(stackDir, 'logs', 'podman.log') };
}

// No default ulimits: runc refuses podman's RLIMIT_NOFILE above the sandbox's hard limit. cgroupfs:
// no systemd runs here.
const CONTAINERS_CONF = `# Written by agent-manager stack up --with containers (dev/stack/containers.ts).
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
`;

/** The environment of a podman command: the stack's containers.conf. */
export function podmanEnv(ctx: StackContext): NodeJS.ProcessEnv {
  return { ...ctx.env, CONTAINERS_CONF: containersFiles(ctx.stackDir).conf };
}

function writeContainersConf(ctx: StackContext): void {
  const { dir, conf } = containersFiles(ctx.stackDir);
  mkdirSync(dir, { recursive: true });
  writeFileSync(conf, CONTAINERS_CONF);
}

/** True when the Docker-compatible API answers on the socket (`GET /_ping` is `OK`). */
export function podmanPing(socketPath: string, timeoutMs = 2000): Promise<boolean> {
  if (!existsSync(socketPath)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const req = request({ socketPath, path: '/_ping', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(res.statusCode === 200 && body.trim() === 'OK'));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

async function imageExists(ctx: StackContext, image: string): Promise<boolean> {
  try {
    await run(`podman image exists ${image}`, 'podman', ['image', 'exists', image], { env: podmanEnv(ctx), timeoutMs: 60_000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes the base image's root filesystem as a tar: a minimal Debian (debootstrap's minbase), its
 * packages upgraded from bookworm-updates and the security archive, apt's caches and the host's
 * resolv.conf and hostname left out. Cached outside the checkout, one per suite and month, so a
 * fresh clone reuses it and a new month brings the month's security updates.
 */
async function buildBaseTar(ctx: StackContext, tar: string): Promise<void> {
  const logFile = join(ctx.stackDir, 'logs', 'base-image.log');
  if (!(await commandExists('debootstrap'))) await aptInstall(ctx, 'containers', ['debootstrap']);
  const rootfs = `${tar}.rootfs`;
  rmSync(rootfs, { recursive: true, force: true });
  ctx.progress(`containers: making the ${BASE_SUITE} base image with debootstrap (a few minutes, once a month)`);
  await run('containers: debootstrap', 'debootstrap', ['--variant=minbase', BASE_SUITE, rootfs, DEBIAN_MIRROR], { logFile, timeoutMs: 20 * 60_000 });
  writeFileSync(
    join(rootfs, 'etc', 'apt', 'sources.list'),
    [`deb ${DEBIAN_MIRROR} ${BASE_SUITE} main`, `deb ${DEBIAN_MIRROR} ${BASE_SUITE}-updates main`, `deb ${DEBIAN_MIRROR}-security ${BASE_SUITE}-security main`, ''].join('\n'),
  );
  await run('containers: upgrade the base image', 'chroot', [rootfs, 'sh', '-c', 'apt-get update -qq && apt-get upgrade -y -qq && apt-get clean && rm -rf /var/lib/apt/lists/*'], {
    env: { ...ctx.env, DEBIAN_FRONTEND: 'noninteractive' },
    logFile,
    timeoutMs: 20 * 60_000,
  });
  // The container engine provides these at run time; the host's must not be baked in.
  for (const file of ['etc/resolv.conf', 'etc/hostname']) rmSync(join(rootfs, file), { force: true });
  await run('containers: tar the base image', 'tar', ['--numeric-owner', '-C', rootfs, '-cf', `${tar}.tmp`, '.'], { logFile });
  renameSync(`${tar}.tmp`, tar);
  rmSync(rootfs, { recursive: true, force: true });
}

/** Imports the base image into podman (from the cached tar, made if missing) unless it is there. */
export async function ensureBaseImage(ctx: StackContext, now = new Date()): Promise<string> {
  const month = now.toISOString().slice(0, 7);
  const dated = `${BASE_IMAGE}-${month}`;
  if (await imageExists(ctx, dated)) {
    if (!(await imageExists(ctx, BASE_IMAGE))) await run('containers: podman tag', 'podman', ['tag', dated, BASE_IMAGE], { env: podmanEnv(ctx) });
    return dated;
  }
  const cacheDir = toolCacheDir(ctx.env, 'base', `${BASE_SUITE}-${month}`);
  const tar = join(cacheDir, 'rootfs.tar');
  if (!existsSync(tar)) {
    mkdirSync(cacheDir, { recursive: true });
    await buildBaseTar(ctx, tar);
    // Earlier months' bases are superseded.
    const parent = dirname(cacheDir);
    for (const old of readdirSync(parent)) if (old.startsWith(`base-${BASE_SUITE}-`) && join(parent, old) !== cacheDir) rmSync(join(parent, old), { recursive: true, force: true });
  }
  ctx.progress(`containers: importing ${tar} as ${dated}`);
  await run('containers: podman import', 'podman', ['import', '--quiet', '--change', 'CMD ["/bin/bash"]', tar, dated], { env: podmanEnv(ctx), logFile: join(ctx.stackDir, 'logs', 'base-image.log') });
  await run('containers: podman tag', 'podman', ['tag', dated, BASE_IMAGE], { env: podmanEnv(ctx) });
  return dated;
}

function podmanVersion(): string {
  try {
    return `podman ${/version (\S+)/.exec(execFileSync('podman', ['--version'], { encoding: 'utf8' }))?.[1] ?? '?'} (runc)`;
  } catch {
    return 'podman (not installed)';
  }
}

export function containersComponent(): StackComponent {
  const name = 'containers';
  return {
    name,
    get version() {
      return podmanVersion();
    },
    address: '.stack/podman.sock',
    env(ctx) {
      const files = containersFiles(ctx.stackDir);
      // Ryuk (testcontainers' reaper) does not run under podman here; each test removes its containers.
      return { DOCKER_HOST: `unix://${files.socket}`, TESTCONTAINERS_RYUK_DISABLED: 'true', CONTAINERS_CONF: files.conf };
    },
    async install(ctx) {
      const missing: string[] = [];
      if (!(await commandExists('podman'))) missing.push('podman');
      if (!(await commandExists('runc'))) missing.push('runc');
      if (missing.length > 0) await aptInstall(ctx, name, missing);
      writeContainersConf(ctx);
      await ensureBaseImage(ctx);
    },
    async start(ctx) {
      const files = containersFiles(ctx.stackDir);
      if (await podmanPing(files.socket)) return 'reused';
      rmSync(files.socket, { force: true });
      ctx.progress(`${name}: starting podman's API service on ${files.socket}`);
      const pid = spawnDetached({
        command: 'podman',
        args: ['--runtime', 'runc', 'system', 'service', '--time=0', `unix://${files.socket}`],
        cwd: files.dir,
        env: podmanEnv(ctx),
        logFile: files.log,
        pidFile: files.pid,
      });
      await waitUntil(name, () => podmanPing(files.socket), { timeoutMs: 30_000, logFile: files.log, pid });
      return 'started';
    },
    async stop(ctx) {
      const files = containersFiles(ctx.stackDir);
      const stopped = await stopProcessGroup(files.pid, 'SIGTERM', 10_000);
      if (stopped) rmSync(files.socket, { force: true });
      return stopped;
    },
    status(ctx) {
      const files = containersFiles(ctx.stackDir);
      return processStatus({ name, version: podmanVersion(), address: '.stack/podman.sock' }, files.pid, () => podmanPing(files.socket));
    },
  };
}
