-- Secrets at rest (AWS secret access keys), AES-256-GCM under a master key.
CREATE TABLE secrets (
    tenant_id  uuid        NOT NULL,
    secret_id  uuid        NOT NULL,
    key_id     text        NOT NULL,
    nonce      bytea       NOT NULL,
    ciphertext bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, secret_id)
);

-- Read model of registered AWS accounts.
CREATE TABLE accounts (
    tenant_id     uuid        NOT NULL,
    account_id    uuid        NOT NULL,
    owner_id      uuid        NOT NULL,
    name          text        NOT NULL,
    number        text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('backup', 'vault')),
    allow_delete  boolean     NOT NULL,
    access_method text        NOT NULL CHECK (access_method IN ('access_keys', 'server_credentials', 'assume_role')),
    access_key_id text,
    secret_id     uuid,
    via_account   uuid,
    role_name     text,
    external_id   text,
    scan_enabled  boolean     NOT NULL,
    regions       text[]      NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);
CREATE INDEX accounts_by_owner ON accounts (tenant_id, owner_id);

-- Inventory of customer resources: a cache refreshed by discovery, not events.
CREATE TABLE resources (
    tenant_id     uuid        NOT NULL,
    account_id    uuid        NOT NULL,
    region        text        NOT NULL,
    resource_type text        NOT NULL CHECK (resource_type IN
                      ('ec2_instance', 'ebs_volume', 'rds_instance', 'aurora_cluster', 'redshift_cluster', 'dynamodb_table')),
    resource_id   text        NOT NULL,
    name          text,
    size_gib      integer,
    tags          jsonb       NOT NULL DEFAULT '{}',
    details       jsonb       NOT NULL DEFAULT '{}',
    refreshed_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account_id, region, resource_type, resource_id)
);

CREATE TABLE discovery_runs (
    tenant_id    uuid        NOT NULL,
    account_id   uuid        NOT NULL,
    region       text        NOT NULL,
    finished_at  timestamptz NOT NULL,
    resources    integer     NOT NULL,
    error        text,
    PRIMARY KEY (tenant_id, account_id, region)
);
