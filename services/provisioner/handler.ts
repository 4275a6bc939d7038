import type { AgentCommand } from '../../lib/contracts/types.ts';
import { permanentError } from '../../lib/errors.ts';
import type { MessageContext } from '../../lib/runtime/worker.ts';
import type { LifecycleApplier } from './apply.ts';
import type { LifecycleInput } from './lifecycle.ts';

export interface CommandHandlerDeps {
  readonly applier: LifecycleApplier;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * What the Avro schema cannot say: ids are UUIDs and an INSTANTIATE carries a spec. A record that
 * fails goes to the DLQ at once (a permanent error) instead of failing in the database and being
 * retried.
 */
export function validateAgentCommand(value: unknown): AgentCommand {
  const command = value as AgentCommand;
  if (typeof command !== 'object' || command === null) throw permanentError('VALIDATION_FAILED', 'an agent command must be a record');
  if (typeof command.agentId !== 'string' || !UUID.test(command.agentId)) throw permanentError('VALIDATION_FAILED', `agentId ${JSON.stringify(command.agentId)} is not a UUID`);
  if (typeof command.commandId !== 'string' || !UUID.test(command.commandId)) throw permanentError('VALIDATION_FAILED', `commandId ${JSON.stringify(command.commandId)} is not a UUID`);
  if (command.requestId !== null && (typeof command.requestId !== 'string' || !UUID.test(command.requestId))) {
    throw permanentError('VALIDATION_FAILED', `requestId ${JSON.stringify(command.requestId)} is not a UUID`);
  }
  if (command.command === 'INSTANTIATE' && command.spec === null) throw permanentError('VALIDATION_FAILED', 'INSTANTIATE carries no agent spec');
  return command;
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
