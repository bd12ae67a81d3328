-- Ports a user created and handed to a server are unbound, not deleted, when the server goes
-- (nova's preserve_on_delete); ports novabox made for the server are deleted with it.
ALTER TABLE ports ADD COLUMN preserve_on_delete INTEGER NOT NULL DEFAULT 0;
