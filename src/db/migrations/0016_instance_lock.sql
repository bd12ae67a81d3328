-- Issue 16: who locked a server ('owner' or 'admin', as nova's instances.locked_by) and why
-- (nova keeps the reason in system_metadata; novabox has no system_metadata table).
ALTER TABLE instances ADD COLUMN locked_by TEXT;
ALTER TABLE instances ADD COLUMN locked_reason TEXT;
