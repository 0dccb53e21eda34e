CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    tx_id      bigint      NOT NULL DEFAULT 0,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    tenant_id            uuid        PRIMARY KEY,
    slug                 text        NOT NULL UNIQUE,
    name                 text        NOT NULL,
    root_user_id         uuid        NOT NULL,
    time_zone            text        NOT NULL,
    audit_retention_days integer     NOT NULL,
    session_idle_minutes integer     NOT NULL,
    created_at           timestamptz NOT NULL
);

CREATE TABLE users (
    tenant_id                uuid        NOT NULL,
    user_id                  uuid        NOT NULL,
    username                 text        NOT NULL,
    email                    text,
    kind                     text        NOT NULL CHECK (kind IN ('root', 'independent', 'managed', 'delegate')),
    manager_id               uuid,
    delegate_of              uuid,
    allow_recovery           boolean     NOT NULL DEFAULT false,
    allow_account_changes    boolean     NOT NULL DEFAULT false,
    allow_backup_changes     boolean     NOT NULL DEFAULT false,
    max_accounts             integer,
    max_instances            integer,
    max_non_instance_ebs_gib integer,
    max_rds_gib              integer,
    max_redshift_gib         integer,
    max_dynamodb_gib         integer,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE UNIQUE INDEX users_username ON users (tenant_id, lower(username));

CREATE TABLE api_keys (
    tenant_id  uuid        NOT NULL,
    key_id     uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    name       text        NOT NULL,
    prefix     text        NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE INDEX api_keys_by_user ON api_keys (tenant_id, user_id);

CREATE TABLE audit_log (
    tenant_id         uuid        NOT NULL,
    position          bigint      NOT NULL,
    occurred_at       timestamptz NOT NULL,
    event_type        text        NOT NULL,
    aggregate_type    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    description       text        NOT NULL,
    user_id           uuid,
    username          text,
    delegate_id       uuid,
    delegate_username text,
    request_id        text        NOT NULL,
    PRIMARY KEY (tenant_id, position)
);
CREATE INDEX audit_log_by_time ON audit_log (tenant_id, occurred_at);

-- Names of users and accounts as the audit projection has seen them, so it
-- describes events without reading another projection's tables.
CREATE TABLE audit_names (
    tenant_id uuid NOT NULL,
    entity_id uuid NOT NULL,
    name      text NOT NULL,
    PRIMARY KEY (tenant_id, entity_id)
);
