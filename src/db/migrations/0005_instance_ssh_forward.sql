-- User networking: the host address:port qemu forwards to the guest's port 22, as the compute
-- host reported it (compute has no database). NULL in bridge mode and for other drivers.
ALTER TABLE instances ADD COLUMN ssh_forward TEXT;
