-- Up Migration
-- Audit integrity: the hash chain of each archive file (lib/archive/chain.ts; also in the file's Avro
-- header) and the signed manifest of each closed day (lib/archive/manifest.ts). Null on files and
-- days from before this change: the archiver recomputes a partition's chain from its files when it
-- finds a file without one, and signs closed days in order, the older ones included.
ALTER TABLE audit_files
  ADD COLUMN first_chain text CHECK (first_chain ~ '^[0-9a-f]{64}$'),
  ADD COLUMN last_chain  text CHECK (last_chain ~ '^[0-9a-f]{64}$');

ALTER TABLE audit_days
  ADD COLUMN manifest_key       text,
  -- Hex SHA-256 of the manifest.json bytes: the next day's manifest names it (`previousManifest`).
  ADD COLUMN manifest_sha256    text CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
  ADD COLUMN signed_key_version integer,
  ADD COLUMN signed_at          timestamptz;

-- The signing loop's question: the earliest closed day without a manifest.
CREATE INDEX audit_days_unsigned ON audit_days (day) WHERE manifest_key IS NULL;

-- Down Migration
DROP INDEX audit_days_unsigned;
ALTER TABLE audit_days DROP COLUMN signed_at, DROP COLUMN signed_key_version, DROP COLUMN manifest_sha256, DROP COLUMN manifest_key;
ALTER TABLE audit_files DROP COLUMN last_chain, DROP COLUMN first_chain;
