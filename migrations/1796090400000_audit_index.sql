-- Up Migration
-- The audit archiver's index: one row per audit event, written per Kafka batch before the event is
-- archived (so it is queryable at once), and the archive files it knows of. The archive in S3 is the
-- source of truth; every table here can be rebuilt from it (`agent-manager audit reindex`).

-- One row per event id. The same event can be on the topic twice (the outbox relay publishes at least
-- once): the archive keeps both records, the index the first one it indexed.
CREATE TABLE audit_index (
  event_id        uuid        PRIMARY KEY,
  event_time      timestamptz NOT NULL,
  action          text        NOT NULL,
  actor           text        NOT NULL,
  agent_id        uuid,
  request_id      uuid,
  trace_id        text,
  -- Where the event is on audit-events; its archive file is the audit_files row whose range holds it.
  kafka_partition integer     NOT NULL,
  kafka_offset    bigint      NOT NULL,
  -- The producer's SHA-256 of the event's canonical form (the event's `hash` field).
  payload_hash    text        NOT NULL,
  indexed_at      timestamptz NOT NULL DEFAULT now()
);
-- `audit query` filters by one of these and pages by (event_time, event_id).
CREATE INDEX audit_index_time ON audit_index (event_time, event_id);
CREATE INDEX audit_index_agent ON audit_index (agent_id, event_time, event_id) WHERE agent_id IS NOT NULL;
CREATE INDEX audit_index_request ON audit_index (request_id, event_time, event_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_index_action ON audit_index (action, event_time, event_id);
CREATE INDEX audit_index_actor ON audit_index (actor, event_time, event_id);
CREATE INDEX audit_index_position ON audit_index (kafka_partition, kafka_offset);

-- One row per archive file once it is durable in S3 (written after the upload, before the offset commit).
CREATE TABLE audit_files (
  object_key      text        PRIMARY KEY,
  day             date        NOT NULL,
  kafka_partition integer     NOT NULL,
  first_offset    bigint      NOT NULL,
  last_offset     bigint      NOT NULL CHECK (last_offset >= first_offset),
  record_count    integer     NOT NULL CHECK (record_count > 0),
  bytes           bigint      NOT NULL,
  -- Base64 SHA-256 of the object, as S3's x-amz-checksum-sha256.
  sha256          text        NOT NULL,
  version_id      text,
  created_at      timestamptz NOT NULL DEFAULT now()
);
-- Finds the file of an offset (the greatest first_offset at or below it).
CREATE INDEX audit_files_position ON audit_files (kafka_partition, first_offset);
CREATE INDEX audit_files_day ON audit_files (day, kafka_partition, first_offset);

-- A partition's day closes when a later day's record arrives on it, or when it is idle and caught up
-- past the day plus ARCHIVE_DAY_GRACE_MS.
CREATE TABLE audit_partition_days (
  day             date        NOT NULL,
  kafka_partition integer     NOT NULL,
  file_count      integer     NOT NULL,
  record_count    bigint      NOT NULL,
  -- The last offset archived for the day (null: no record of the day on this partition).
  last_offset     bigint,
  closed_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (day, kafka_partition)
);

-- A day closed on every partition: its files and counts are final (the integrity issue signs them).
CREATE TABLE audit_days (
  day             date        PRIMARY KEY,
  partition_count integer     NOT NULL,
  file_count      integer     NOT NULL,
  record_count    bigint      NOT NULL,
  closed_at       timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE audit_days;
DROP TABLE audit_partition_days;
DROP TABLE audit_files;
DROP TABLE audit_index;
