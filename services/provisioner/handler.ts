import type { AgentCommand } from '../../lib/contracts/types.ts';
import type { MessageContext } from '../../lib/runtime/worker.ts';
import type { LifecycleApplier } from './apply.ts';
import type { LifecycleInput } from './lifecycle.ts';

export interface CommandHandlerDeps {
  readonly applier: LifecycleApplier;
}

export function commandInput(command: AgentCommand): LifecycleInput {
  const reason = command.reason ?? undefined;
  return command.command === 'INSTANTIATE'
    ? { type: 'INSTANTIATE', ...(reason ? { reason } : {}) }
    : { type: command.command, ...(reason ? { reason } : {}) };
}

/**
 * `agent-commands` handler: one command → one lifecycle input for its agent. A command the
 * lifecycle refuses is answered on `agent-status` with the reason (an outcome, not an error); a
 * database outage throws and the runtime retries the record.
 */
export async function handleCommand(command: AgentCommand, ctx: MessageContext<CommandHandlerDeps>): Promise<void> {
  const outcomes = await ctx.deps.applier.apply(command.agentId, commandInput(command), { actor: command.issuedBy, command, trace: ctx.trace });
  const first = outcomes[0]?.result;
  if (first && !first.ok) ctx.log.info({ agentId: command.agentId, command: command.command, code: first.rejection.code, reason: first.rejection.reason }, 'command rejected');
}
