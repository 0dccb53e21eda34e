-- The backup monitor and the freezer: what each backup did, from the Backup
-- aggregate's events. The row of a backup is the one the policies projection
-- creates when the policy starts it; these columns are the backups
-- projection's.
ALTER TABLE backups
    ADD COLUMN owner_id             uuid,
    ADD COLUMN account_id           uuid,
    ADD COLUMN policy_name          text,
    -- Retries: the first backup of the series and which attempt this is.
    ADD COLUMN retry_of             uuid,
    ADD COLUMN attempt              integer     NOT NULL DEFAULT 0,
    ADD COLUMN dr_status            text        NOT NULL DEFAULT 'none',
    ADD COLUMN frozen               boolean     NOT NULL DEFAULT false,
    ADD COLUMN freezer_name         text,
    ADD COLUMN freezer_description  text,
    ADD COLUMN frozen_at            timestamptz,
    ADD COLUMN deleted_at           timestamptz,
    -- Where Safehold may not delete, the AWS objects were tagged as expired.
    ADD COLUMN deletion_marked_only boolean,
    ADD COLUMN snapshot_count       integer     NOT NULL DEFAULT 0;

-- Freezer names are unique within an organisation.
CREATE UNIQUE INDEX backups_freezer_name ON backups (tenant_id, freezer_name) WHERE frozen;
CREATE INDEX backups_by_start ON backups (tenant_id, started_at DESC, backup_id DESC);

-- What a backup created in AWS, one row per snapshot, AMI or database backup.
CREATE TABLE backup_snapshots (
    tenant_id     uuid        NOT NULL,
    backup_id     uuid        NOT NULL,
    snapshot_id   text        NOT NULL,
    kind          text        NOT NULL,
    region        text        NOT NULL,
    account_id    uuid,
    target_type   text        NOT NULL,
    target_region text        NOT NULL,
    target_id     text        NOT NULL,
    source        text        NOT NULL,
    device        text,
    size_gib      integer,
    state         text        NOT NULL CHECK (state IN ('pending', 'completed', 'failed')),
    created_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    deleted_at    timestamptz,
    PRIMARY KEY (tenant_id, backup_id, snapshot_id)
);

-- A backup's own log, in event order.
CREATE TABLE backup_log (
    tenant_id   uuid        NOT NULL,
    backup_id   uuid        NOT NULL,
    position    bigint      NOT NULL,
    occurred_at timestamptz NOT NULL,
    level       text        NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    message     text        NOT NULL,
    PRIMARY KEY (tenant_id, backup_id, position)
);

-- Policy owners as the backups projection saw them: a backup stays visible to
-- its owner after the policy is deleted (frozen backups outlive it), and a
-- rebuild does not depend on the policies read model.
CREATE TABLE backup_policy_owners (
    tenant_id uuid NOT NULL,
    policy_id uuid NOT NULL,
    owner_id  uuid NOT NULL,
    PRIMARY KEY (tenant_id, policy_id)
);
