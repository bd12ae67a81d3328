-- Issues 16 and 17: server tags (2.26), the password a guest posts to the metadata service
-- (nova keeps it in system_metadata, which novabox does not have), and what nova's instance
-- actions show from 2.58 (the action's `updated_at`) and 2.84 (an event's `details`).
CREATE TABLE instance_tags (
    instance_uuid TEXT NOT NULL REFERENCES instances(uuid) ON DELETE CASCADE,
    tag           TEXT NOT NULL,
    PRIMARY KEY (instance_uuid, tag)
);
-- The list filters look servers up by tag.
CREATE INDEX instance_tags_tag ON instance_tags(tag);

CREATE TABLE instance_passwords (
    instance_uuid TEXT PRIMARY KEY REFERENCES instances(uuid) ON DELETE CASCADE,
    password      TEXT NOT NULL
);

-- nova sets it when the action starts and moves it with each event.
ALTER TABLE instance_actions ADD COLUMN updated_at TEXT;
UPDATE instance_actions SET updated_at = coalesce(finish_time, start_time);
CREATE INDEX instance_actions_request ON instance_actions(instance_uuid, request_id);

ALTER TABLE instance_action_events ADD COLUMN details TEXT;
CREATE INDEX instance_action_events_action ON instance_action_events(action_id);
