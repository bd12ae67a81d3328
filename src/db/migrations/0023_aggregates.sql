-- nova's host aggregates (issue 17, item 5): named groups of compute hosts with metadata; the
-- `availability_zone` key of that metadata is how nova defines availability zones. Deleting an
-- aggregate deletes it for good (nova's API database keeps no soft-deleted aggregates).

CREATE TABLE aggregates (
    id          INTEGER PRIMARY KEY,
    uuid        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT
);

CREATE TABLE aggregate_hosts (
    aggregate_id INTEGER NOT NULL REFERENCES aggregates(id) ON DELETE CASCADE,
    host         TEXT NOT NULL,
    UNIQUE (aggregate_id, host)
);
CREATE INDEX aggregate_hosts_host ON aggregate_hosts(host);

CREATE TABLE aggregate_metadata (
    aggregate_id INTEGER NOT NULL REFERENCES aggregates(id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    UNIQUE (aggregate_id, key)
);

-- Multiple create (issue 17, item 4): the servers of one request share nova's `r-` id.
ALTER TABLE instances ADD COLUMN reservation_id TEXT;
CREATE INDEX instances_reservation ON instances(reservation_id);
