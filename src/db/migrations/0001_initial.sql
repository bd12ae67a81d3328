-- The whole data model, laid down once so later work adds code rather than tables.
-- Conventions (nova's): soft-deleted rows keep `deleted` = their own id (0 while live), so a
-- name can be reused after a delete without breaking UNIQUE constraints; timestamps are UTC
-- ISO-8601 strings with a trailing Z.

-- Identity -------------------------------------------------------------------------------
CREATE TABLE projects (
    id          TEXT PRIMARY KEY,            -- 32 hex chars, as keystone
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    domain_id   TEXT NOT NULL DEFAULT 'default',
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT
);

CREATE TABLE users (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    password_hash      TEXT NOT NULL,        -- argon2id PHC string; never the password
    default_project_id TEXT REFERENCES projects(id),
    enabled            INTEGER NOT NULL DEFAULT 1,
    created_at         TEXT NOT NULL,
    updated_at         TEXT
);

CREATE TABLE roles (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE role_assignments (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    role_id    TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, project_id, role_id)
);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,             -- sha256 of the token; the token itself is never stored
    audit_id   TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id TEXT REFERENCES projects(id) ON DELETE CASCADE,
    methods    TEXT NOT NULL,                -- JSON list: ["password"] or ["token"]
    issued_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_expires_at ON tokens(expires_at);

-- Services and hosts ----------------------------------------------------------------------
CREATE TABLE services (
    id              INTEGER PRIMARY KEY,
    uuid            TEXT NOT NULL UNIQUE,
    host            TEXT NOT NULL,
    binary          TEXT NOT NULL,           -- novabox-compute, novabox-scheduler, ...
    topic           TEXT NOT NULL,
    report_count    INTEGER NOT NULL DEFAULT 0,
    disabled        INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    forced_down     INTEGER NOT NULL DEFAULT 0,
    last_seen_at    TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT,
    deleted_at      TEXT,
    deleted         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (host, binary, deleted)
);

CREATE TABLE compute_nodes (
    id                    INTEGER PRIMARY KEY,
    uuid                  TEXT NOT NULL UNIQUE,
    service_id            INTEGER REFERENCES services(id),
    host                  TEXT NOT NULL,
    hypervisor_hostname   TEXT NOT NULL,
    hypervisor_type       TEXT NOT NULL,     -- QEMU, fake
    hypervisor_version    INTEGER NOT NULL DEFAULT 0,
    accel                 TEXT NOT NULL DEFAULT 'tcg',
    host_ip               TEXT NOT NULL DEFAULT '127.0.0.1',
    vcpus                 INTEGER NOT NULL,
    memory_mb             INTEGER NOT NULL,
    local_gb              INTEGER NOT NULL,
    vcpus_used            INTEGER NOT NULL DEFAULT 0,
    memory_mb_used        INTEGER NOT NULL DEFAULT 0,
    local_gb_used         INTEGER NOT NULL DEFAULT 0,
    running_vms           INTEGER NOT NULL DEFAULT 0,
    cpu_allocation_ratio  REAL NOT NULL,
    ram_allocation_ratio  REAL NOT NULL,
    disk_allocation_ratio REAL NOT NULL,
    created_at            TEXT NOT NULL,
    updated_at            TEXT,
    deleted_at            TEXT,
    deleted               INTEGER NOT NULL DEFAULT 0,
    UNIQUE (host, hypervisor_hostname, deleted)
);

-- Flavors ----------------------------------------------------------------------------------
CREATE TABLE flavors (
    id           INTEGER PRIMARY KEY,
    flavorid     TEXT NOT NULL UNIQUE,       -- the id the API shows
    name         TEXT NOT NULL UNIQUE,
    memory_mb    INTEGER NOT NULL,
    vcpus        INTEGER NOT NULL,
    root_gb      INTEGER NOT NULL,
    ephemeral_gb INTEGER NOT NULL DEFAULT 0,
    swap         INTEGER NOT NULL DEFAULT 0, -- MiB, as nova
    rxtx_factor  REAL NOT NULL DEFAULT 1.0,
    is_public    INTEGER NOT NULL DEFAULT 1,
    disabled     INTEGER NOT NULL DEFAULT 0,
    description  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT
);

CREATE TABLE flavor_extra_specs (
    flavor_id INTEGER NOT NULL REFERENCES flavors(id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (flavor_id, key)
);

CREATE TABLE flavor_projects (
    flavor_id  INTEGER NOT NULL REFERENCES flavors(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    PRIMARY KEY (flavor_id, project_id)
);

-- Images -----------------------------------------------------------------------------------
CREATE TABLE images (
    id               TEXT PRIMARY KEY,       -- uuid
    name             TEXT,
    owner            TEXT REFERENCES projects(id),
    status           TEXT NOT NULL,          -- queued, saving, active, killed, deleted
    visibility       TEXT NOT NULL DEFAULT 'shared',
    protected        INTEGER NOT NULL DEFAULT 0,
    disk_format      TEXT,                   -- qcow2, raw, aki, ari, ami, ...
    container_format TEXT,                   -- bare, ami, aki, ari, ...
    size             INTEGER,
    virtual_size     INTEGER,
    checksum         TEXT,                   -- md5, as glance
    os_hash_algo     TEXT,
    os_hash_value    TEXT,
    min_disk         INTEGER NOT NULL DEFAULT 0,
    min_ram          INTEGER NOT NULL DEFAULT 0,
    path             TEXT,                   -- relative to the home's images/
    created_at       TEXT NOT NULL,
    updated_at       TEXT,
    deleted_at       TEXT,
    deleted          INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE image_properties (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    name     TEXT NOT NULL,                  -- kernel_id, ramdisk_id, hw_*, os_*, ...
    value    TEXT NOT NULL,
    PRIMARY KEY (image_id, name)
);

CREATE TABLE image_tags (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    tag      TEXT NOT NULL,
    PRIMARY KEY (image_id, tag)
);

CREATE TABLE image_members (
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    member     TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending',
    created_at TEXT NOT NULL,
    PRIMARY KEY (image_id, member)
);

-- Instances --------------------------------------------------------------------------------
CREATE TABLE instances (
    id                  INTEGER PRIMARY KEY,
    uuid                TEXT NOT NULL UNIQUE,
    display_name        TEXT NOT NULL,
    display_description TEXT,
    hostname            TEXT NOT NULL,
    project_id          TEXT NOT NULL REFERENCES projects(id),
    user_id             TEXT NOT NULL REFERENCES users(id),
    host                TEXT,                -- set by the scheduler
    node                TEXT,
    availability_zone   TEXT,
    vm_state            TEXT NOT NULL,       -- building, active, stopped, error, deleted
    task_state          TEXT,                -- scheduling, networking, block_device_mapping, spawning, ...
    power_state         INTEGER NOT NULL DEFAULT 0, -- nova: 0 nostate, 1 running, 4 shutdown, 6 crashed
    flavor_id           INTEGER NOT NULL REFERENCES flavors(id),
    flavor              TEXT NOT NULL,       -- JSON snapshot: a flavor may change or go after boot
    memory_mb           INTEGER NOT NULL,
    vcpus               INTEGER NOT NULL,
    root_gb             INTEGER NOT NULL,
    ephemeral_gb        INTEGER NOT NULL DEFAULT 0,
    image_ref           TEXT,                -- empty when booted from volume
    kernel_id           TEXT,
    ramdisk_id          TEXT,
    key_name            TEXT,
    key_data            TEXT,
    user_data           TEXT,                -- base64, as received
    config_drive        TEXT NOT NULL DEFAULT '',
    access_ip_v4        TEXT,
    access_ip_v6        TEXT,
    locked              INTEGER NOT NULL DEFAULT 0,
    progress            INTEGER NOT NULL DEFAULT 0,
    request_id          TEXT,                -- the request that created it, for `novabox trace`
    scheduled_at        TEXT,
    launched_at         TEXT,
    terminated_at       TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT,
    deleted_at          TEXT,
    deleted             INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX instances_project ON instances(project_id, deleted);
CREATE INDEX instances_host ON instances(host, deleted);

CREATE TABLE instance_metadata (
    instance_uuid TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (instance_uuid, key)
);

CREATE TABLE instance_faults (
    id            INTEGER PRIMARY KEY,
    instance_uuid TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    code          INTEGER NOT NULL,
    message       TEXT NOT NULL,
    details       TEXT NOT NULL DEFAULT '',
    host          TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX instance_faults_uuid ON instance_faults(instance_uuid);

CREATE TABLE instance_actions (
    id            INTEGER PRIMARY KEY,
    action        TEXT NOT NULL,             -- create, delete, stop, start, reboot, ...
    instance_uuid TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    request_id    TEXT NOT NULL,
    user_id       TEXT,
    project_id    TEXT,
    start_time    TEXT NOT NULL,
    finish_time   TEXT,
    message       TEXT
);
CREATE INDEX instance_actions_uuid ON instance_actions(instance_uuid);

CREATE TABLE instance_action_events (
    id          INTEGER PRIMARY KEY,
    action_id   INTEGER NOT NULL REFERENCES instance_actions(id) ON DELETE CASCADE,
    event       TEXT NOT NULL,               -- compute__do_build_and_run_instance, ...
    host        TEXT,
    start_time  TEXT NOT NULL,
    finish_time TEXT,
    result      TEXT,                        -- Success, Error
    traceback   TEXT
);

CREATE TABLE block_device_mappings (
    id                    INTEGER PRIMARY KEY,
    instance_uuid         TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    source_type           TEXT NOT NULL,     -- image, volume, blank, snapshot
    destination_type      TEXT NOT NULL,     -- local, volume
    boot_index            INTEGER,
    device_name           TEXT,
    image_id              TEXT,
    volume_id             TEXT,
    volume_size           INTEGER,
    delete_on_termination INTEGER NOT NULL DEFAULT 0,
    disk_bus              TEXT,
    device_type           TEXT,
    guest_format          TEXT,
    connection_info       TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT,
    deleted_at            TEXT,
    deleted               INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX bdm_instance ON block_device_mappings(instance_uuid, deleted);

-- Volumes ----------------------------------------------------------------------------------
CREATE TABLE volumes (
    id              TEXT PRIMARY KEY,
    name            TEXT,
    description     TEXT,
    project_id      TEXT NOT NULL REFERENCES projects(id),
    user_id         TEXT NOT NULL REFERENCES users(id),
    size            INTEGER NOT NULL,        -- GiB
    status          TEXT NOT NULL,           -- creating, available, attaching, in-use, detaching, deleting, error
    attach_status   TEXT NOT NULL DEFAULT 'detached',
    instance_uuid   TEXT,
    mountpoint      TEXT,
    source_image_id TEXT,
    bootable        INTEGER NOT NULL DEFAULT 0,
    availability_zone TEXT NOT NULL DEFAULT 'nova',
    path            TEXT,                    -- relative to the home's volumes/
    created_at      TEXT NOT NULL,
    updated_at      TEXT,
    deleted_at      TEXT,
    deleted         INTEGER NOT NULL DEFAULT 0
);

-- Networks ---------------------------------------------------------------------------------
CREATE TABLE networks (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    project_id     TEXT NOT NULL,
    shared         INTEGER NOT NULL DEFAULT 0,
    external       INTEGER NOT NULL DEFAULT 0,
    admin_state_up INTEGER NOT NULL DEFAULT 1,
    status         TEXT NOT NULL DEFAULT 'ACTIVE',
    mtu            INTEGER NOT NULL DEFAULT 1500,
    bridge         TEXT,                     -- the Linux bridge behind it
    vlan           INTEGER,
    created_at     TEXT NOT NULL,
    updated_at     TEXT
);

CREATE TABLE subnets (
    id               TEXT PRIMARY KEY,
    network_id       TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    name             TEXT NOT NULL DEFAULT '',
    project_id       TEXT NOT NULL,
    cidr             TEXT NOT NULL,
    ip_version       INTEGER NOT NULL DEFAULT 4,
    gateway_ip       TEXT,
    enable_dhcp      INTEGER NOT NULL DEFAULT 1,
    allocation_start TEXT NOT NULL,
    allocation_end   TEXT NOT NULL,
    dns_nameservers  TEXT NOT NULL DEFAULT '[]',
    created_at       TEXT NOT NULL,
    updated_at       TEXT
);

CREATE TABLE ports (
    id             TEXT PRIMARY KEY,
    network_id     TEXT NOT NULL REFERENCES networks(id),
    project_id     TEXT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    mac_address    TEXT NOT NULL UNIQUE,
    device_id      TEXT NOT NULL DEFAULT '',
    device_owner   TEXT NOT NULL DEFAULT '',
    status         TEXT NOT NULL DEFAULT 'DOWN',
    admin_state_up INTEGER NOT NULL DEFAULT 1,
    binding_host   TEXT,
    tap_name       TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT
);
CREATE INDEX ports_device ON ports(device_id);

CREATE TABLE ip_allocations (
    port_id    TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
    subnet_id  TEXT NOT NULL REFERENCES subnets(id) ON DELETE CASCADE,
    ip_address TEXT NOT NULL,
    PRIMARY KEY (subnet_id, ip_address)
);

CREATE TABLE security_groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    project_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT
);
CREATE INDEX security_groups_project ON security_groups(project_id);

CREATE TABLE security_group_rules (
    id                TEXT PRIMARY KEY,
    security_group_id TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    project_id        TEXT NOT NULL,
    direction         TEXT NOT NULL,         -- ingress, egress
    ethertype         TEXT NOT NULL DEFAULT 'IPv4',
    protocol          TEXT,                  -- tcp, udp, icmp, or NULL for any
    port_range_min    INTEGER,
    port_range_max    INTEGER,
    remote_ip_prefix  TEXT,
    remote_group_id   TEXT REFERENCES security_groups(id) ON DELETE CASCADE,
    description       TEXT NOT NULL DEFAULT '',
    created_at        TEXT NOT NULL
);

CREATE TABLE port_security_groups (
    port_id           TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
    security_group_id TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    PRIMARY KEY (port_id, security_group_id)
);

-- nova's security_group_instance_association, as in the seed's boot sequence.
CREATE TABLE instance_security_groups (
    instance_uuid     TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    security_group_id TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    PRIMARY KEY (instance_uuid, security_group_id)
);

-- Keypairs, quotas ------------------------------------------------------------------------
CREATE TABLE keypairs (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    type        TEXT NOT NULL DEFAULT 'ssh',
    created_at  TEXT NOT NULL,
    updated_at  TEXT,
    deleted_at  TEXT,
    deleted     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user_id, name, deleted)
);

CREATE TABLE quotas (
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    resource   TEXT NOT NULL,                -- instances, cores, ram, key_pairs, volumes, ...
    hard_limit INTEGER NOT NULL,
    PRIMARY KEY (project_id, resource)
);

-- Notifications and traces -----------------------------------------------------------------
CREATE TABLE notifications (
    id            INTEGER PRIMARY KEY,
    message_id    TEXT NOT NULL UNIQUE,
    event_type    TEXT NOT NULL,             -- compute.instance.create.start, ...
    publisher_id  TEXT NOT NULL,
    priority      TEXT NOT NULL DEFAULT 'INFO',
    request_id    TEXT,
    instance_uuid TEXT,
    payload       TEXT NOT NULL,             -- JSON
    created_at    TEXT NOT NULL
);
CREATE INDEX notifications_instance ON notifications(instance_uuid);

-- Spans recorded as work happens, for `novabox trace`.
CREATE TABLE trace_spans (
    id         INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    span_id    TEXT NOT NULL,
    parent_id  TEXT,
    service    TEXT NOT NULL,                -- api, scheduler, conductor, compute
    name       TEXT NOT NULL,
    start_us   INTEGER NOT NULL,             -- microseconds since the Unix epoch
    duration_us INTEGER NOT NULL,
    attrs      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX trace_spans_request ON trace_spans(request_id);
