/**
 * `agent-manager release canary-check`: the deploy workflow's promote-or-roll-back decision for a
 * canary, from the SLO metrics in Prometheus (dev/release/canary-check.ts and canary-command.ts,
 * loaded only when it runs).
 * Exit 0: promote; 1: roll back (a check failed); 2: cannot judge (no data, Prometheus unreachable or
 * refusing the query): the workflow must not promote on 2.
 */
import { CommanderError, type Command } from 'commander';
import { errorMessage } from '../lib/errors.ts';
import type { CanaryCheckFlags } from '../dev/release/canary-command.ts';

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
        const { optionsFromFlags, runCanaryCheck } = await import('../dev/release/canary-command.ts');
        const outcome = await runCanaryCheck(optionsFromFlags(options, process.env));
        console.log(options.json ? JSON.stringify(outcome.json, null, 2) : outcome.text);
        setExitCode(outcome.report.exitCode);
      } catch (error) {
        console.error(`agent-manager release canary-check: cannot judge: ${errorMessage(error)}`);
        setExitCode(2);
      }
    });
}
