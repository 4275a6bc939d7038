import type { AgentCommand } from '../../lib/contracts/types.ts';
import { errorCode, errorMessage, isRetryable, permanentError, unavailableDependency, unavailableError } from '../../lib/errors.ts';
import type { Headers, ProducerClient } from '../../lib/kafka/types.ts';
import type { Metrics } from '../../lib/metrics.ts';
import type { BatchContext, DecodedBatch, DecodedRecord } from '../../lib/runtime/batch-worker.ts';
import { deadLetterRecord, dlqTopicOf } from '../../lib/runtime/dlq.ts';
import type { MessageContext } from '../../lib/runtime/worker.ts';
import { childTrace, parseTraceparent } from '../../lib/tracing.ts';
import type { BatchInput, LifecycleApplier } from './apply.ts';
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

export interface CommandBatchDeps {
  readonly applier: LifecycleApplier;
  /** Dead letters of single commands (the rest of their batch is applied). */
  readonly producer: ProducerClient;
  readonly service: string;
  /** The runtime's attempts per batch: on the last one, a command still failing is dead-lettered alone. */
  readonly maxAttempts: number;
  readonly metrics: Pick<Metrics, 'recordsDeadLettered'>;
}

function headersOf(record: DecodedRecord<AgentCommand>): Headers {
  const headers: Record<string, string> = {};
  for (const header of record.raw?.headers ?? []) if (header.value !== null) headers[header.key] = header.value.toString();
  return headers;
}

function batchInput(record: DecodedRecord<AgentCommand>): BatchInput {
  const command = record.value;
  const trace = childTrace(parseTraceparent(record.raw?.headers.find((h) => h.key === 'traceparent')?.value?.toString()));
  return { agentId: command.agentId, input: commandInput(command), origin: { actor: command.issuedBy, command, trace } };
}

/**
 * `agent-commands` handler in batch mode: the commands of one Kafka batch applied together
 * (`LifecycleApplier.applyBatch`), each with the result it would have alone. A command that fails
 * does not take its batch down: a retryable failure retries the batch (the commands applied are
 * duplicates then), a permanent one (or one still failing on the last attempt) is dead-lettered
 * alone and the later commands for its agent are applied after it.
 */
export async function handleCommandBatch(batch: DecodedBatch<AgentCommand>, ctx: BatchContext<CommandBatchDeps>): Promise<void> {
  const { deps, log } = ctx;
  let records = batch.records;
  while (records.length > 0) {
    const results = await deps.applier.applyBatch(records.map(batchInput));
    const failed: { record: DecodedRecord<AgentCommand>; error: unknown }[] = [];
    const skipped: DecodedRecord<AgentCommand>[] = [];
    results.forEach((result, index) => {
      const record = records[index] as DecodedRecord<AgentCommand>;
      if (!result.ok) {
        if (result.skipped === true) skipped.push(record);
        else failed.push({ record, error: result.error });
        return;
      }
      const first = result.outcomes[0]?.result;
      if (first && !first.ok) log.info({ agentId: record.value.agentId, command: record.value.command, code: first.rejection.code, reason: first.rejection.reason }, 'command rejected');
    });
    if (failed.length === 0) return;
    const retry = failed.find(({ error }) => unavailableDependency(error) !== undefined || (isRetryable(error) && batch.attempt < deps.maxAttempts));
    if (retry) throw retry.error;
    const failedAt = new Date();
    try {
      await deps.producer.send(
        dlqTopicOf(batch.topic),
        failed.map(({ record, error }) =>
          deadLetterRecord(
            { topic: batch.topic, partition: batch.partition, offset: record.offset, key: record.raw?.key ?? null, value: record.raw?.value ?? null, headers: headersOf(record), timestamp: record.timestamp },
            { code: errorCode(error), message: errorMessage(error), attempts: batch.attempt, service: deps.service, failedAt },
          ),
        ),
      );
    } catch (error) {
      throw unavailableError('kafka', 'DLQ_SEND_FAILED', `dead-lettering ${failed.length} commands failed: ${errorMessage(error)}`, error);
    }
    for (const { record, error } of failed) {
      deps.metrics.recordsDeadLettered.inc({ topic: batch.topic, code: errorCode(error) });
      log.warn({ topic: batch.topic, partition: batch.partition, offset: record.offset, agentId: record.value.agentId, code: errorCode(error), err: errorMessage(error) }, 'command dead-lettered');
    }
    records = skipped;
  }
}
