-- Seller fan-out, ERP-link pair resolution and operator actions.

-- The listing command that planned a synchronization, for the audit timeline.
ALTER TABLE commands ADD COLUMN parent_id bigint REFERENCES commands (id);
CREATE INDEX commands_parent ON commands (parent_id) WHERE parent_id IS NOT NULL;

-- How often a dead letter was published again after a fix.
ALTER TABLE dead_letters ADD COLUMN republish_count integer NOT NULL DEFAULT 0;

-- `erp-sync status` and the demo count duplicates without scanning the whole trail.
CREATE INDEX audit_duplicates ON audit (id) WHERE step = 'duplicate';
