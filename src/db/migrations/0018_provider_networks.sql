-- Issue 19, item 4: provider networks (neutron's provider:network_type, physical_network and
-- segmentation_id; the latter is the `vlan` column 0001 made and nothing used). A physical
-- network carries one flat network and each of its VLANs once: the index is the last word
-- when two creates race past the API's check.
ALTER TABLE networks ADD COLUMN network_type TEXT;
ALTER TABLE networks ADD COLUMN physical_network TEXT;
CREATE UNIQUE INDEX networks_physical_segment
    ON networks (physical_network, IFNULL(vlan, 0)) WHERE physical_network IS NOT NULL;
