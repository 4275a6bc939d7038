-- Up Migration
-- The transactional outbox: events written in the same transaction as the state they describe,
-- published to Kafka by the relay. `value` holds the Confluent-framed Avro bytes, encoded at write time.
CREATE TABLE outbox (
  id           bigserial PRIMARY KEY,
  event_id     uuid        NOT NULL UNIQUE,
  topic        text        NOT NULL,
  key          text        NOT NULL,
  value        bytea       NOT NULL,
  headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
  created_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Down Migration
DROP TABLE outbox;
