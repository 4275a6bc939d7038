-- Up Migration
-- Agents, the requests that shaped them, leader leases and the operators' control switches.

-- One row per agent. `version` fences concurrent writers (optimistic concurrency): every update
-- says which version it read. `lifecycle` holds the state machine's bookkeeping (restart policy,
-- start generation and attempt, restarts used, what follows a stop) as JSON.
CREATE TABLE agents (
  id              uuid        PRIMARY KEY,
  state           text        NOT NULL,
  reason          text        NOT NULL DEFAULT '',
  spec            jsonb       NOT NULL,
  lifecycle       jsonb       NOT NULL,
  division        text        NOT NULL,
  region          text,
  labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
  version         bigint      NOT NULL DEFAULT 1,
  last_request_id uuid,
  last_command_id uuid,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_state ON agents (state, created_at, id);
CREATE INDEX agents_division ON agents (division, created_at, id);
CREATE INDEX agents_created ON agents (created_at, id);

-- One row per accepted or rejected request; the idempotency key decides what a repeat gets.
CREATE TABLE requests (
  request_id      uuid        PRIMARY KEY,
  idempotency_key text        NOT NULL UNIQUE,
  -- SHA-256 of the canonical request payload: the same key with another payload is refused.
  payload_hash    text        NOT NULL,
  action          text        NOT NULL,
  agent_id        uuid,
  division        text        NOT NULL,
  requested_by    text        NOT NULL,
  outcome         text        NOT NULL CHECK (outcome IN ('ACCEPTED', 'REJECTED')),
  reason          text        NOT NULL DEFAULT '',
  command_id      uuid,
  created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_agent ON requests (agent_id, created_at);

-- Commands the provisioner has applied, so a redelivered command is a no-op (at-least-once input).
CREATE TABLE applied_commands (
  command_id uuid        PRIMARY KEY,
  agent_id   uuid        NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);

-- Leader leases: the holder renews before `expires_at`; every takeover increments `fencing_token`.
CREATE TABLE leases (
  name          text        PRIMARY KEY,
  holder        text        NOT NULL,
  fencing_token bigint      NOT NULL,
  acquired_at   timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL
);

-- Operators' switches (safe mode), read by every service.
CREATE TABLE control (
  key        text        PRIMARY KEY,
  value      jsonb       NOT NULL,
  updated_by text        NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO control (key, value, updated_by) VALUES ('safe_mode', '{"enabled": false, "reason": ""}', 'migration');

-- Down Migration
DROP TABLE control;
DROP TABLE leases;
DROP TABLE applied_commands;
DROP TABLE requests;
DROP TABLE agents;
