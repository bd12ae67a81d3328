-- Indexes for what every boot asks.
-- Placement (usage per host) and quotas (usage per project) sum a few columns over every live
-- instance. With those columns in the index, SQLite sums from the index alone instead of
-- visiting each wide instance row.
DROP INDEX instances_host;
CREATE INDEX instances_host ON instances(host, deleted, vcpus, memory_mb, root_gb, ephemeral_gb);
DROP INDEX instances_project;
CREATE INDEX instances_project ON instances(project_id, deleted, vcpus, memory_mb);
