-- neutron's L3 (issue 19): routers and floating IPs. A router's ports (its interfaces and its
-- gateway) are ordinary ports whose device_id is the router and whose device_owner says
-- which (network:router_interface, network:router_gateway), as in neutron; a floating IP
-- holds a port of the external network (network:floatingip) for its address.

CREATE TABLE routers (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL,
    name            TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    admin_state_up  INTEGER NOT NULL DEFAULT 1,
    status          TEXT NOT NULL DEFAULT 'ACTIVE',
    -- external_gateway_info: the external network and its port, NULL without a gateway.
    gw_network_id   TEXT REFERENCES networks(id),
    gw_port_id      TEXT REFERENCES ports(id) ON DELETE SET NULL,
    enable_snat     INTEGER NOT NULL DEFAULT 1,
    -- extraroute: JSON list of {"destination", "nexthop"}.
    routes          TEXT NOT NULL DEFAULT '[]',
    revision_number INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT
);
CREATE INDEX routers_project ON routers(project_id);

CREATE TABLE floatingips (
    id                  TEXT PRIMARY KEY,
    project_id          TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    floating_network_id TEXT NOT NULL REFERENCES networks(id),
    -- The port on the external network that holds the address.
    floating_port_id    TEXT NOT NULL REFERENCES ports(id),
    floating_ip_address TEXT NOT NULL,
    -- The association: the internal port, the fixed IP DNATed to, the router doing it.
    port_id             TEXT REFERENCES ports(id),
    fixed_ip_address    TEXT,
    router_id           TEXT REFERENCES routers(id),
    revision_number     INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    updated_at          TEXT
);
CREATE INDEX floatingips_port ON floatingips(port_id);
CREATE UNIQUE INDEX floatingips_address ON floatingips(floating_network_id, floating_ip_address);

-- A deleted internal port (its server went) leaves the floating IP unassociated, as neutron
-- disassociates it, rather than pointing at nothing (before the row goes, so the foreign key
-- never sees a dangling reference).
CREATE TRIGGER floatingips_port_deleted BEFORE DELETE ON ports
BEGIN
    UPDATE floatingips SET port_id = NULL, fixed_ip_address = NULL, router_id = NULL,
           revision_number = revision_number + 1
     WHERE port_id = OLD.id;
END;
