// Builds the Agent Manager image with the local stack's podman: `node images/agent-manager/build.ts
// [tag]` (default localhost/agent-manager:dev). Makes the Debian base image first if it is missing
// (dev/stack/containers.ts), passes the Node version the project pins, and hands npm the host's CA
// bundle as a build secret (the registry is reached through a TLS-intercepting proxy here).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BASE_IMAGE, containersComponent, containersFiles, podmanEnv } from '../../dev/stack/containers.ts';
import { stackContext } from '../../dev/stack/index.ts';
import { errorMessage, permanentError } from '../../lib/errors.ts';

const DEFAULT_TAG = 'localhost/agent-manager:dev';
const ROOT = join(import.meta.dirname, '..', '..');

/** The Node version package-lock.json pins through the `node` devDependency. */
function pinnedNodeVersion(root: string): string {
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages?: Record<string, { version?: string }> };
  const version = lock.packages?.['node_modules/node']?.version;
  if (!version) throw permanentError('IMAGE_BUILD_FAILED', 'package-lock.json pins no `node` package: run npm install');
  return version;
}

/** The CAs npm trusts on this machine: the system bundle plus NODE_EXTRA_CA_CERTS, in one file. */
function npmCaBundle(stackDir: string, env: NodeJS.ProcessEnv): string {
  const parts = ['/etc/ssl/certs/ca-certificates.crt', env.NODE_EXTRA_CA_CERTS].flatMap((file) => (file && existsSync(file) ? [file] : []));
  const bundle = join(containersFiles(stackDir).dir, 'npm-ca.pem');
  writeFileSync(bundle, parts.map((file) => readFileSync(file, 'utf8')).join('\n'));
  return bundle;
}

/** Builds the image (podman's layer cache makes a rebuild after a source change take seconds). */
async function buildImage(root: string, tag: string): Promise<void> {
  const log = (line: string) => console.log(`[image] ${line}`);
  const ctx = stackContext(root, log);
  // podman, runc, containers.conf and the base image (the API service is not needed to build).
  await containersComponent().install(ctx);
  const started = Date.now();
  const args = [
    'build',
    '--network=host',
    '--secret',
    `id=npm-ca,src=${npmCaBundle(ctx.stackDir, ctx.env)}`,
    '--build-arg',
    `BASE_IMAGE=${BASE_IMAGE}`,
    '--build-arg',
    `NODE_VERSION=${pinnedNodeVersion(root)}`,
    '--file',
    join(root, 'images', 'agent-manager', 'Dockerfile'),
    '--tag',
    tag,
    root,
  ];
  log(`podman ${args.join(' ')}`);
  const code = await new Promise<number | null>((resolve, reject) => {
    const child = spawn('podman', args, { cwd: root, env: podmanEnv(ctx), stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', reject);
    child.on('exit', resolve);
  });
  if (code !== 0) throw permanentError('IMAGE_BUILD_FAILED', `podman build exited with ${code}; see the output above`);
  log(`built ${tag} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

await buildImage(ROOT, process.argv[2] ?? DEFAULT_TAG).catch((error: unknown) => {
  console.error(`build: ${errorMessage(error)}`);
  process.exitCode = 1;
});
