-- Disaster recovery: each policy's DR settings, and the copies each backup's
-- DR run made (the backup's DR status is `backups.dr_status`).
ALTER TABLE policies
    ADD COLUMN dr_enabled          boolean NOT NULL DEFAULT false,
    ADD COLUMN dr_every            integer NOT NULL DEFAULT 1,
    ADD COLUMN dr_regions          text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN dr_timeout_hours    integer NOT NULL DEFAULT 24,
    ADD COLUMN dr_vault_account_id uuid,
    ADD COLUMN dr_keep_originals   boolean NOT NULL DEFAULT true;

CREATE TABLE backup_dr_copies (
    tenant_id     uuid        NOT NULL,
    backup_id     uuid        NOT NULL,
    original_id   text        NOT NULL,
    region        text        NOT NULL,
    account_id    uuid        NOT NULL,
    copy_id       text        NOT NULL,
    kind          text        NOT NULL,
    source_region text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('pending', 'completed', 'failed')),
    created_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    deleted_at    timestamptz,
    PRIMARY KEY (tenant_id, backup_id, original_id, region, account_id)
);
CREATE INDEX backup_dr_copies_by_destination ON backup_dr_copies (tenant_id, account_id, region, state);

-- The copy scheduler's state (not a read model): copies in flight per AWS
-- account number, destination region and service, which AWS limits. A row is
-- taken before a copy starts and removed once it completes or fails.
CREATE TABLE dr_copy_slots (
    aws_account text        NOT NULL,
    region      text        NOT NULL,
    service     text        NOT NULL,
    tenant_id   uuid        NOT NULL,
    backup_id   uuid        NOT NULL,
    original_id text        NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, backup_id, original_id, region)
);
CREATE INDEX dr_copy_slots_by_destination ON dr_copy_slots (aws_account, region, service);

-- Tenants whose copies wait for a slot at a destination (fair share: while
-- others wait, no tenant takes more than its share of the limit).
CREATE TABLE dr_copy_waiters (
    aws_account text        NOT NULL,
    region      text        NOT NULL,
    service     text        NOT NULL,
    tenant_id   uuid        NOT NULL,
    seen_at     timestamptz NOT NULL,
    PRIMARY KEY (aws_account, region, service, tenant_id)
);
