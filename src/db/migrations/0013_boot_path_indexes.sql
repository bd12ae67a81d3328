-- Indexes for what every boot asks.
-- Placement (usage per host) and quotas (usage per project) sum a few columns over every live
-- instance. With those columns in the index, SQLite sums from the index alone instead of
-- visiting each wide instance row.
DROP INDEX instances_host;
CREATE INDEX instances_host ON instances(host, deleted, vcpus, memory_mb, root_gb, ephemeral_gb);
DROP INDEX instances_project;
CREATE INDEX instances_project ON instances(project_id, deleted, vcpus, memory_mb);
-- A new port's address starts after its subnet's newest allocation: an index on subnet_id
-- keeps each subnet's rows in rowid (insertion) order, so that row is one lookup away.
CREATE INDEX ip_allocations_newest ON ip_allocations(subnet_id);
