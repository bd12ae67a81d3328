-- What tempest's compute and identity tests found missing, kept as nova and keystone keep it.

-- nova's quota classes: the `default` class overrides the built-in defaults of every project
-- without its own limit (`os-quota-class-sets`).
CREATE TABLE quota_classes (
    class_name TEXT NOT NULL,
    resource   TEXT NOT NULL,
    hard_limit INTEGER NOT NULL,
    PRIMARY KEY (class_name, resource)
);

-- keystone's project tags (project_tag).
CREATE TABLE project_tags (
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    tag        TEXT NOT NULL,
    PRIMARY KEY (project_id, tag)
);

-- keystone keeps a user's attributes it has no column for in `extra` (a JSON object).
ALTER TABLE users ADD COLUMN extra TEXT NOT NULL DEFAULT '{}';

-- `OS-DCF:diskConfig` as the server was created or updated with it (nova's
-- instances.auto_disk_config): AUTO is 1, MANUAL 0.
ALTER TABLE instances ADD COLUMN auto_disk_config INTEGER NOT NULL DEFAULT 0;
