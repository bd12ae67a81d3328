-- Volumes attached through compute: cinder's attachment id and time, why a create failed,
-- and nova's device tag (2.49+) on the block device mapping.
ALTER TABLE volumes ADD COLUMN attachment_id TEXT;
ALTER TABLE volumes ADD COLUMN attached_at TEXT;
ALTER TABLE volumes ADD COLUMN fault TEXT;
ALTER TABLE block_device_mappings ADD COLUMN tag TEXT;
CREATE INDEX volumes_project ON volumes(project_id, deleted);
CREATE INDEX bdm_volume ON block_device_mappings(volume_id, deleted);
