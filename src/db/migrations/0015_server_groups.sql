-- nova's server groups (issue 17): a group has one policy (2.64 made `policies` a single
-- `policy`), anti-affinity's optional `max_server_per_host`, and its member instances.
-- Deleting a group deletes it for good, as nova's API database does; its members go with it.

CREATE TABLE server_groups (
    id                  INTEGER PRIMARY KEY,
    uuid                TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    project_id          TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    policy              TEXT NOT NULL,
    max_server_per_host INTEGER,
    created_at          TEXT NOT NULL
);
CREATE INDEX server_groups_project ON server_groups(project_id);

-- An instance belongs to at most one group (nova's create takes one `group` hint).
CREATE TABLE server_group_members (
    group_id      INTEGER NOT NULL REFERENCES server_groups(id) ON DELETE CASCADE,
    instance_uuid TEXT NOT NULL UNIQUE
);
CREATE INDEX server_group_members_group ON server_group_members(group_id);
