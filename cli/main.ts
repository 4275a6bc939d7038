import { Command, CommanderError } from 'commander';
import { errorMessage } from '../lib/errors.ts';
import { registerContractCommands } from './contracts.ts';
import { registerStackCommands, runStackUp, printStatus } from './stack.ts';

/** Builds the `agent-manager` command tree; `root` is the project folder (where `.stack/` lives). */
export function buildCli(root: string, setExitCode: (code: number) => void): Command {
  const program = new Command('agent-manager')
    .description('Operate Agent Manager: the local stack, the services and their data.')
    .showHelpAfterError()
    .exitOverride();

  registerStackCommands(program, root, setExitCode);
  registerContractCommands(program, root, setExitCode);

  program
    .command('demo')
    .description('Bring up the local stack and show it (later: run the whole fleet with a scripted Kernel).')
    .action(async () => {
      const ok = await runStackUp(root);
      const healthy = await printStatus(root);
      setExitCode(ok && healthy ? 0 : 1);
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
    console.error(`agent-manager: ${errorMessage(error)}`);
    return 1;
  }
}
