import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Kafka } from 'kafkajs';
import { startServices } from '../../../cli/services.ts';
import { instantiateRequest } from '../../../dev/kernel/client.ts';
import { stackPrometheusUrl, writeScrapeTargets } from '../../../dev/stack/prometheus.ts';
import type { CanaryReport } from '../../../dev/release/canary-check.ts';
import { runCanaryCheck, type CanaryCheckOptions } from '../../../dev/release/canary-command.ts';
import type { ServiceContext } from '../../../lib/service/context.ts';
import { connectKernel, createFleetWorld, within, type FleetWorld, type KernelClient } from '../../support/fleet.ts';
import { testKafkaConfig, uniqueName } from '../../support/stack.ts';

// `release canary-check` against the stack's real Prometheus (`stack up --with prometheus`) scraping
// three real fleets (ingest + provisioner, the simulated driver) on their ops listeners: a good one
// whose agents reach RUNNING (`track="stable"`), a failing one whose driver never reports a start
// (`track="canary"`: every start times out and ends FAILED), and one with the heartbeat service whose
// agents never heartbeat (the simulated driver's do not: `track="silent"`, every agent lapses).
// All get requests all along, so any 30 s window has traffic; the checks poll until Prometheus has enough samples to judge (exit 2
// until then) and assert on the first verdict that is not "cannot judge", never on timing.
jest.setTimeout(300_000);

const WINDOW = '30s';
const prometheus = process.env.PROMETHEUS_URL ?? stackPrometheusUrl();

/** A free loopback port for a fleet's ops listener (its /metrics is what Prometheus scrapes). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** `agent-manager <args>` as a child process: its exit code and output. */
function cli(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'bin', 'agent-manager.js'), ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

async function promQuery(promql: string): Promise<number> {
  const response = await fetch(`${prometheus}/api/v1/query?query=${encodeURIComponent(promql)}`, { signal: AbortSignal.timeout(5_000) });
  const body = (await response.json()) as { data?: { result?: { value: [number, string] }[] } };
  return Number(body.data?.result?.[0]?.value[1] ?? Number.NaN);
}

interface Fleet {
  readonly world: FleetWorld;
  readonly services: ServiceContext;
  readonly kernel: KernelClient;
  readonly port: number;
}

async function startFleet(name: string, extraEnv: Record<string, string>, services: readonly ('ingest' | 'provisioner' | 'heartbeat')[] = ['ingest', 'provisioner']): Promise<Fleet> {
  const port = await freePort();
  const world = await createFleetWorld(name, { PROVISIONER_DRIVER: 'simulated', HTTP_HOST: '127.0.0.1', HTTP_PORT: String(port), ...extraEnv });
  const context = await within(`${name}: ${services.join(' + ')} start`, 90_000, startServices(services, world.env));
  const kernel = await connectKernel(world);
  return { world, services: context, kernel, port };
}

async function stopFleet(fleet: Fleet | undefined): Promise<void> {
  if (!fleet) return;
  await fleet.kernel.disconnect().catch(() => undefined);
  await fleet.services.shutdown();
  // Consumer groups outlive their topics: remove the world's (all prefixed).
  const admin = new Kafka(testKafkaConfig('canary-teardown')).admin();
  try {
    await admin.connect();
    const prefix = fleet.world.env.TOPIC_PREFIX ?? '';
    const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(prefix));
    if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
  } finally {
    await admin.disconnect().catch(() => undefined);
    await fleet.world.teardown();
  }
}

describe('release canary-check against a real Prometheus scraping real fleets', () => {
  const run = uniqueName('canary').replace(/-/g, '_');
  let good: Fleet | undefined;
  let bad: Fleet | undefined;
  let silent: Fleet | undefined;
  let removeTargets: (() => void) | undefined;
  let traffic: Promise<void> | undefined;
  let sending = true;

  const selector = (track: string) => `run="${run}",track="${track}"`;
  // Generous limits where the loaded 2-core machine, not the canary, decides (latency, scrapes, a
  // retried batch while the fleet starts): these tests show the judgement on real data, not the
  // machine's speed; the failing canary fails by far (every start ends FAILED).
  const options = (over: Partial<CanaryCheckOptions> = {}): CanaryCheckOptions => ({
    prometheus,
    window: WINDOW,
    selector: selector('stable'),
    thresholds: { maxProvisioningP95Ms: 5_000, minScrapeSuccess: 0.5, maxErrorRate: 0.25 },
    ...over,
  });

  /** Re-runs the check until it can judge (exit 0 or 1), then answers that report. */
  async function firstJudgement(check: CanaryCheckOptions): Promise<CanaryReport> {
    const deadline = Date.now() + 180_000;
    let last = '';
    while (Date.now() < deadline) {
      const { report, text } = await runCanaryCheck(check);
      if (report.exitCode !== 2) return report;
      last = text;
      await sleep(2_000);
    }
    throw new Error(`canary-check could not judge within 180 s; last report:\n${last}`);
  }

  beforeAll(async () => {
    const ready = await fetch(`${prometheus}/-/ready`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.ok).catch(() => false);
    if (!ready) throw new Error(`no Prometheus at ${prometheus}: run \`npx agent-manager stack up --with prometheus\``);
    good = await startFleet('canarygood', {});
    // The driver never reports STARTED within the start timeout, and there is no second attempt.
    bad = await startFleet('canarybad', { SIMULATED_START_DELAY_MS: '600000', START_TIMEOUT_MS: '1500', MAX_START_ATTEMPTS: '1' });
    // Agents lapse 5 s (the shortest deadline) after RUNNING, from the start (no failover grace).
    silent = await startFleet('canarysilent', { HEARTBEAT_MIN_TTL_MS: '5000', HEARTBEAT_FAILOVER_GRACE_MS: '0', HEARTBEAT_RECOVER_HOLD_MS: '0' }, ['ingest', 'provisioner', 'heartbeat']);
    removeTargets = writeScrapeTargets(join(process.cwd(), '.stack'), run, [
      { targets: [`127.0.0.1:${good.port}`], labels: { run, track: 'stable' } },
      { targets: [`127.0.0.1:${bad.port}`], labels: { run, track: 'canary' } },
      { targets: [`127.0.0.1:${silent.port}`], labels: { run, track: 'silent' } },
    ]);
    // Every fleet gets a request every second or so, for as long as the tests run (bounded by `sending`).
    const fleets = [good, bad, silent];
    traffic = (async () => {
      for (let i = 0; sending && i < 600; i += 1) {
        await Promise.all(fleets.map((fleet) => fleet.kernel.send([instantiateRequest(`${run}-${i}`, { labels: { test: 'canary-check' } })]).catch(() => undefined)));
        await sleep(1_000);
      }
    })();
    // Every target scraped (file_sd picked the file up) before any check runs.
    const deadline = Date.now() + 90_000;
    while ((await promQuery(`count(up{run="${run}"} == 1)`).catch(() => Number.NaN)) !== 3) {
      if (Date.now() > deadline) throw new Error(`Prometheus did not scrape the three fleets within 90 s (targets file ${run}.json)`);
      await sleep(1_000);
    }
  }, 600_000);

  afterAll(async () => {
    sending = false;
    await traffic;
    removeTargets?.();
    await stopFleet(silent);
    await stopFleet(bad);
    await stopFleet(good);
  });

  it('a good canary (agents reach RUNNING) is promoted: exit 0, every check passed', async () => {
    const report = await firstJudgement(options());
    expect(report.checks.filter((c) => c.status !== 'pass')).toEqual([]);
    expect(report).toMatchObject({ verdict: 'promote', exitCode: 0 });
    expect(report.checks.map((c) => c.name)).toEqual(['scrape-health', 'error-rate', 'provisioning-failure-rate', 'provisioning-latency-p95', 'missed-heartbeats']);
    const failures = report.checks.find((c) => c.name === 'provisioning-failure-rate');
    expect(failures?.value).toBe(0);
  });

  it('a canary whose starts fail is rolled back: exit 1, provisioning-failure-rate named, also against the stable baseline', async () => {
    const report = await firstJudgement(options({ selector: selector('canary'), baselineSelector: selector('stable') }));
    expect(report).toMatchObject({ verdict: 'rollback', exitCode: 1 });
    const failed = report.checks.filter((c) => c.status === 'fail').map((c) => c.name);
    expect(failed).toContain('provisioning-failure-rate');
    expect(report.summary).toContain('provisioning-failure-rate');
    const check = report.checks.find((c) => c.name === 'provisioning-failure-rate');
    expect(check?.value).toBe(1);
    expect(check?.reason).toMatch(/^100\.0% of [\d.]+ starts ended FAILED: above the limit of 10\.0%$/);
  });

  it('a canary whose agents miss their heartbeats is rolled back: exit 1, missed-heartbeats named', async () => {
    // The heartbeat counter has data from the start (0): the check judges at once, and the lapses come
    // 5 s after RUNNING. So wait until Prometheus itself shows more than 2 lapses in the window (they
    // go on: a new agent every second), then judge.
    const lapses = `sum(increase(agent_manager_heartbeat_lapses_total{${selector('silent')}}[${WINDOW}]))`;
    const deadline = Date.now() + 180_000;
    while (!((await promQuery(lapses).catch(() => Number.NaN)) > 2)) {
      if (Date.now() > deadline) throw new Error(`no agent of the silent fleet lapsed in 180 s (${lapses})`);
      await sleep(1_000);
    }
    const report = await firstJudgement(options({ selector: selector('silent'), thresholds: { maxProvisioningP95Ms: 5_000, minScrapeSuccess: 0.5, maxErrorRate: 0.25, maxMissedHeartbeats: 2 } }));
    expect(report).toMatchObject({ verdict: 'rollback', exitCode: 1 });
    expect(report.checks.filter((c) => c.status === 'fail').map((c) => c.name)).toContain('missed-heartbeats');
    const check = report.checks.find((c) => c.name === 'missed-heartbeats');
    expect(check?.value).toBeGreaterThan(2);
    expect(check?.reason).toMatch(/^[\d.]+ agents missed their heartbeat deadline: above the limit of 2$/);
  });

  it('the command prints one line per check and exits 1 for the failing canary (JSON with --json)', async () => {
    const limits = ['--max-provisioning-p95-ms', '5000', '--min-scrape-success', '0.5', '--max-error-rate', '0.25'];
    const args = ['release', 'canary-check', '--prometheus', prometheus, '--window', WINDOW, '--selector', selector('canary'), ...limits];
    // Judged already (the test above waited for it), and requests keep coming: the window has data.
    const json = await cli([...args, '--json']);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout) as { verdict: string; exitCode: number; checks: { name: string; status: string }[]; selector: string; windowSeconds: number };
    expect(report).toMatchObject({ verdict: 'rollback', exitCode: 1, selector: selector('canary'), windowSeconds: 30 });
    expect(report.checks.find((c) => c.name === 'provisioning-failure-rate')?.status).toBe('fail');

    const text = await cli(args);
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/FAIL\s+provisioning-failure-rate\s+100\.0% of/);
    expect(text.stdout).toMatch(/roll back: .*provisioning-failure-rate/);
  });

  it('cannot judge (exit 2) when nothing matches the selector, or Prometheus is unreachable, or the flags are wrong', async () => {
    const nothing = await runCanaryCheck(options({ selector: `run="${run}",track="absent"` }));
    expect(nothing.report).toMatchObject({ verdict: 'cannot-judge', exitCode: 2 });
    expect(nothing.text).toMatch(/no scrape target matches the selector/);

    const closed = await freePort();
    const unreachable = await runCanaryCheck(options({ prometheus: `http://127.0.0.1:${closed}` }));
    expect(unreachable.report).toMatchObject({ verdict: 'cannot-judge', exitCode: 2 });
    expect(unreachable.text).toMatch(/^cannot judge: PROMETHEUS_UNREACHABLE: cannot reach Prometheus at http:\/\/127\.0\.0\.1:\d+/);

    const refused = await runCanaryCheck(options({ selector: 'run=~"("' }));
    expect(refused.report.exitCode).toBe(2);
    expect(refused.text).toMatch(/PROMETHEUS_QUERY_REFUSED/);

    // Usage errors are 2 too, never 1 (roll back): the flags' own and commander's.
    const short = await cli(['release', 'canary-check', '--prometheus', prometheus, '--window', '5s']);
    expect(short.code).toBe(2);
    expect(short.stderr).toMatch(/cannot judge: --window expects a duration of at least 10s/);
    const unknown = await cli(['release', 'canary-check', '--window', '30s', '--no-such-flag']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown option/);
  });
});
