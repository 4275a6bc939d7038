-- Up Migration
-- Signing key versions declared compromised (`agent-manager keys revoke`): `audit verify` reports
-- manifests they signed as `signed_by_revoked_key`, and `audit resign` counter-signs those with the
-- current version. A row is never updated or deleted by the services; each insert is audited
-- (action `signing_key.revoked`) in the same transaction.
CREATE TABLE audit_signing_revocations (
  key_id      text        NOT NULL,
  key_version integer     NOT NULL CHECK (key_version > 0),
  revoked_at  timestamptz NOT NULL DEFAULT now(),
  revoked_by  text        NOT NULL,
  reason      text        NOT NULL,
  PRIMARY KEY (key_id, key_version)
);

-- Down Migration
DROP TABLE audit_signing_revocations;
