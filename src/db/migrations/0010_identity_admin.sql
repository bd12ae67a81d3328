-- Keystone's admin API (issue 18): domains, users' own attributes, implied roles, and deletion
-- that leaves nova's, cinder's and glance's rows (which name their project and user) intact.

CREATE TABLE domains (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL
);
INSERT INTO domains (id, name, description, created_at)
VALUES ('default', 'Default', 'The default domain', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));

ALTER TABLE users ADD COLUMN domain_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN description TEXT;
-- Instances, volumes and images reference projects and users without cascading (upstream they
-- live in other databases and outlive the project), so a deleted project or user stays as a
-- row marked deleted, with its name freed, and every identity query skips it.
ALTER TABLE projects ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;

-- keystone's implied_role: a token carries every role its assignments imply.
CREATE TABLE implied_roles (
    prior_role_id   TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    implied_role_id TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (prior_role_id, implied_role_id)
);
INSERT OR IGNORE INTO roles (id, name) VALUES (lower(hex(randomblob(16))), 'manager');
INSERT OR IGNORE INTO roles (id, name) VALUES (lower(hex(randomblob(16))), 'service');
INSERT OR IGNORE INTO implied_roles (prior_role_id, implied_role_id)
SELECT p.id, i.id FROM roles p JOIN roles i
  ON (p.name = 'admin' AND i.name = 'manager') OR (p.name = 'manager' AND i.name = 'member')
  OR (p.name = 'member' AND i.name = 'reader');

-- Groups: users get a group's roles on a project while they are its members.
CREATE TABLE groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    domain_id   TEXT NOT NULL DEFAULT 'default',
    created_at  TEXT NOT NULL
);
CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE TABLE group_role_assignments (
    group_id   TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    role_id    TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, project_id, role_id)
);

-- Roles on a domain or on the system (keystone's domain- and system-scoped tokens), of a user
-- or a group. `scope_id` is the domain's id, or 'all' for the system.
CREATE TABLE scoped_role_assignments (
    actor_type TEXT NOT NULL CHECK (actor_type IN ('user', 'group')),
    actor_id   TEXT NOT NULL,
    scope_type TEXT NOT NULL CHECK (scope_type IN ('domain', 'system')),
    scope_id   TEXT NOT NULL,
    role_id    TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (actor_type, actor_id, scope_type, scope_id, role_id)
);
ALTER TABLE tokens ADD COLUMN domain_id TEXT;
ALTER TABLE tokens ADD COLUMN system INTEGER NOT NULL DEFAULT 0;

-- Application credentials: a secret a user makes for a program, standing for the user in one
-- project with at most the roles the user had there. Only the secret's argon2 hash is kept.
CREATE TABLE application_credentials (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id   TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT,
    secret_hash  TEXT NOT NULL,
    expires_at   TEXT,
    unrestricted INTEGER NOT NULL DEFAULT 0,
    roles        TEXT NOT NULL,              -- JSON list of role ids
    created_at   TEXT NOT NULL,
    UNIQUE (user_id, name)
);
ALTER TABLE tokens ADD COLUMN application_credential_id TEXT;
