-- One snapshot per aggregate, replaced by the statement that appends the
-- aggregate's events (see SnapshotRepository in api/src/commands.rs), so the
-- key is the aggregate alone. Snapshots are a cache of the event log: any
-- row may be deleted at any time, and the aggregate is then replayed from its
-- events on its next load.
DELETE FROM snapshots;
ALTER TABLE snapshots DROP CONSTRAINT snapshots_pkey;
ALTER TABLE snapshots ADD PRIMARY KEY (aggregate_type, aggregate_id);
