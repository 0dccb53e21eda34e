-- The recovery monitor: one row per recovery, what it created and its log.
CREATE TABLE recoveries (
    tenant_id           uuid        NOT NULL,
    recovery_id         uuid        NOT NULL,
    backup_id           uuid        NOT NULL,
    policy_id           uuid        NOT NULL,
    kind                text        NOT NULL,
    what                text        NOT NULL,
    source_account_id   uuid        NOT NULL,
    source_region       text        NOT NULL,
    target_account_id   uuid        NOT NULL,
    target_region       text        NOT NULL,
    one_off_credentials boolean     NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('in_progress', 'succeeded', 'partially_succeeded', 'failed')),
    message             text,
    requested_by        uuid,
    delegate_id         uuid,
    requested_at        timestamptz NOT NULL,
    finished_at         timestamptz,
    PRIMARY KEY (tenant_id, recovery_id)
);
CREATE INDEX recoveries_by_time ON recoveries (tenant_id, requested_at DESC, recovery_id);
CREATE INDEX recoveries_by_policy ON recoveries (tenant_id, policy_id, requested_at DESC);
CREATE INDEX recoveries_by_backup ON recoveries (tenant_id, backup_id);

CREATE TABLE recovery_resources (
    tenant_id   uuid   NOT NULL,
    recovery_id uuid   NOT NULL,
    kind        text   NOT NULL,
    resource_id text   NOT NULL,
    position    bigint NOT NULL,
    PRIMARY KEY (tenant_id, recovery_id, kind, resource_id)
);

CREATE TABLE recovery_log (
    tenant_id   uuid        NOT NULL,
    recovery_id uuid        NOT NULL,
    position    bigint      NOT NULL,
    occurred_at timestamptz NOT NULL,
    message     text        NOT NULL,
    PRIMARY KEY (tenant_id, recovery_id, position)
);

-- One-off credentials given for a single recovery, sealed like account
-- secrets, removed when the recovery ends. Not a read model.
CREATE TABLE recovery_credentials (
    tenant_id     uuid NOT NULL,
    recovery_id   uuid NOT NULL,
    access_key_id text NOT NULL,
    secret_id     uuid NOT NULL,
    PRIMARY KEY (tenant_id, recovery_id)
);
