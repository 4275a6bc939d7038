/**
 * The TypeScript side of the topic contracts in `schemas/*.avsc`. The types are generated into
 * `generated-types.ts` by `npm run generate:types` (dev/generate-types.ts) from the avsc types the
 * codec uses, and a unit test fails while that file is stale; this module gives them the names the
 * code imports and holds the topic list.
 *
 * Representation (how `lib/contracts/schemas.ts` configures avsc):
 * - `timestamp-millis` (an Avro long) is a `Date`, both to encode and as decoded;
 * - `uuid` (an Avro string) is a `string` (canonical lower-case 8-4-4-4-12 form);
 * - other longs (`version`, `sequence`, `memoryRssBytes`) are `number`: avsc refuses to decode a long
 *   beyond `Number.MAX_SAFE_INTEGER` rather than lose precision;
 * - an optional field is a union with null first and default null, so it is `T | null` and always
 *   present on a decoded record (avsc fills the default);
 * - Avro enums are string unions, with their symbols in the `AGENT_*` constant arrays below.
 */
import { AGENT_ACTION_SYMBOLS, AGENT_COMMAND_TYPE_SYMBOLS, AGENT_STATE_SYMBOLS } from './generated-types.ts';

export type {
  AgentAction,
  AgentCommand,
  AgentCommandType,
  AgentHeartbeat,
  AgentRequest,
  AgentSpec,
  AgentState,
  AgentStatus,
  AuditEvent,
  EnvironmentReference,
  HeartbeatMetrics,
  ResourceRequest,
  TopicRecords,
} from './generated-types.ts';

/** Actions the Kernel may request on `agent-requests` (Avro enum `io.agentmanager.v1.AgentAction`). */
export const AGENT_ACTIONS = AGENT_ACTION_SYMBOLS;

/** Commands on `agent-commands` (Avro enum `io.agentmanager.v1.AgentCommandType`): the actions plus RECOVER. */
export const AGENT_COMMAND_TYPES = AGENT_COMMAND_TYPE_SYMBOLS;

/** Lifecycle states on `agent-status` (Avro enum `io.agentmanager.v1.AgentState`). */
export const AGENT_STATES = AGENT_STATE_SYMBOLS;

/** The topics with a contract (`schemas/<topic>.avsc`), in data-flow order. */
export const TOPICS = ['agent-requests', 'agent-commands', 'agent-status', 'agent-heartbeats', 'audit-events'] as const;
export type TopicName = (typeof TOPICS)[number];
