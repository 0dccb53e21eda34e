-- Secrets and sessions: state outside the event log (events never hold
-- password or key hashes).

CREATE TABLE password_credentials (
    tenant_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    hash       text        NOT NULL,
    -- earlier hashes, newest first, for the no-reuse rule
    history    text[]      NOT NULL DEFAULT '{}',
    changed_at timestamptz NOT NULL,
    -- chosen by someone else (root): must be changed at the next sign-in
    must_change boolean    NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE api_key_secrets (
    tenant_id uuid  NOT NULL,
    key_id    uuid  NOT NULL,
    user_id   uuid  NOT NULL,
    -- SHA-256 of the random secret: keys have 256 bits of entropy, so a fast
    -- hash is enough and keeps every API call cheap.
    hash      bytea NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE UNIQUE INDEX api_key_secrets_key ON api_key_secrets (key_id);

CREATE TABLE sessions (
    tenant_id            uuid        NOT NULL,
    session_id           uuid        NOT NULL,
    user_id              uuid        NOT NULL,
    created_at           timestamptz NOT NULL,
    last_seen_at         timestamptz NOT NULL,
    idle_minutes         integer     NOT NULL,
    must_change_password boolean     NOT NULL DEFAULT false,
    revoked_at           timestamptz,
    PRIMARY KEY (tenant_id, session_id)
);
CREATE UNIQUE INDEX sessions_id ON sessions (session_id);

CREATE TABLE login_attempts (
    tenant_id    uuid        NOT NULL,
    username     text        NOT NULL,
    failures     integer     NOT NULL DEFAULT 0,
    locked_until timestamptz,
    PRIMARY KEY (tenant_id, username)
);
