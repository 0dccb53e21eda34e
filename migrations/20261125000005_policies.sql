-- Read models of schedules and policies.
CREATE TABLE schedules (
    tenant_id        uuid        NOT NULL,
    schedule_id      uuid        NOT NULL,
    owner_id         uuid        NOT NULL,
    name             text        NOT NULL,
    description      text        NOT NULL,
    -- The timing rule as the domain's Recurrence value (start/end UTC,
    -- period, weekdays, disabled windows in wall-clock time).
    recurrence       jsonb       NOT NULL,
    -- Event position of the last change: the scheduler follows changes by it.
    changed_position bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, schedule_id)
);
CREATE INDEX schedules_by_owner ON schedules (tenant_id, owner_id, name);
CREATE INDEX schedules_by_change ON schedules (changed_position);

CREATE TABLE policies (
    tenant_id             uuid        NOT NULL,
    policy_id             uuid        NOT NULL,
    owner_id              uuid        NOT NULL,
    account_id            uuid        NOT NULL,
    name                  text        NOT NULL,
    description           text        NOT NULL,
    enabled               boolean     NOT NULL,
    generations           integer     NOT NULL,
    auto_target_removal   text        NOT NULL,
    success_criterion     text        NOT NULL,
    retries               integer     NOT NULL,
    retry_wait_minutes    integer     NOT NULL,
    failures_before_alert integer     NOT NULL,
    from_tag_scan         boolean     NOT NULL,
    running_backup_id     uuid,
    last_backup_at        timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, policy_id)
);
CREATE UNIQUE INDEX policies_name_per_owner ON policies (tenant_id, owner_id, name);
CREATE INDEX policies_by_account ON policies (tenant_id, account_id);

CREATE TABLE policy_targets (
    tenant_id     uuid  NOT NULL,
    policy_id     uuid  NOT NULL,
    account_id    uuid  NOT NULL,
    resource_type text  NOT NULL,
    region        text  NOT NULL,
    resource_id   text  NOT NULL,
    -- EC2 instances: mode and volume selection.
    instance_mode text,
    volumes       jsonb,
    PRIMARY KEY (tenant_id, policy_id, resource_type, region, resource_id)
);
CREATE INDEX policy_targets_by_resource ON policy_targets (tenant_id, account_id, region, resource_type, resource_id);

CREATE TABLE policy_schedules (
    tenant_id   uuid NOT NULL,
    policy_id   uuid NOT NULL,
    schedule_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, policy_id, schedule_id)
);
CREATE INDEX policy_schedules_by_schedule ON policy_schedules (tenant_id, schedule_id);

-- One row per backup run of a policy.
CREATE TABLE backups (
    tenant_id   uuid        NOT NULL,
    backup_id   uuid        NOT NULL,
    policy_id   uuid        NOT NULL,
    trigger     text        NOT NULL CHECK (trigger IN ('scheduled', 'ad_hoc', 'retry')),
    schedule_id uuid,
    occurrence  timestamptz,
    status      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (tenant_id, backup_id)
);
CREATE INDEX backups_by_policy ON backups (tenant_id, policy_id, started_at DESC);

-- The scheduler's own state (not a read model): when each schedule is next
-- due, and how far it has followed schedule changes.
CREATE TABLE scheduler_due (
    tenant_id   uuid        NOT NULL,
    schedule_id uuid        NOT NULL,
    next_due    timestamptz,
    PRIMARY KEY (tenant_id, schedule_id)
);
CREATE INDEX scheduler_due_by_time ON scheduler_due (next_due) WHERE next_due IS NOT NULL;

CREATE TABLE scheduler_cursor (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seen_position bigint  NOT NULL
);
