import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LOCAL_STACK } from './endpoints.ts';
import { findGo, goBuildEnv } from './go.ts';
import { toolCacheDir } from './install.ts';
import { commandExists, httpOk, isAlive, portInUse, processStatus, readPid, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { permanentError } from '../../lib/errors.ts';
import { initArchiveBucket } from '../../lib/archive/bucket.ts';
import { createS3Client } from '../../lib/archive/s3.ts';

/**
 * The stack's S3: MinIO, built from source with the Go toolchain (the module proxy is reachable where
 * release downloads are not). Unlike moto (the stack's S3 before), it keeps objects, versions and
 * locks on disk across restarts and enforces Object Lock as S3 does: a locked version cannot be
 * deleted and a COMPLIANCE retention cannot be shortened. MinIO publishes no semver tags, so the
 * pin is the module proxy's pseudo-version of a release commit (what `@latest` resolved to on
 * 2026-12-01). The binary lands in `~/.cache/agent-manager/minio-<version>/minio`, outside the checkout.
 */
export const MINIO_VERSION = 'v0.0.0-20260212201848-7aac2a2c5b7c';
const MINIO_MODULE = 'github.com/minio/minio';
const BUILD_TIMEOUT_MS = 45 * 60_000;
/** MinIO finishes in-flight requests and flushes before it exits: several seconds on SIGTERM. */
const STOP_GRACE_MS = 30_000;

const { host, port, consolePort, region, accessKeyId, secretAccessKey } = LOCAL_STACK.s3;
const endpoint = `http://${host}:${port}`;

/** The stack's MinIO binary (present once `stack up` has built it), cached outside the checkout by version. */
export function stackMinioBinary(env: NodeJS.ProcessEnv = process.env): string {
  return join(toolCacheDir(env, 'minio', MINIO_VERSION), 'minio');
}


/** True when the binary runs (a `go install` build reports no release version, so only that it runs is checked). */
async function runs(binary: string): Promise<boolean> {
  if (!existsSync(binary)) return false;
  try {
    await run('minio --version', binary, ['--version'], { timeoutMs: 30_000 });
    return true;
  } catch {
    return false;
  }
}


/**
 * Builds MinIO into a private temporary folder beside the cache folder, then renames it into place:
 * a concurrent `stack up` building the same version either wins the rename or finds the other's
 * binary, never a half-written one.
 */
async function buildMinio(ctx: StackContext, installLog: string): Promise<void> {
  const bin = stackMinioBinary(ctx.env);
  const finalDir = dirname(bin);
  const go = await findGo('s3', 'MinIO', stackMinioBinary(ctx.env));
  const tempDir = join(dirname(finalDir), `.minio-${MINIO_VERSION}.build-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(tempDir, { recursive: true });
  ctx.progress(
    `s3: building MinIO ${MINIO_VERSION} from source with Go (go install ${MINIO_MODULE}@${MINIO_VERSION}); ` +
      `the first build takes about 4 minutes on 2 cores, later runs reuse ${bin}; log: ${installLog}`,
  );
  const started = Date.now();
  const ticker = setInterval(() => ctx.progress(`s3: still building MinIO (${Math.round((Date.now() - started) / 1000)} s)`), 30_000);
  ticker.unref();
  // Niced, so that the build leaves CPU to the servers starting beside it.
  const nice = await commandExists('nice');
  const goArgs = ['install', '-v', `${MINIO_MODULE}@${MINIO_VERSION}`];
  try {
    await run(`s3: go install ${MINIO_MODULE}@${MINIO_VERSION}`, nice ? 'nice' : go, nice ? ['-n', '10', go, ...goArgs] : goArgs, {
      cwd: tempDir,
      env: goBuildEnv(ctx, tempDir),
      logFile: installLog,
      timeoutMs: BUILD_TIMEOUT_MS,
    });
    if (!(await runs(join(tempDir, 'minio')))) {
      throw permanentError('STACK_STEP_FAILED', `s3: the MinIO build finished but ${join(tempDir, 'minio')} does not run; see ${installLog}`);
    }
    try {
      renameSync(tempDir, finalDir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
      // Another `stack up` renamed its build into place first: use that one. A broken leftover
      // (an interrupted copy by hand) is replaced.
      if (!(await runs(bin))) {
        rmSync(finalDir, { recursive: true, force: true });
        renameSync(tempDir, finalDir);
      }
    }
  } finally {
    clearInterval(ticker);
    rmSync(tempDir, { recursive: true, force: true });
  }
  ctx.progress(`s3: built MinIO in ${Math.round((Date.now() - started) / 1000)} s`);
}

export function s3Component(): StackComponent {
  const name = 's3';
  const files = (ctx: StackContext) => ({
    dir: join(ctx.stackDir, 's3'),
    // Objects, versions and lock settings: kept across `stack down`/`stack up`.
    data: join(ctx.stackDir, 's3', 'data'),
    pid: join(ctx.stackDir, 's3', 'pid'),
    log: join(ctx.stackDir, 'logs', 's3.log'),
    installLog: join(ctx.stackDir, 'logs', 's3-install.log'),
  });
  // Liveness alone answers while the drive is still loading; ready means it serves requests.
  const healthy = async () => (await httpOk(`${endpoint}/minio/health/live`)) && (await httpOk(`${endpoint}/minio/health/ready`));

  return {
    name,
    version: `MinIO ${MINIO_VERSION} (S3 with versioning and Object Lock, data in .stack/s3/data)`,
    address: endpoint,
    env: () => ({
      S3_ENDPOINT: endpoint,
      S3_REGION: region,
      S3_ACCESS_KEY_ID: accessKeyId,
      S3_SECRET_ACCESS_KEY: secretAccessKey,
      ARCHIVE_BUCKET: LOCAL_STACK.s3.archiveBucket,
      ARCHIVE_RETENTION_DAYS: String(LOCAL_STACK.s3.archiveRetentionDays),
    }),
    async install(ctx) {
      mkdirSync(files(ctx).dir, { recursive: true });
      if (await runs(stackMinioBinary(ctx.env))) return;
      await buildMinio(ctx, files(ctx).installLog);
    },
    async start(ctx) {
      const outcome = await startServer(ctx);
      // The archive bucket the fleet's archiver writes to (what `agent-manager s3 init` does in a
      // deployment): `run all` and the archiver work on a fresh clone without a manual step.
      const result = await initArchiveBucket(createS3Client({ S3_ENDPOINT: endpoint, S3_REGION: region, S3_ACCESS_KEY_ID: accessKeyId, S3_SECRET_ACCESS_KEY: secretAccessKey, S3_FORCE_PATH_STYLE: true, S3_REQUEST_TIMEOUT_MS: 30_000 }), {
        bucket: LOCAL_STACK.s3.archiveBucket,
        retention: { mode: 'COMPLIANCE', days: LOCAL_STACK.s3.archiveRetentionDays },
      });
      if (result.outcome !== 'unchanged') ctx.progress(`s3: archive bucket ${result.bucket} ${result.outcome} (versioning, Object Lock, COMPLIANCE ${LOCAL_STACK.s3.archiveRetentionDays} day)`);
      return outcome;
    },
    stop: (ctx) => stopProcessGroup(files(ctx).pid, 'SIGTERM', STOP_GRACE_MS),
    status(ctx) {
      return processStatus(this, files(ctx).pid, healthy);
    },
  };

  async function startServer(ctx: StackContext): Promise<'started' | 'reused'> {
    const f = files(ctx);
    if (await healthy()) return 'reused';
    // MinIO already starting (a concurrent `stack up`): wait for it rather than start a second one.
    if (await httpOk(`${endpoint}/minio/health/live`)) {
      await waitUntil(name, healthy, { timeoutMs: 60_000, logFile: f.log });
      return 'reused';
    }
    // A checkout whose stack still runs moto (the S3 server before MinIO) from this pid file.
    const pid = readPid(f.pid);
    if (pid !== undefined && isAlive(pid) && (await portInUse(host, port))) {
      ctx.progress(`s3: stopping the stack's previous S3 server (pid ${pid}) to start MinIO in its place`);
      await stopProcessGroup(f.pid, 'SIGTERM', STOP_GRACE_MS);
    }
    if (await portInUse(host, port)) {
      throw permanentError('STACK_PORT_IN_USE', `s3: port ${port} is taken by a server that is not this stack's MinIO; stop it and run \`stack up\` again`);
    }
    mkdirSync(f.data, { recursive: true });
    ctx.progress(`s3: starting MinIO on ${endpoint} (data in ${f.data})`);
    const started = spawnDetached({
      command: stackMinioBinary(ctx.env),
      args: ['server', f.data, '--address', `${host}:${port}`, '--console-address', `${host}:${consolePort}`, '--quiet'],
      cwd: f.dir,
      logFile: f.log,
      pidFile: f.pid,
      env: {
        ...ctx.env,
        // Development credentials of the local stack only (dev/): deployed services get theirs from secrets.
        MINIO_ROOT_USER: accessKeyId,
        MINIO_ROOT_PASSWORD: secretAccessKey,
        MINIO_REGION: region,
        MINIO_BROWSER: 'off',
        MINIO_UPDATE: 'off',
      },
    });
    await waitUntil(name, healthy, { timeoutMs: 60_000, logFile: f.log, pid: started });
    return 'started';
  }
}
