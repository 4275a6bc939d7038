import { Command, CommanderError } from 'commander';
import { errorMessage } from '../lib/errors.ts';
import { registerAgentCommands } from './agents.ts';
import { registerAuditCommands } from './audit.ts';
import { registerContractCommands } from './contracts.ts';
import { registerDlqCommands } from './dlq.ts';
import { registerKeysCommands } from './keys.ts';
import { registerReleaseCommands } from './release.ts';
import { registerS3Commands } from './s3.ts';
import { registerStackCommands } from './stack.ts';
import { registerServiceCommands } from './services.ts';

/** Builds the `agent-manager` command tree; `root` is the project folder (where `.stack/` lives). */
export function buildCli(root: string, setExitCode: (code: number) => void): Command {
  const program = new Command('agent-manager')
    .description('Operate Agent Manager: the local stack, the services and their data.')
    .showHelpAfterError()
    .exitOverride();

  registerStackCommands(program, root, setExitCode);
  registerContractCommands(program, root, setExitCode);

  registerServiceCommands(program, root, setExitCode);
  registerDlqCommands(program, setExitCode);
  registerS3Commands(program, setExitCode);
  registerAgentCommands(program, setExitCode);
  registerAuditCommands(program, setExitCode);
  registerKeysCommands(program, setExitCode);
  registerReleaseCommands(program, root, setExitCode);

  program
    .command('demo')
    .description(
      'The whole fleet on the local stack with a scripted Kernel: stack up, migrate, topics and schemas, run ingest, provisioner and heartbeat, ' +
        'instantiate a batch of agents (real processes), watch them reach RUNNING, hang one (SIGSTOP) and kill another (SIGKILL) and watch both recover, ' +
        'stop and destroy them, print a summary.',
    )
    .option('--agents <n>', 'how many agents', '10')
    .option('--phase-timeout <seconds>', 'longest wait for each phase', '120')
    .action(async (options: { agents: string; phaseTimeout: string }) => {
      const agents = Number(options.agents);
      const phaseTimeoutMs = Number(options.phaseTimeout) * 1000;
      if (!Number.isInteger(agents) || agents < 1 || agents > 500) throw new CommanderError(2, 'USAGE', '--agents expects an integer from 1 to 500');
      // Loaded here: the demo's scripted Kernel and stack are development tooling (dev/), not part of a deployed service.
      const { demoSucceeded, formatSummary, runDemo } = await import('./demo.ts');
      const summary = await runDemo(root, { agents, phaseTimeoutMs });
      console.log(formatSummary(summary));
      setExitCode(demoSucceeded(summary, agents) ? 0 : 1);
    });

  return program;
}

export async function main(root: string, argv: readonly string[]): Promise<number> {
  let exitCode = 0;
  const program = buildCli(root, (code) => {
    exitCode = code;
  });
  try {
    await program.parseAsync([...argv]);
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode;
    const message = errorMessage(error);
    // kafkajs names a missing topic this way; say what to run.
    const hint = /does not host this topic-partition|unknown topic/i.test(message)
      ? ' (a topic is missing: run `agent-manager topics create`, `agent-manager schemas register` and `agent-manager migrate` first)'
      : '';
    console.error(`agent-manager: ${message}${hint}`);
    return 1;
  }
}
