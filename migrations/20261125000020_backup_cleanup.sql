-- Retention and the daily cleanup.

-- An initial AMI that outlived its backup's deletion: it is still its
-- instance's newest, and goes once a newer one has completed.
ALTER TABLE backup_snapshots ADD COLUMN kept boolean NOT NULL DEFAULT false;

-- Deleted backups, oldest first: the cleanup purges their records.
CREATE INDEX backups_deleted ON backups (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;

-- The daily cleanup of each organisation: the last local day claimed. A day
-- is claimed (and its job enqueued) in one transaction, by whichever process
-- gets there first, so each organisation's cleanup runs once a day. Not a
-- read model: a projection rebuild leaves it alone.
CREATE TABLE cleanup_runs (
    tenant_id  uuid        PRIMARY KEY,
    last_day   date        NOT NULL,
    last_due   timestamptz NOT NULL,
    claimed_at timestamptz NOT NULL
);
