/**
 * `agent-manager release canary-check`: the deploy workflow's promote-or-roll-back decision for a
 * canary, from the SLO metrics in Prometheus (dev/release/canary-check.ts, loaded only when it runs).
 * Exit 0: promote; 1: roll back (a check failed); 2: cannot judge (no data, Prometheus unreachable or
 * refusing the query): the workflow must not promote on 2.
 */
import { CommanderError, type Command } from 'commander';
import { errorCode, errorMessage, permanentError } from '../lib/errors.ts';
import type { CanaryReport, CanaryThresholds, CheckName } from '../dev/release/canary-check.ts';

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
  const { DEFAULT_THRESHOLDS, evaluateCanary, formatReport, measure, parseSelector, parseWindow } = await import('../dev/release/canary-check.ts');
  const { prometheusQuery } = await import('../dev/release/prometheus-api.ts');
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

/** Adds `canary-check` to the `release` command group. */
export function registerCanaryCheckCommand(release: Command, setExitCode: (code: number) => void): void {
  release
    .command('canary-check')
    .description(
      "Judge a canary from its SLO metrics in Prometheus over the last --window: scrape health, error rate, provisioning failure rate, provisioning latency p95, " +
        'missed heartbeats, against the limits and (with --baseline-selector) the stable pods. Exit 0 promote, 1 roll back (the failed checks are named), ' +
        '2 cannot judge (no data, Prometheus unreachable).',
    )
    // A usage error is "cannot judge" (2), never "roll back" (1): the workflow tells them apart.
    .exitOverride((error) => {
      throw error.exitCode === 0 ? error : new CommanderError(2, error.code, error.message);
    })
    .option('--prometheus <url>', 'Prometheus base URL (default $PROMETHEUS_URL)')
    .option('--window <duration>', 'how far back to look, e.g. 30s, 10m, 1h (at least 10s; several scrape intervals)')
    .option('--selector <matchers>', "the canary's series, PromQL label matchers", 'track="canary"')
    .option('--baseline-selector <matchers>', "the stable pods' series (e.g. track=\"stable\"): rates and latency must also be no worse than theirs beyond --baseline-tolerance")
    .option('--max-error-rate <ratio>', 'highest share of failed handler attempts', '0.01')
    .option('--max-provisioning-failure-rate <ratio>', 'highest share of starts ending FAILED', '0.1')
    .option('--max-provisioning-p95-ms <ms>', "highest p95 of the provisioner's handler latency on agent-commands", '500')
    .option('--max-missed-heartbeats <n>', 'most agents declared lapsed in the window', '5')
    .option('--min-scrape-success <ratio>', "lowest share of successful scrapes of the canary's targets", '0.9')
    .option('--baseline-tolerance <ratio>', 'with a baseline: fail when canary > baseline × (1 + t) + limit × t', '0.25')
    .option('--skip <checks>', 'checks left out, comma-separated (scrape-health, error-rate, provisioning-failure-rate, provisioning-latency-p95, missed-heartbeats)')
    .option('--timeout <ms>', 'per Prometheus request', '10000')
    .option('--json', 'print the report as JSON')
    .action(async (options: CanaryCheckFlags) => {
      try {
        const outcome = await runCanaryCheck(await optionsFromFlags(options, process.env));
        console.log(options.json ? JSON.stringify(outcome.json, null, 2) : outcome.text);
        setExitCode(outcome.report.exitCode);
      } catch (error) {
        console.error(`agent-manager release canary-check: cannot judge: ${errorMessage(error)}`);
        setExitCode(2);
      }
    });
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
export async function optionsFromFlags(flags: CanaryCheckFlags, env: NodeJS.ProcessEnv): Promise<CanaryCheckOptions> {
  const { CHECK_NAMES, parseLimit } = await import('../dev/release/canary-check.ts');
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
