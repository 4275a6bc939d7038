import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_STACK } from './endpoints.ts';
import { ensureVenv } from './install.ts';
import { httpOk, processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';

// moto enforces Object Lock retention on DeleteObject of a locked version (S3Mock does not).
const MOTO_VERSION = '5.2.5';
const { host, port, region, accessKeyId, secretAccessKey } = LOCAL_STACK.s3;

export function s3Component(): StackComponent {
  const name = 's3';
  const endpoint = `http://${host}:${port}`;
  const files = (ctx: StackContext) => ({
    dir: join(ctx.stackDir, 's3'),
    server: join(ctx.stackDir, 'venv', 'bin', 'moto_server'),
    pid: join(ctx.stackDir, 's3', 'pid'),
    log: join(ctx.stackDir, 'logs', 's3.log'),
  });
  const healthy = () => httpOk(`${endpoint}/`);

  return {
    name,
    version: `moto ${MOTO_VERSION} server (S3 with versioning and Object Lock, in memory)`,
    address: endpoint,
    env: () => ({ S3_ENDPOINT: endpoint, S3_REGION: region, S3_ACCESS_KEY_ID: accessKeyId, S3_SECRET_ACCESS_KEY: secretAccessKey }),
    async install(ctx) {
      const f = files(ctx);
      const marker = join(f.dir, `.moto-${MOTO_VERSION}`);
      if (existsSync(marker) && existsSync(f.server)) return;
      await ensureVenv(ctx, name);
      ctx.progress(`s3: installing moto[server]==${MOTO_VERSION} from PyPI into .stack/venv`);
      await run('s3: pip install moto[server]', join(ctx.stackDir, 'venv', 'bin', 'pip'), ['install', '-q', `moto[server]==${MOTO_VERSION}`], {
        logFile: join(ctx.stackDir, 'logs', 'pip.log'),
      });
      mkdirSync(f.dir, { recursive: true });
      await run('s3: mark installed', 'touch', [marker]);
    },
    async start(ctx) {
      if (await healthy()) return 'reused';
      const f = files(ctx);
      mkdirSync(f.dir, { recursive: true });
      ctx.progress(`s3: starting moto on ${endpoint}`);
      const pid = spawnDetached({ command: f.server, args: ['-H', host, '-p', String(port)], cwd: f.dir, logFile: f.log, pidFile: f.pid });
      await waitUntil(name, healthy, { timeoutMs: 60_000, logFile: f.log, pid });
      return 'started';
    },
    stop: (ctx) => stopProcessGroup(files(ctx).pid, 'SIGTERM', 10_000),
    status(ctx) {
      return processStatus(this, files(ctx).pid, healthy);
    },
  };
}
