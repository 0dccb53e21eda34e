-- The event log. Column set up to `metadata` is what postgres-es writes; the
-- rest is filled by the database:
--   tenant_id        copied from the metadata so every event is tenant-scoped;
--   global_position  an identity, unique and increasing in *allocation* order;
--   tx_id            the writing transaction. Readers only take events whose
--                    transaction id is below the oldest one still running
--                    (pg_snapshot_xmin), ordered by (tx_id, global_position):
--                    a transaction that commits late can then never slip an
--                    event in behind a reader's checkpoint.
CREATE TABLE events (
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL CHECK (sequence >= 0),
    event_type      text   NOT NULL,
    event_version   text   NOT NULL,
    payload         json   NOT NULL,
    metadata        json   NOT NULL,
    tenant_id       uuid   GENERATED ALWAYS AS ((metadata ->> 'tenant_id')::uuid) STORED
                           CHECK (tenant_id IS NOT NULL),
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    tx_id           xid8   NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_feed ON events (tx_id, global_position);
CREATE INDEX events_by_tenant ON events (tenant_id, global_position);

-- postgres-es expects this table; aggregates are small and not snapshotted yet.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
