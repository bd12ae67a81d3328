-- Issue 16: resizes, recorded as nova records them in its `migrations` table (migration_type
-- 'resize'): the flavor before and after, so a revert restores the old one, and the status a
-- resize walks (pre-migrating, migrating, finished, confirming/reverting, confirmed/reverted,
-- error). Source and destination are the same host until the multi-host issue adds others.
CREATE TABLE migrations (
    id             INTEGER PRIMARY KEY,
    uuid           TEXT NOT NULL UNIQUE,
    instance_uuid  TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    source_compute TEXT,
    dest_compute   TEXT,
    source_node    TEXT,
    dest_node      TEXT,
    old_flavor     TEXT NOT NULL,   -- JSON FlavorSnapshot
    new_flavor     TEXT NOT NULL,   -- JSON FlavorSnapshot
    status         TEXT NOT NULL,
    migration_type TEXT NOT NULL DEFAULT 'resize',
    created_at     TEXT NOT NULL,
    updated_at     TEXT
);
CREATE INDEX migrations_instance ON migrations(instance_uuid, id);
