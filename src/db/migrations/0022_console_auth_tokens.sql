-- Issue 22: nova's console auth tokens. Only the sha256 of a token is kept, so a copy of the
-- database opens no console; each is bound to one instance and one console type.
CREATE TABLE console_auth_tokens (
    token_hash    TEXT PRIMARY KEY,
    instance_uuid TEXT NOT NULL,
    console_type  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX console_auth_tokens_instance ON console_auth_tokens (instance_uuid);

-- Deleting a server revokes its tokens, whichever path deletes it (the compute host, nova's
-- "local delete", reclaim): every one of them marks the row deleted.
CREATE TRIGGER console_auth_tokens_revoke AFTER UPDATE OF deleted ON instances
WHEN NEW.deleted != 0
BEGIN
    DELETE FROM console_auth_tokens WHERE instance_uuid = NEW.uuid;
END;
