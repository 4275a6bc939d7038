/**
 * The TypeScript side of the topic contracts in `schemas/*.avsc`, written by hand and kept in parity
 * with the schemas by `test/unit/lib/contracts/schemas.test.ts` (same field names, every sample valid).
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

/** Actions the Kernel may request on `agent-requests` (Avro enum `io.agentmanager.v1.AgentAction`). */
export const AGENT_ACTIONS = ['INSTANTIATE', 'START', 'STOP', 'RESTART', 'DESTROY'] as const;
export type AgentAction = (typeof AGENT_ACTIONS)[number];

/** Commands on `agent-commands` (Avro enum `io.agentmanager.v1.AgentCommandType`): the actions plus RECOVER. */
export const AGENT_COMMAND_TYPES = ['INSTANTIATE', 'START', 'STOP', 'RESTART', 'DESTROY', 'RECOVER'] as const;
export type AgentCommandType = (typeof AGENT_COMMAND_TYPES)[number];

/** Lifecycle states on `agent-status` (Avro enum `io.agentmanager.v1.AgentState`). */
export const AGENT_STATES = [
  'PENDING',
  'PROVISIONING',
  'STARTING',
  'RUNNING',
  'UNHEALTHY',
  'STOPPING',
  'STOPPED',
  'DESTROYING',
  'DESTROYED',
  'REJECTED',
  'FAILED',
] as const;
export type AgentState = (typeof AGENT_STATES)[number];

/** A uuid (Avro logical type `uuid` over a string). */
export type Uuid = string;

/** One environment variable given by reference (`io.agentmanager.v1.EnvironmentReference`). */
export interface EnvironmentReference {
  /** Variable name as the agent sees it. */
  name: string;
  /** Where the value lives (e.g. `vault:kv/agents/support#api-key`); never the value itself. */
  ref: string;
}

/** Compute resources of one agent instance (`io.agentmanager.v1.ResourceRequest`). */
export interface ResourceRequest {
  cpuMillicores: number;
  memoryMiB: number;
  gpuCount: number;
  gpuType: string | null;
}

/** What to run (`io.agentmanager.v1.AgentSpec`); at least one of `template` and `image` is set. */
export interface AgentSpec {
  template: string | null;
  image: string | null;
  command: string[];
  environment: EnvironmentReference[];
  resources: ResourceRequest;
}

/** `agent-requests` value (`io.agentmanager.v1.AgentRequest`). */
export interface AgentRequest {
  requestId: Uuid;
  idempotencyKey: string;
  action: AgentAction;
  /** Null for INSTANTIATE (ingest assigns it), required otherwise. */
  agentId: Uuid | null;
  /** Required for INSTANTIATE, null otherwise. */
  spec: AgentSpec | null;
  division: string;
  region: string | null;
  labels: Record<string, string>;
  requestedBy: string;
  createdAt: Date;
}

/** `agent-commands` value (`io.agentmanager.v1.AgentCommand`). */
export interface AgentCommand {
  commandId: Uuid;
  agentId: Uuid;
  command: AgentCommandType;
  /** Null for commands the fleet issues itself (RECOVER). */
  requestId: Uuid | null;
  /** Set for INSTANTIATE, null otherwise. */
  spec: AgentSpec | null;
  division: string | null;
  region: string | null;
  labels: Record<string, string>;
  issuedBy: string;
  issuedAt: Date;
  reason: string | null;
  /** 1 for the first issue, incremented on each re-issue. */
  attempt: number;
}

/** `agent-status` value (`io.agentmanager.v1.AgentStatus`). */
export interface AgentStatus {
  eventId: Uuid;
  agentId: Uuid;
  state: AgentState;
  previousState: AgentState | null;
  reason: string | null;
  requestId: Uuid | null;
  commandId: Uuid | null;
  /** The agent's state version after the transition (an Avro long). */
  version: number;
  time: Date;
}

/** Resource usage reported with a heartbeat (`io.agentmanager.v1.HeartbeatMetrics`). */
export interface HeartbeatMetrics {
  cpuPercent: number | null;
  memoryRssBytes: number | null;
  custom: Record<string, number>;
}

/** `agent-heartbeats` value (`io.agentmanager.v1.AgentHeartbeat`). */
export interface AgentHeartbeat {
  agentId: Uuid;
  instanceId: string;
  pid: number | null;
  /** Per-instance counter (an Avro long). */
  sequence: number;
  sentAt: Date;
  metrics: HeartbeatMetrics | null;
}

/** `audit-events` value (`io.agentmanager.v1.AuditEvent`). */
export interface AuditEvent {
  eventId: Uuid;
  time: Date;
  actor: string;
  /** Dotted lower-case name, e.g. `agent.state_changed`. */
  action: string;
  /** The subject agent; null for events about no single agent. */
  agentId: Uuid | null;
  requestId: Uuid | null;
  traceId: string | null;
  /** A JSON document, as a string. */
  payload: string;
  /** Lower-case hex SHA-256 of the canonical form of the other fields. */
  hash: string;
}

/** The topics with a contract, in data-flow order. */
export const TOPICS = ['agent-requests', 'agent-commands', 'agent-status', 'agent-heartbeats', 'audit-events'] as const;
export type TopicName = (typeof TOPICS)[number];

/** The value type of each topic. */
export interface TopicRecords {
  'agent-requests': AgentRequest;
  'agent-commands': AgentCommand;
  'agent-status': AgentStatus;
  'agent-heartbeats': AgentHeartbeat;
  'audit-events': AuditEvent;
}
