/**
 * `release canary-check` without the command line (cli/release-canary.ts parses the flags): the
 * queries against Prometheus, the judgement, and the text and JSON reports.
 */
import { errorCode, errorMessage, permanentError } from '../../lib/errors.ts';
import { CHECK_NAMES, DEFAULT_THRESHOLDS, evaluateCanary, formatReport, measure, parseLimit, parseSelector, parseWindow } from './canary-check.ts';
import type { CanaryReport, CanaryThresholds, CheckName } from './canary-check.ts';
import { prometheusQuery } from './prometheus-api.ts';

export interface CanaryCheckOptions {
  readonly prometheus: string;
  readonly window: string;
  readonly selector: string;
  readonly baselineSelector?: string | undefined;
  readonly thresholds?: Partial<CanaryThresholds>;
  readonly skip?: readonly CheckName[];
  readonly timeoutMs?: number;
  readonly bearerToken?: string | undefined;
  /** Evaluation instant, seconds since the epoch (default now). */
  readonly time?: number;
}

export interface CanaryCheckOutcome {
  readonly report: CanaryReport;
  readonly text: string;
  /** The JSON document `--json` prints. */
  readonly json: Record<string, unknown>;
}

/** Runs the analysis; a Prometheus failure is a `cannot-judge` report (exit 2) naming it, not a throw. */
export async function runCanaryCheck(options: CanaryCheckOptions): Promise<CanaryCheckOutcome> {
  const windowMs = parseWindow(options.window);
  const selector = parseSelector(options.selector);
  const baselineSelector = options.baselineSelector === undefined ? undefined : parseSelector(options.baselineSelector, '--baseline-selector');
  const thresholds: CanaryThresholds = { ...DEFAULT_THRESHOLDS, ...options.thresholds };
  const time = options.time ?? Date.now() / 1000;
  const query = prometheusQuery({ url: options.prometheus, timeoutMs: options.timeoutMs ?? 10_000, ...(options.bearerToken ? { bearerToken: options.bearerToken } : {}) }, time);
  const context = { selector, baselineSelector, window: options.window };
  let report: CanaryReport;
  try {
    const [canary, baseline] = await Promise.all([measure(query, selector, windowMs), baselineSelector === undefined ? undefined : measure(query, baselineSelector, windowMs)]);
    report = evaluateCanary(canary, baseline, thresholds, options.skip);
  } catch (error) {
    report = { verdict: 'cannot-judge', exitCode: 2, summary: `cannot judge: ${errorCode(error)}: ${errorMessage(error)}`, checks: [] };
  }
  const text = report.checks.length > 0 ? formatReport(report, context) : report.summary;
  const json = { ...report, prometheus: options.prometheus, window: options.window, windowSeconds: windowMs / 1000, selector, baselineSelector: baselineSelector ?? null, evaluatedAt: new Date(time * 1000).toISOString(), thresholds };
  return { report, text, json };
}

/** The command line's flags, as commander hands them over (strings). */
export interface CanaryCheckFlags {
  readonly prometheus?: string;
  readonly window?: string;
  readonly selector: string;
  readonly baselineSelector?: string;
  readonly maxErrorRate: string;
  readonly maxProvisioningFailureRate: string;
  readonly maxProvisioningP95Ms: string;
  readonly maxMissedHeartbeats: string;
  readonly minScrapeSuccess: string;
  readonly baselineTolerance: string;
  readonly skip?: string;
  readonly timeout: string;
  readonly json?: boolean;
}

/** Validates the flags (a CANARY_USAGE error names the flag). */
export function optionsFromFlags(flags: CanaryCheckFlags, env: NodeJS.ProcessEnv): CanaryCheckOptions {
  const prometheus = flags.prometheus ?? env.PROMETHEUS_URL;
  if (prometheus === undefined || prometheus === '') throw permanentError('CANARY_USAGE', '--prometheus <url> is required (or PROMETHEUS_URL)');
  if (flags.window === undefined) throw permanentError('CANARY_USAGE', '--window <duration> is required, e.g. --window 10m');
  const skip = (flags.skip ?? '').split(',').map((name) => name.trim()).filter((name) => name !== '');
  const isCheck = (name: string): name is CheckName => (CHECK_NAMES as readonly string[]).includes(name);
  const unknown = skip.filter((name) => !isCheck(name));
  if (unknown.length > 0) throw permanentError('CANARY_USAGE', `--skip: unknown check ${unknown.join(', ')}: expected ${CHECK_NAMES.join(', ')}`);
  return {
    prometheus,
    window: flags.window,
    selector: flags.selector,
    baselineSelector: flags.baselineSelector,
    thresholds: {
      maxErrorRate: parseLimit(flags.maxErrorRate, '--max-error-rate', 0, 1),
      maxProvisioningFailureRate: parseLimit(flags.maxProvisioningFailureRate, '--max-provisioning-failure-rate', 0, 1),
      maxProvisioningP95Ms: parseLimit(flags.maxProvisioningP95Ms, '--max-provisioning-p95-ms', 0),
      maxMissedHeartbeats: parseLimit(flags.maxMissedHeartbeats, '--max-missed-heartbeats', 0),
      minScrapeSuccess: parseLimit(flags.minScrapeSuccess, '--min-scrape-success', 0, 1),
      baselineTolerance: parseLimit(flags.baselineTolerance, '--baseline-tolerance', 0),
    },
    skip: skip.filter(isCheck),
    timeoutMs: parseLimit(flags.timeout, '--timeout', 1),
    ...(env.PROMETHEUS_BEARER_TOKEN ? { bearerToken: env.PROMETHEUS_BEARER_TOKEN } : {}),
  };
}
