/**
 * The canary analysis (`agent-manager release canary-check`): the SLO metrics of the canary's pods
 * over a window, from Prometheus, against thresholds and optionally against the stable pods (the
 * baseline). Everything here is pure but `measure`, which only runs the queries: the deploy
 * workflow's promote-or-roll-back decision is `evaluateCanary` and is unit-tested as such.
 *
 * The metrics (lib/metrics.ts), as the chart's alerts and dashboard read them:
 * - error rate: failed handler attempts among handled records (agent_manager_records_failed_total,
 *   agent_manager_records_processed_total), every topic;
 * - provisioning failure rate: starts ending FAILED among starts that ended (RUNNING or FAILED) in
 *   agent_manager_lifecycle_transitions_total, as the AgentManagerProvisioningFailureRate alert;
 * - provisioning latency p95: the provisioner's handler latency on agent-commands
 *   (agent_manager_handler_duration_seconds), the dashboard's "provisioning latency";
 * - missed heartbeats: agents declared lapsed (agent_manager_heartbeat_lapses_total);
 * - scrape health: the share of successful scrapes of the canary's targets (`up`): a canary that
 *   crashes or hangs is not measured, it is down.
 */
import { permanentError } from '../../lib/errors.ts';

export const CHECK_NAMES = ['scrape-health', 'error-rate', 'provisioning-failure-rate', 'provisioning-latency-p95', 'missed-heartbeats'] as const;
export type CheckName = (typeof CHECK_NAMES)[number];

export interface CanaryThresholds {
  /** Highest share of failed handler attempts (0–1). */
  readonly maxErrorRate: number;
  /** Highest share of starts ending FAILED (0–1). */
  readonly maxProvisioningFailureRate: number;
  /** Highest p95 of the provisioner's handler latency on agent-commands, milliseconds. */
  readonly maxProvisioningP95Ms: number;
  /** Most agents declared lapsed in the window. */
  readonly maxMissedHeartbeats: number;
  /** Lowest share of successful scrapes of the canary's targets (0–1). */
  readonly minScrapeSuccess: number;
  /**
   * With a baseline: how much worse than the stable pods the canary may be. A rate or latency check
   * fails when canary > baseline × (1 + t) + threshold × t (the second term keeps a baseline of 0
   * from making any single error fatal).
   */
  readonly baselineTolerance: number;
}

export const DEFAULT_THRESHOLDS: CanaryThresholds = {
  maxErrorRate: 0.01,
  maxProvisioningFailureRate: 0.1,
  maxProvisioningP95Ms: 500,
  maxMissedHeartbeats: 5,
  minScrapeSuccess: 0.9,
  baselineTolerance: 0.25,
};

/** What Prometheus answered for one set of pods; null = no series (nothing to measure). */
export interface Measurements {
  /** avg of avg_over_time(up): the share of successful scrapes. */
  readonly scrapeSuccess: number | null;
  readonly recordsProcessed: number | null;
  readonly recordsFailed: number | null;
  readonly startsRunning: number | null;
  readonly startsFailed: number | null;
  readonly provisioningP95Seconds: number | null;
  readonly heartbeatLapses: number | null;
}

export type CheckStatus = 'pass' | 'fail' | 'no-data';

export interface CheckResult {
  readonly name: CheckName;
  readonly status: CheckStatus;
  /** The canary's value, in the check's unit (ratio, milliseconds, count); null without data. */
  readonly value: number | null;
  readonly limit: number;
  /** `max`: the value must not exceed the limit; `min`: it must not be below it. */
  readonly bound: 'max' | 'min';
  /** The stable pods' value when a baseline was asked for (null: the baseline had no data). */
  readonly baseline?: number | null;
  /** One sentence: why it passed, failed or could not be judged. */
  readonly reason: string;
}

export type Verdict = 'promote' | 'rollback' | 'cannot-judge';

export interface CanaryReport {
  readonly verdict: Verdict;
  /** 0 promote, 1 roll back, 2 cannot judge. */
  readonly exitCode: 0 | 1 | 2;
  readonly summary: string;
  readonly checks: readonly CheckResult[];
}

// --- Options ---------------------------------------------------------------------------------------

/** `5m`, `30s`, `1h30m`, `90s` (Prometheus' duration units s, m, h) to milliseconds. */
export function parseWindow(text: string): number {
  const match = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text.trim());
  const [hours, minutes, seconds] = (match?.slice(1) ?? []).map((part) => Number(part ?? 0));
  const ms = ((hours ?? 0) * 3600 + (minutes ?? 0) * 60 + (seconds ?? 0)) * 1000;
  if (!match || text.trim() === '' || ms < 10_000) {
    throw permanentError('CANARY_USAGE', `--window expects a duration of at least 10s such as 30s, 10m or 1h (units h, m, s), not '${text}'`);
  }
  return ms;
}

/**
 * A label selector given as `track="canary"` (or `{track="canary"}`), checked enough that it cannot
 * break out of the braces it is put in; Prometheus judges the rest (a bad matcher is a refused query).
 */
export function parseSelector(text: string, option = '--selector'): string {
  let inner = text.trim();
  if (inner.startsWith('{') && inner.endsWith('}')) inner = inner.slice(1, -1).trim();
  if (inner === '') throw permanentError('CANARY_USAGE', `${option} must name at least one label matcher, e.g. track="canary"`);
  // Braces only inside quoted values: strip the quoted strings and look at what is left.
  const unquoted = inner.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
  if (/[{}[\]()]/.test(unquoted) || !/^\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)/.test(unquoted)) {
    throw permanentError('CANARY_USAGE', `${option} expects label matchers such as track="canary",namespace="prod", not '${text}'`);
  }
  return inner;
}

/** A number option in [min, max]. */
export function parseLimit(text: string, option: string, min: number, max = Number.POSITIVE_INFINITY): number {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || value < min || value > max) {
    throw permanentError('CANARY_USAGE', `${option} expects a number from ${min}${Number.isFinite(max) ? ` to ${max}` : ' up'}, not '${text}'`);
  }
  return value;
}

// --- Queries ---------------------------------------------------------------------------------------

const matchers = (selector: string, ...extra: string[]) => `{${[selector, ...extra].filter((m) => m !== '').join(',')}}`;

/** The PromQL of each measurement for the pods `selector` picks, over `windowMs`. */
export function canaryQueries(selector: string, windowMs: number): Record<keyof Measurements, string> {
  const range = `[${Math.round(windowMs / 1000)}s]`;
  const s = (...extra: string[]) => matchers(selector, ...extra);
  return {
    scrapeSuccess: `avg(avg_over_time(up${s()}${range}))`,
    recordsProcessed: `sum(increase(agent_manager_records_processed_total${s()}${range}))`,
    recordsFailed: `sum(increase(agent_manager_records_failed_total${s()}${range}))`,
    startsRunning: `sum(increase(agent_manager_lifecycle_transitions_total${s('to="RUNNING"')}${range}))`,
    startsFailed: `sum(increase(agent_manager_lifecycle_transitions_total${s('to="FAILED"')}${range}))`,
    provisioningP95Seconds: `histogram_quantile(0.95, sum by (le) (rate(agent_manager_handler_duration_seconds_bucket${s('topic=~".*agent-commands"')}${range})))`,
    heartbeatLapses: `sum(increase(agent_manager_heartbeat_lapses_total${s()}${range}))`,
  };
}

/** Runs every query at one instant; `query` answers the first sample's value, or null for none/NaN. */
export async function measure(query: (promql: string) => Promise<number | null>, selector: string, windowMs: number): Promise<Measurements> {
  const queries = canaryQueries(selector, windowMs);
  const keys = Object.keys(queries) as (keyof Measurements)[];
  const values = await Promise.all(keys.map((key) => query(queries[key])));
  return Object.fromEntries(keys.map((key, i) => [key, values[i] ?? null])) as unknown as Measurements;
}

// --- Judgement -------------------------------------------------------------------------------------

const percent = (ratio: number) => `${(ratio * 100).toFixed(ratio < 0.01 && ratio > 0 ? 2 : 1)}%`;
const round = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(1));

/** A counter's increase: a missing series next to an existing one is 0 (it never counted). */
function ratio(part: number | null, rest: number | null): { value: number; total: number } | null {
  const a = part ?? 0;
  const total = a + (rest ?? 0);
  if ((part === null && rest === null) || total <= 0) return null;
  return { value: a / total, total };
}

interface Observed {
  readonly value: number | null;
  /** Why there is no value (a check without data names what it missed). */
  readonly missing: string;
  readonly describe: (value: number) => string;
}

function observe(name: CheckName, m: Measurements): Observed {
  switch (name) {
    case 'scrape-health':
      return { value: m.scrapeSuccess, missing: 'no scrape target matches the selector', describe: (v) => `${percent(v)} of scrapes succeeded` };
    case 'error-rate': {
      const r = ratio(m.recordsFailed, m.recordsProcessed);
      return { value: r?.value ?? null, missing: 'no record handled in the window', describe: (v) => `${percent(v)} of ${round(r?.total ?? 0)} handler attempts failed` };
    }
    case 'provisioning-failure-rate': {
      const r = ratio(m.startsFailed, m.startsRunning);
      return { value: r?.value ?? null, missing: 'no start ended (RUNNING or FAILED) in the window', describe: (v) => `${percent(v)} of ${round(r?.total ?? 0)} starts ended FAILED` };
    }
    case 'provisioning-latency-p95': {
      const seconds = m.provisioningP95Seconds;
      return { value: seconds === null ? null : seconds * 1000, missing: 'no agent command handled in the window', describe: (v) => `p95 ${round(v)} ms` };
    }
    case 'missed-heartbeats':
      return { value: m.heartbeatLapses, missing: 'no heartbeat metrics from the selected pods', describe: (v) => `${round(v)} agents missed their heartbeat deadline` };
  }
}

function limitOf(name: CheckName, t: CanaryThresholds): { limit: number; bound: 'max' | 'min'; show: (n: number) => string } {
  switch (name) {
    case 'scrape-health':
      return { limit: t.minScrapeSuccess, bound: 'min', show: percent };
    case 'error-rate':
      return { limit: t.maxErrorRate, bound: 'max', show: percent };
    case 'provisioning-failure-rate':
      return { limit: t.maxProvisioningFailureRate, bound: 'max', show: percent };
    case 'provisioning-latency-p95':
      return { limit: t.maxProvisioningP95Ms, bound: 'max', show: (n) => `${round(n)} ms` };
    case 'missed-heartbeats':
      return { limit: t.maxMissedHeartbeats, bound: 'max', show: round };
  }
}

/** Checks compared with the baseline: rates and latency. Counts and scrape health depend on fleet size and are absolute. */
const RELATIVE: ReadonlySet<CheckName> = new Set(['error-rate', 'provisioning-failure-rate', 'provisioning-latency-p95']);

/** `increase()` extrapolates: 0.0000001 of a counter is 0. */
const EPSILON = 1e-9;

export function judgeCheck(name: CheckName, canary: Measurements, baseline: Measurements | undefined, t: CanaryThresholds): CheckResult {
  const observed = observe(name, canary);
  const { limit, bound, show } = limitOf(name, t);
  const base = baseline && RELATIVE.has(name) ? { baseline: observe(name, baseline).value } : {};
  const value = observed.value;
  if (value === null) return { name, status: 'no-data', value, limit, bound, ...base, reason: `cannot judge: ${observed.missing}` };
  const what = observed.describe(value);
  const beyond = bound === 'max' ? value > limit + EPSILON : value < limit - EPSILON;
  if (beyond) return { name, status: 'fail', value, limit, bound, ...base, reason: `${what}: ${bound === 'max' ? 'above' : 'below'} the limit of ${show(limit)}` };
  if (base.baseline !== undefined && base.baseline !== null) {
    const allowed = base.baseline * (1 + t.baselineTolerance) + limit * t.baselineTolerance;
    if (value > allowed + EPSILON) {
      return { name, status: 'fail', value, limit, bound, ...base, reason: `${what}: worse than the baseline's ${show(base.baseline)} beyond the tolerance (at most ${show(allowed)})` };
    }
    return { name, status: 'pass', value, limit, bound, ...base, reason: `${what}: within ${show(limit)} and the baseline's ${show(base.baseline)} (+tolerance)` };
  }
  const note = base.baseline === null ? ' (the baseline had no data: compared with the limit only)' : '';
  return { name, status: 'pass', value, limit, bound, ...base, reason: `${what}: within ${show(limit)}${note}` };
}

/**
 * The verdict: any failed check rolls back (exit 1); otherwise any check without data, or no target
 * at all, cannot be judged (exit 2); all passed promotes (exit 0). `skip` leaves checks out.
 */
export function evaluateCanary(canary: Measurements, baseline: Measurements | undefined, thresholds: CanaryThresholds, skip: readonly CheckName[] = []): CanaryReport {
  if (canary.scrapeSuccess === null) {
    return {
      verdict: 'cannot-judge',
      exitCode: 2,
      summary: 'cannot judge: no scrape target matches the selector in the window (wrong selector, the canary not deployed, or Prometheus not scraping it)',
      checks: [judgeCheck('scrape-health', canary, baseline, thresholds)],
    };
  }
  const checks = CHECK_NAMES.filter((name) => !skip.includes(name)).map((name) => judgeCheck(name, canary, baseline, thresholds));
  const failed = checks.filter((c) => c.status === 'fail');
  const missing = checks.filter((c) => c.status === 'no-data');
  if (failed.length > 0) {
    return { verdict: 'rollback', exitCode: 1, summary: `roll back: ${failed.map((c) => c.name).join(', ')} failed`, checks };
  }
  if (missing.length > 0) {
    return {
      verdict: 'cannot-judge',
      exitCode: 2,
      summary: `cannot judge: no data for ${missing.map((c) => c.name).join(', ')} (no traffic in the window? a longer window, or --skip for a check that cannot apply)`,
      checks,
    };
  }
  return { verdict: 'promote', exitCode: 0, summary: `promote: all ${checks.length} checks passed`, checks };
}

/** The human report: one line per check, then the verdict. */
export function formatReport(report: CanaryReport, context: { selector: string; baselineSelector?: string | undefined; window: string }): string {
  const header = `canary-check {${context.selector}} over ${context.window}${context.baselineSelector ? `, baseline {${context.baselineSelector}}` : ''}`;
  const width = Math.max(...report.checks.map((c) => c.name.length));
  const lines = report.checks.map((c) => `  ${c.status === 'pass' ? 'PASS   ' : c.status === 'fail' ? 'FAIL   ' : 'NO DATA'}  ${c.name.padEnd(width)}  ${c.reason}`);
  return [header, ...lines, report.summary].join('\n');
}
