-- A flavor can be deleted while servers built from it live on, as in nova: each instance keeps
-- its own copy of its flavor (the `flavor` JSON, and the memory_mb, vcpus, root_gb and
-- ephemeral_gb columns the usage sums read), as nova keeps it in instance_extra. The reference
-- to the flavors row goes: its FOREIGN KEY made DELETE /flavors/{id} fail for any flavor that
-- was ever booted, even after its servers were deleted (issue 14), and a flavor row id could be
-- reused by a later flavor. SQLite drops the column in place, children of `instances` untouched.
ALTER TABLE instances DROP COLUMN flavor_id;
