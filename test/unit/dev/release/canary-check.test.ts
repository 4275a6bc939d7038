import {
  canaryQueries,
  DEFAULT_THRESHOLDS,
  evaluateCanary,
  formatReport,
  judgeCheck,
  measure,
  parseLimit,
  parseSelector,
  parseWindow,
  type Measurements,
} from '../../../../dev/release/canary-check.ts';

const healthy: Measurements = {
  scrapeSuccess: 1,
  recordsProcessed: 200,
  recordsFailed: null,
  startsRunning: 40,
  startsFailed: null,
  provisioningP95Seconds: 0.02,
  heartbeatLapses: 0,
};

/** The error `fn` throws (a test fails when it throws none). */
function thrown(fn: () => unknown): { code?: string; message: string } {
  try {
    fn();
  } catch (error) {
    return error as { code?: string; message: string };
  }
  throw new Error('expected a throw');
}

const statusOf = (report: ReturnType<typeof evaluateCanary>) => Object.fromEntries(report.checks.map((c) => [c.name, c.status]));

describe('parseWindow', () => {
  it.each([
    ['30s', 30_000],
    ['10m', 600_000],
    ['1h30m', 5_400_000],
    ['90s', 90_000],
    ['1h', 3_600_000],
  ])('%s is %d ms', (text, ms) => expect(parseWindow(text)).toBe(ms));

  it.each(['', '5s', '10', '1d', '-30s', '30 s', 'm'])('refuses %p', (text) => {
    const error = thrown(() => parseWindow(text));
    expect(error.code).toBe('CANARY_USAGE');
    expect(error.message).toContain('--window');
  });
});

describe('parseSelector', () => {
  it('accepts label matchers, with or without braces', () => {
    expect(parseSelector('track="canary"')).toBe('track="canary"');
    expect(parseSelector(' {track="canary", namespace=~"prod-.*"} ')).toBe('track="canary", namespace=~"prod-.*"');
    expect(parseSelector('service!="x{y}"')).toBe('service!="x{y}"');
  });

  it.each(['', '{}', 'track', '"canary"', 'track="a"} or vector(1) or up{a="b"', 'x="y")'])('refuses %p', (text) => {
    const error = thrown(() => parseSelector(text, '--baseline-selector'));
    expect(error.code).toBe('CANARY_USAGE');
    expect(error.message).toContain('--baseline-selector');
  });
});

describe('parseLimit', () => {
  it('reads numbers in range and names the flag otherwise', () => {
    expect(parseLimit('0.05', '--max-error-rate', 0, 1)).toBe(0.05);
    expect(parseLimit('0', '--max-missed-heartbeats', 0)).toBe(0);
    for (const bad of ['', 'abc', '-1', '1.5', 'Infinity']) {
      const error = thrown(() => parseLimit(bad, '--max-error-rate', 0, 1));
      expect(error.code).toBe('CANARY_USAGE');
      expect(error.message).toContain('--max-error-rate');
    }
  });
});

describe('canaryQueries', () => {
  it('puts the selector and the window into every query', () => {
    const queries = canaryQueries('track="canary"', 30_000);
    expect(queries.scrapeSuccess).toBe('avg(avg_over_time(up{track="canary"}[30s]))');
    expect(queries.startsFailed).toBe('sum(increase(agent_manager_lifecycle_transitions_total{track="canary",to="FAILED"}[30s]))');
    expect(queries.provisioningP95Seconds).toBe(
      'histogram_quantile(0.95, sum by (le) (rate(agent_manager_handler_duration_seconds_bucket{track="canary",topic=~".*agent-commands"}[30s])))',
    );
    for (const query of Object.values(queries)) expect(query).toContain('track="canary"');
  });

  it('measures every query through the given function', async () => {
    const asked: string[] = [];
    const m = await measure(async (q) => {
      asked.push(q);
      return q.includes('up{') ? 1 : null;
    }, 'a="b"', 60_000);
    expect(asked).toHaveLength(7);
    expect(m.scrapeSuccess).toBe(1);
    expect(m.recordsProcessed).toBeNull();
  });
});

describe('evaluateCanary', () => {
  it('promotes a healthy canary (a counter that never counted is 0)', () => {
    const report = evaluateCanary(healthy, undefined, DEFAULT_THRESHOLDS);
    expect(report).toMatchObject({ verdict: 'promote', exitCode: 0 });
    expect(Object.values(statusOf(report))).toEqual(['pass', 'pass', 'pass', 'pass', 'pass']);
  });

  it('rolls back on starts ending FAILED and names the check', () => {
    const report = evaluateCanary({ ...healthy, startsRunning: null, startsFailed: 12 }, undefined, DEFAULT_THRESHOLDS);
    expect(report).toMatchObject({ verdict: 'rollback', exitCode: 1, summary: 'roll back: provisioning-failure-rate failed' });
    const check = report.checks.find((c) => c.name === 'provisioning-failure-rate');
    expect(check).toMatchObject({ status: 'fail', value: 1, limit: 0.1 });
    expect(check?.reason).toBe('100.0% of 12 starts ended FAILED: above the limit of 10.0%');
  });

  it('rolls back on each limit crossed, naming every failed check', () => {
    const bad: Measurements = { scrapeSuccess: 0.5, recordsProcessed: 90, recordsFailed: 10, startsRunning: 9, startsFailed: 1, provisioningP95Seconds: 0.9, heartbeatLapses: 6 };
    const report = evaluateCanary(bad, undefined, { ...DEFAULT_THRESHOLDS, maxProvisioningFailureRate: 0.2 });
    expect(report.exitCode).toBe(1);
    expect(statusOf(report)).toEqual({
      'scrape-health': 'fail',
      'error-rate': 'fail',
      'provisioning-failure-rate': 'pass',
      'provisioning-latency-p95': 'fail',
      'missed-heartbeats': 'fail',
    });
    expect(report.summary).toBe('roll back: scrape-health, error-rate, provisioning-latency-p95, missed-heartbeats failed');
  });

  it('a value on the limit passes', () => {
    const report = evaluateCanary({ ...healthy, recordsProcessed: 99, recordsFailed: 1, heartbeatLapses: 5, provisioningP95Seconds: 0.5 }, undefined, DEFAULT_THRESHOLDS);
    expect(report.exitCode).toBe(0);
  });

  it('cannot judge without any scrape target (exit 2), whatever else', () => {
    const none: Measurements = { scrapeSuccess: null, recordsProcessed: null, recordsFailed: null, startsRunning: null, startsFailed: 5, provisioningP95Seconds: null, heartbeatLapses: null };
    const report = evaluateCanary(none, undefined, DEFAULT_THRESHOLDS);
    expect(report).toMatchObject({ verdict: 'cannot-judge', exitCode: 2 });
    expect(report.summary).toMatch(/no scrape target matches the selector/);
  });

  it('cannot judge when a check has no data (no traffic), unless another failed or it is skipped', () => {
    const idle: Measurements = { ...healthy, recordsProcessed: 0, recordsFailed: 0, startsRunning: null, startsFailed: null, provisioningP95Seconds: null };
    const report = evaluateCanary(idle, undefined, DEFAULT_THRESHOLDS);
    expect(report).toMatchObject({ verdict: 'cannot-judge', exitCode: 2 });
    expect(report.summary).toMatch(/^cannot judge: no data for error-rate, provisioning-failure-rate, provisioning-latency-p95/);
    expect(report.checks.find((c) => c.name === 'error-rate')?.reason).toBe('cannot judge: no record handled in the window');

    expect(evaluateCanary({ ...idle, heartbeatLapses: 9 }, undefined, DEFAULT_THRESHOLDS)).toMatchObject({ exitCode: 1, summary: 'roll back: missed-heartbeats failed' });
    const skipped = evaluateCanary({ ...healthy, startsRunning: null, startsFailed: null }, undefined, DEFAULT_THRESHOLDS, ['provisioning-failure-rate']);
    expect(skipped).toMatchObject({ exitCode: 0 });
    expect(skipped.checks.map((c) => c.name)).not.toContain('provisioning-failure-rate');
  });

  it('with a baseline, fails a canary within the limit but worse than the stable pods beyond the tolerance', () => {
    const thresholds = { ...DEFAULT_THRESHOLDS, maxErrorRate: 0.1, baselineTolerance: 0.25 };
    const stable: Measurements = { ...healthy, recordsProcessed: 990, recordsFailed: 10 };
    // allowed = 0.01 × 1.25 + 0.1 × 0.25 = 0.0375
    const worse = evaluateCanary({ ...healthy, recordsProcessed: 95, recordsFailed: 5 }, stable, thresholds);
    expect(worse.exitCode).toBe(1);
    const check = worse.checks.find((c) => c.name === 'error-rate');
    expect(check).toMatchObject({ status: 'fail', value: 0.05, baseline: 0.01 });
    expect(check?.reason).toMatch(/worse than the baseline's 1\.0% beyond the tolerance \(at most 3\.8%\)/);

    const close = evaluateCanary({ ...healthy, recordsProcessed: 97, recordsFailed: 3 }, stable, thresholds);
    expect(close.exitCode).toBe(0);
    expect(close.checks.find((c) => c.name === 'error-rate')?.baseline).toBe(0.01);
  });

  it('a baseline without data leaves the limits alone; counts are never compared with it', () => {
    const emptyBaseline: Measurements = { scrapeSuccess: null, recordsProcessed: null, recordsFailed: null, startsRunning: null, startsFailed: null, provisioningP95Seconds: null, heartbeatLapses: null };
    const report = evaluateCanary(healthy, emptyBaseline, DEFAULT_THRESHOLDS);
    expect(report.exitCode).toBe(0);
    expect(report.checks.find((c) => c.name === 'provisioning-latency-p95')?.reason).toMatch(/the baseline had no data/);
    const lapses = judgeCheck('missed-heartbeats', healthy, { ...healthy, heartbeatLapses: 0 }, DEFAULT_THRESHOLDS);
    expect(lapses).not.toHaveProperty('baseline');
  });

  it('latency is judged in milliseconds', () => {
    const check = judgeCheck('provisioning-latency-p95', { ...healthy, provisioningP95Seconds: 0.75 }, undefined, { ...DEFAULT_THRESHOLDS, maxProvisioningP95Ms: 500 });
    expect(check).toMatchObject({ status: 'fail', value: 750, limit: 500, reason: 'p95 750 ms: above the limit of 500 ms' });
  });
});

describe('formatReport', () => {
  it('prints one line per check and the verdict', () => {
    const report = evaluateCanary({ ...healthy, startsFailed: 40 }, undefined, DEFAULT_THRESHOLDS);
    const text = formatReport(report, { selector: 'track="canary"', window: '10m' });
    const lines = text.split('\n');
    expect(lines[0]).toBe('canary-check {track="canary"} over 10m');
    expect(lines).toHaveLength(7);
    expect(text).toMatch(/FAIL {3}\s+provisioning-failure-rate\s+50\.0% of 80 starts ended FAILED/);
    expect(lines.at(-1)).toBe('roll back: provisioning-failure-rate failed');
  });
});
