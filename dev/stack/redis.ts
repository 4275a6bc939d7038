import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { LOCAL_STACK } from './endpoints.ts';
import { aptInstall } from './install.ts';
import { commandExists, processStatus, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent, StackContext } from './types.ts';
import { permanentError } from '../../lib/errors.ts';

const { host, port } = LOCAL_STACK.redis;

async function pingRedis(url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 2000, enableOfflineQueue: false });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

export function redisComponent(): StackComponent {
  const name = 'redis';
  const address = `${host}:${port}`;
  const localUrl = `redis://${address}`;
  const files = (ctx: StackContext) => ({ dir: join(ctx.stackDir, 'redis'), pid: join(ctx.stackDir, 'redis', 'pid'), log: join(ctx.stackDir, 'logs', 'redis.log') });
  const external = (ctx: StackContext) => ctx.env.REDIS_URL;
  const redisVersion = () => {
    try {
      return `Redis ${/v=(\S+)/.exec(execFileSync('redis-server', ['--version'], { encoding: 'utf8' }))?.[1] ?? '?'}`;
    } catch {
      return 'Redis (not installed)';
    }
  };

  return {
    name,
    get version() {
      return redisVersion();
    },
    address,
    env: () => ({ REDIS_URL: localUrl }),
    async install(ctx) {
      if (external(ctx) || (await commandExists('redis-server'))) return;
      await aptInstall(ctx, name, ['redis-server']);
    },
    async start(ctx) {
      const configured = external(ctx);
      if (configured) {
        if (await pingRedis(configured)) return 'external';
        throw permanentError('STACK_EXTERNAL_UNREACHABLE', `redis: REDIS_URL is set but that server does not answer; unset it to use the stack's own`);
      }
      if (await pingRedis(localUrl)) return 'reused';
      const f = files(ctx);
      mkdirSync(f.dir, { recursive: true });
      ctx.progress(`redis: starting on ${address}`);
      const pid = spawnDetached({
        command: 'redis-server',
        // BullMQ needs noeviction: an evicted job key would lose a delayed job silently.
        args: ['--bind', host, '--port', String(port), '--dir', f.dir, '--appendonly', 'yes', '--maxmemory-policy', 'noeviction', '--daemonize', 'no'],
        cwd: f.dir,
        logFile: f.log,
        pidFile: f.pid,
      });
      await waitUntil(name, () => pingRedis(localUrl), { timeoutMs: 30_000, logFile: f.log, pid });
      return 'started';
    },
    stop: (ctx) => stopProcessGroup(files(ctx).pid, 'SIGTERM', 15_000),
    status(ctx) {
      const configured = external(ctx);
      return processStatus({ name, version: redisVersion(), address: configured ? 'REDIS_URL' : address }, files(ctx).pid, () => pingRedis(configured ?? localUrl));
    },
  };
}
