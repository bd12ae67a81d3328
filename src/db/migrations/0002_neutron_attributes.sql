-- Attributes neutron clients read and write that 0001 did not lay down: descriptions,
-- revision numbers, port security, several allocation pools and host routes per subnet.
-- Added columns have defaults, so rows written by schema v1 stay valid.

ALTER TABLE networks ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE networks ADD COLUMN port_security_enabled INTEGER NOT NULL DEFAULT 1;
ALTER TABLE networks ADD COLUMN revision_number INTEGER NOT NULL DEFAULT 0;

ALTER TABLE subnets ADD COLUMN description TEXT NOT NULL DEFAULT '';
-- JSON list of {"start", "end"}; allocation_start/allocation_end keep the first pool's bounds.
ALTER TABLE subnets ADD COLUMN allocation_pools TEXT NOT NULL DEFAULT '[]';
ALTER TABLE subnets ADD COLUMN host_routes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE subnets ADD COLUMN revision_number INTEGER NOT NULL DEFAULT 0;

ALTER TABLE ports ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE ports ADD COLUMN port_security_enabled INTEGER NOT NULL DEFAULT 1;
ALTER TABLE ports ADD COLUMN revision_number INTEGER NOT NULL DEFAULT 0;
CREATE INDEX ports_network ON ports(network_id);

ALTER TABLE security_groups ADD COLUMN revision_number INTEGER NOT NULL DEFAULT 0;
CREATE INDEX security_group_rules_group ON security_group_rules(security_group_id);
