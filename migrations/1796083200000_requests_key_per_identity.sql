-- Up Migration
-- Idempotency keys belong to the identity that sends them: the same key from two identities is two
-- independent requests, so one identity can neither see the other's request nor pre-claim its agent.
ALTER TABLE requests DROP CONSTRAINT requests_idempotency_key_key;
ALTER TABLE requests ADD CONSTRAINT requests_requested_by_idempotency_key_key UNIQUE (requested_by, idempotency_key);

-- Down Migration
-- Fails while two identities share a key: remove one of those requests first.
ALTER TABLE requests DROP CONSTRAINT requests_requested_by_idempotency_key_key;
ALTER TABLE requests ADD CONSTRAINT requests_idempotency_key_key UNIQUE (idempotency_key);
