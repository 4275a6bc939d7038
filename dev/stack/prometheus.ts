import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { toolCacheDir } from './install.ts';
import { commandExists, processStatus, run, spawnDetached, stopProcessGroup, waitUntil } from './process.ts';
import type { StackComponent } from './types.ts';
import { permanentError } from '../../lib/errors.ts';

/**
 * `prometheus` (optional: `stack up --with prometheus`): a Prometheus server for the canary analysis
 * (`agent-manager release canary-check`) and its tests. The binary is Debian's (bookworm ships
 * 2.42), unpacked from the package (`apt-get download` + `dpkg-deb -x`) into the user's cache rather
 * than installed: the package's postinst would start a system service on port 9090 and add a user.
 * It scrapes what the files in `.stack/prometheus/targets/*.json` list (file_sd: tests add a fleet's
 * ops listeners with `writeScrapeTargets`) every 2 s, keeps a day, and listens on loopback only.
 */
export const PROMETHEUS_VERSION = '2.42.0';
export const LOCAL_PROMETHEUS = {
  host: '127.0.0.1',
  port: 19090,
  /** The one scrape job; its targets come from the file_sd folder. */
  job: 'agent-manager',
  scrapeIntervalSeconds: 2,
} as const;

const address = `http://${LOCAL_PROMETHEUS.host}:${LOCAL_PROMETHEUS.port}`;

/** The stack's Prometheus URL (`PROMETHEUS_URL` in `stack env`). */
export const stackPrometheusUrl = (): string => address;

export interface PrometheusFiles {
  readonly dir: string;
  readonly config: string;
  /** file_sd folder: every `*.json` file in it is a list of target groups. */
  readonly targets: string;
  readonly data: string;
  readonly pid: string;
  readonly log: string;
}

export function prometheusFiles(stackDir: string): PrometheusFiles {
  const dir = join(stackDir, 'prometheus');
  return {
    dir,
    config: join(dir, 'prometheus.yml'),
    targets: join(dir, 'targets'),
    data: join(dir, 'data'),
    pid: join(dir, 'pid'),
    log: join(stackDir, 'logs', 'prometheus.log'),
  };
}

/** The configuration the stack writes (JSON is YAML): one job over the file_sd folder. */
export function prometheusConfig(files: PrometheusFiles): string {
  const interval = `${LOCAL_PROMETHEUS.scrapeIntervalSeconds}s`;
  const config = {
    global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
    scrape_configs: [
      {
        job_name: LOCAL_PROMETHEUS.job,
        metrics_path: '/metrics',
        // Files are also watched; the refresh catches a change a watcher missed.
        file_sd_configs: [{ files: [join(files.targets, '*.json')], refresh_interval: '5s' }],
      },
    ],
  };
  return `# Written by agent-manager stack up --with prometheus (dev/stack/prometheus.ts); rewritten on every start.\n${JSON.stringify(config, null, 2)}\n`;
}

export interface ScrapeTargetGroup {
  /** `host:port` of ops listeners (their /metrics). */
  readonly targets: readonly string[];
  /** Labels added to every series of these targets (e.g. `track: canary`). */
  readonly labels?: Readonly<Record<string, string>>;
}

/**
 * Adds scrape targets to the stack's Prometheus: writes `<targets>/<name>.json` (atomically, so
 * Prometheus never reads half a file). Returns a function that removes them again.
 */
export function writeScrapeTargets(stackDir: string, name: string, groups: readonly ScrapeTargetGroup[]): () => void {
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw permanentError('USAGE', `scrape target file name "${name}": expected letters, digits, ".", "_" or "-"`);
  const { targets } = prometheusFiles(stackDir);
  mkdirSync(targets, { recursive: true });
  const file = join(targets, `${name}.json`);
  // Not matching *.json until complete.
  const partial = `${file}.partial`;
  writeFileSync(partial, JSON.stringify(groups.map((g) => ({ targets: g.targets, labels: g.labels ?? {} }))));
  renameSync(partial, file);
  return () => rmSync(file, { force: true });
}

/** The binary in the user's cache, outside the checkout (a fresh clone reuses it). */
export function stackPrometheusBinary(env: NodeJS.ProcessEnv = process.env): string {
  return join(toolCacheDir(env, 'prometheus', PROMETHEUS_VERSION), 'prometheus');
}

/** The version a prometheus binary reports (`prometheus, version 2.42.0+ds …`), or undefined. */
async function binaryVersion(binary: string): Promise<string | undefined> {
  if (!existsSync(binary)) return undefined;
  try {
    const { stdout, stderr } = await run('prometheus --version', binary, ['--version'], { timeoutMs: 30_000 });
    return /version (\d+\.\d+\.\d+)/.exec(stdout + stderr)?.[1] ?? 'unknown';
  } catch {
    return undefined;
  }
}

/** Ready, and running the stack's configuration (another Prometheus on the port is not reused). */
async function ours(files: PrometheusFiles): Promise<boolean> {
  try {
    const ready = await fetch(`${address}/-/ready`, { signal: AbortSignal.timeout(2_000) });
    if (!ready.ok) return false;
    const status = await fetch(`${address}/api/v1/status/config`, { signal: AbortSignal.timeout(2_000) });
    if (!status.ok) return false;
    const body = (await status.json()) as { data?: { yaml?: unknown } };
    return typeof body.data?.yaml === 'string' && body.data.yaml.includes(files.targets);
  } catch {
    return false;
  }
}

async function readyOnly(): Promise<boolean> {
  try {
    return (await fetch(`${address}/-/ready`, { signal: AbortSignal.timeout(2_000) })).ok;
  } catch {
    return false;
  }
}

export function prometheusComponent(): StackComponent {
  const name = 'prometheus';
  return {
    name,
    version: `Prometheus ${PROMETHEUS_VERSION} (Debian's binary; file_sd .stack/prometheus/targets/*.json, scrape every ${LOCAL_PROMETHEUS.scrapeIntervalSeconds} s)`,
    address,
    env: () => ({ PROMETHEUS_URL: address }),
    async install(ctx) {
      const binary = stackPrometheusBinary(ctx.env);
      const installed = await binaryVersion(binary);
      if (installed === PROMETHEUS_VERSION) return;
      if (!(await commandExists('apt-get')) || !(await commandExists('dpkg-deb'))) {
        throw permanentError('STACK_NEEDS_PACKAGES', `prometheus: needs apt-get and dpkg-deb (Debian) to fetch Debian's prometheus package, or a prometheus ${PROMETHEUS_VERSION} binary at ${binary}`);
      }
      const cache = join(binary, '..');
      const staging = `${cache}.partial-${process.pid}`;
      rmSync(staging, { recursive: true, force: true });
      mkdirSync(staging, { recursive: true });
      const logFile = join(ctx.stackDir, 'logs', 'prometheus-install.log');
      ctx.progress(`prometheus: fetching Debian's prometheus package (~20 MB) and unpacking its binary into ${cache}`);
      try {
        const download = () => run('prometheus: apt-get download prometheus', 'apt-get', ['download', '-qq', 'prometheus'], { cwd: staging, logFile, timeoutMs: 10 * 60_000 });
        await download().catch(async () => {
          // A machine whose package lists were never fetched knows no candidate yet.
          await run('prometheus: apt-get update', 'apt-get', ['update', '-qq'], { logFile, env: { ...ctx.env, DEBIAN_FRONTEND: 'noninteractive' } });
          await download();
        });
        const deb = readdirSync(staging).find((file) => file.endsWith('.deb'));
        if (deb === undefined) throw permanentError('STACK_STEP_FAILED', `prometheus: apt-get download left no .deb in ${staging}; see ${logFile}`);
        await run('prometheus: dpkg-deb -x', 'dpkg-deb', ['-x', join(staging, deb), join(staging, 'root')], { logFile });
        const unpacked = join(staging, 'root', 'usr', 'bin', 'prometheus');
        const version = await binaryVersion(unpacked);
        if (version !== PROMETHEUS_VERSION) {
          throw permanentError('STACK_STEP_FAILED', `prometheus: Debian's package (${deb}) has version ${version ?? 'unknown'}, not ${PROMETHEUS_VERSION}; update PROMETHEUS_VERSION in dev/stack/prometheus.ts`);
        }
        // Into place in one step, so an interrupted install is never mistaken for a finished one.
        mkdirSync(join(staging, 'bin'), { recursive: true });
        renameSync(unpacked, join(staging, 'bin', 'prometheus'));
        mkdirSync(join(cache, '..'), { recursive: true });
        rmSync(cache, { recursive: true, force: true });
        renameSync(join(staging, 'bin'), cache);
      } finally {
        rmSync(staging, { recursive: true, force: true });
      }
    },
    async start(ctx) {
      const f = prometheusFiles(ctx.stackDir);
      mkdirSync(f.targets, { recursive: true });
      mkdirSync(f.data, { recursive: true });
      const config = prometheusConfig(f);
      const current = existsSync(f.config) ? readFileSync(f.config, 'utf8') : '';
      if (current !== config) writeFileSync(f.config, config);
      if (await ours(f)) {
        // A running server read the previous configuration: have it read the new one.
        if (current !== config) {
          const reload = await fetch(`${address}/-/reload`, { method: 'POST', signal: AbortSignal.timeout(10_000) });
          if (!reload.ok) throw permanentError('STACK_STEP_FAILED', `prometheus: reloading ${f.config} failed (${reload.status}: ${(await reload.text()).trim()}); see ${f.log}`);
        }
        return 'reused';
      }
      if (await readyOnly()) {
        throw permanentError('STACK_PORT_TAKEN', `prometheus: another Prometheus (not the stack's configuration) answers on ${address}; stop it or free port ${LOCAL_PROMETHEUS.port}`);
      }
      ctx.progress(`prometheus: starting on ${address} (targets: ${f.targets}/*.json)`);
      const pid = spawnDetached({
        command: stackPrometheusBinary(ctx.env),
        args: [
          `--config.file=${f.config}`,
          `--web.listen-address=${LOCAL_PROMETHEUS.host}:${LOCAL_PROMETHEUS.port}`,
          `--storage.tsdb.path=${f.data}`,
          '--storage.tsdb.retention.time=1d',
          // POST /-/reload after a configuration change (loopback only).
          '--web.enable-lifecycle',
          '--log.level=warn',
        ],
        cwd: f.dir,
        logFile: f.log,
        pidFile: f.pid,
      });
      await waitUntil(name, () => ours(f), { timeoutMs: 60_000, logFile: f.log, pid });
      return 'started';
    },
    stop: (ctx) => stopProcessGroup(prometheusFiles(ctx.stackDir).pid, 'SIGTERM', 15_000),
    status(ctx) {
      return processStatus(this, prometheusFiles(ctx.stackDir).pid, () => ours(prometheusFiles(ctx.stackDir)));
    },
  };
}
