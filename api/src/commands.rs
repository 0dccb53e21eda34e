//! Runs commands on aggregates with the request's metadata, retries on
//! optimistic-concurrency conflicts, and waits for the read models so the
//! response (and the client's next read) sees the change.
//!
//! Aggregates are loaded from their snapshot (see [`SnapshotRepository`]):
//! a command costs one read and one write whatever the length of its stream.

use std::time::Duration;

use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventStore};
use postgres_es::PostgresEventRepository;
use safehold_domain::account::{Account, AccountCommand};
use safehold_domain::backup::{Backup, BackupCommand, BackupState};
use safehold_domain::ids::stream_id;
use safehold_domain::policy::{Policy, PolicyCommand, PolicyState};
use safehold_domain::recovery::{Recovery, RecoveryCommand};
use safehold_domain::schedule::{Schedule, ScheduleCommand};
use safehold_domain::tenant::{Tenant, TenantCommand, TenantState};
use safehold_domain::user::{User, UserCommand, UserState};
use safehold_domain::{CommandMetadata, DomainError, TenantId, UserId};
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::error::ApiError;

const CONFLICT_RETRIES: usize = 5;
const READ_MODEL_WAIT: Duration = Duration::from_secs(5);

/// The event store of the command side: events plus one snapshot per
/// aggregate, which is the starting point of every load.
pub type Store<A> = PersistedEventStore<SnapshotRepository, A>;

/// Runs an aggregate's commands against [`Store`].
pub type Cqrs<A> = CqrsFramework<A, Store<A>>;

pub struct Commands {
    pool: PgPool,
    tenants: Cqrs<Tenant>,
    users: Cqrs<User>,
    accounts: Cqrs<Account>,
    policies: Cqrs<Policy>,
    schedules: Cqrs<Schedule>,
    backups: Cqrs<Backup>,
    recoveries: Cqrs<Recovery>,
}

/// The command framework of one aggregate type, as the API runs it.
pub fn framework<A: Aggregate<Services = ()>>(pool: &PgPool) -> Cqrs<A> {
    CqrsFramework::new(store(pool), vec![], ())
}

/// The store an aggregate is loaded from and appended to.
pub fn store<A: Aggregate>(pool: &PgPool) -> Store<A> {
    // "Aggregate store": cqrs-es reads the snapshot instead of the stream.
    // `SnapshotRepository::get_snapshot` returns the aggregate as of its
    // last event (snapshot plus later events, or a replay when a snapshot no
    // longer fits the aggregate's shape), so the events stay the source of
    // truth.
    PersistedEventStore::new_aggregate_store(SnapshotRepository::new(pool.clone()))
}

/// Events and aggregate snapshots in Postgres.
///
/// Each aggregate has at most one row in `snapshots`, rewritten by the
/// statement that appends the event crossing a multiple of
/// [`SNAPSHOT_EVERY`], so a command costs one read (the snapshot and the
/// fewer than `SNAPSHOT_EVERY` events after it) and one single-statement
/// write, instead of a read of the whole stream, `BEGIN`, one `INSERT` per
/// event and `COMMIT`. Snapshots are a cache of the events:
///
/// - a snapshot that does not deserialise into the aggregate, or does not
///   serialise back to the same JSON (a field added, removed or renamed), is
///   ignored and the stream replayed, and the next append replaces it;
/// - events written after the snapshot (by a writer using the plain event
///   store) are applied on load;
/// - a change in how existing events fold into an existing field is not
///   visible in the JSON: the migration making it must delete that
///   aggregate type's snapshots (`DELETE FROM snapshots WHERE aggregate_type = ...`).
///
/// Event upcasters are not applied to the events folded on load: none
/// exist; if one is added, apply it in `fold`.
pub struct SnapshotRepository {
    pool: PgPool,
    events: PostgresEventRepository,
}

impl SnapshotRepository {
    pub fn new(pool: PgPool) -> Self {
        Self {
            events: PostgresEventRepository::new(pool.clone()),
            pool,
        }
    }
}

/// A snapshot is written when an append reaches a multiple of this many
/// events: loads then apply fewer than this many events to it, and only
/// one command in this many writes a snapshot.
pub const SNAPSHOT_EVERY: i64 = 16;

/// The snapshot and the events after it, in one statement (one snapshot of
/// the database, so the two agree).
const LOAD: &str = "
SELECT s.last_sequence, s.current_snapshot, s.payload AS snapshot, e.sequence, e.payload
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN snapshots s ON s.aggregate_type = $1 AND s.aggregate_id = $2
  LEFT JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = $2
                    AND e.sequence > coalesce(s.last_sequence, 0)
 ORDER BY e.sequence";

/// Appends events in one autocommitted statement: all or none, and a
/// sequence number already taken fails it with a unique violation (the
/// optimistic-concurrency conflict).
const APPEND: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload::json, e.metadata::json
  FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY
       AS e (sequence, event_type, event_version, payload, metadata, n)
 ORDER BY e.n";

fn append_and_snapshot() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH appended AS ({APPEND}
 RETURNING sequence)
INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
SELECT $1, $2, max(sequence), $8, $9::json FROM appended
    ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
   SET last_sequence = EXCLUDED.last_sequence,
       current_snapshot = EXCLUDED.current_snapshot,
       payload = EXCLUDED.payload
 WHERE snapshots.last_sequence < EXCLUDED.last_sequence"
        )
    })
}

fn persistence_error(e: sqlx::Error) -> PersistenceError {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            PersistenceError::ConnectionError(Box::new(e))
        }
        _ => PersistenceError::UnknownError(Box::new(e)),
    }
}

fn json_error(e: serde_json::Error) -> PersistenceError {
    PersistenceError::DeserializationError(Box::new(e))
}

/// The aggregate a stored snapshot describes, if it still has the
/// aggregate's exact shape.
fn snapshot_state<A: Aggregate>(stored: &Value) -> Option<A> {
    let aggregate = A::deserialize(stored).ok()?;
    (serde_json::to_value(&aggregate).ok()? == *stored).then_some(aggregate)
}

fn fold<A: Aggregate>(aggregate: &mut A, payload: Value) -> Result<(), PersistenceError> {
    aggregate.apply(serde_json::from_value(payload).map_err(json_error)?);
    Ok(())
}

impl PersistedEventRepository for SnapshotRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    /// The aggregate as of its last event: the snapshot plus the events
    /// after it, or a replay of the whole stream.
    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let rows = sqlx::query(LOAD)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let stored: Option<Value> = first.try_get("snapshot").map_err(persistence_error)?;
        let last_sequence: Option<i64> =
            first.try_get("last_sequence").map_err(persistence_error)?;
        let current_snapshot: Option<i64> = first
            .try_get("current_snapshot")
            .map_err(persistence_error)?;
        let mut later = Vec::with_capacity(rows.len());
        for row in &rows {
            let sequence: Option<i64> = row.try_get("sequence").map_err(persistence_error)?;
            if let Some(sequence) = sequence {
                let payload: Value = row.try_get("payload").map_err(persistence_error)?;
                later.push((sequence, payload));
            }
        }
        let (mut aggregate, mut sequence, events) =
            match stored.as_ref().map(|s| (s, snapshot_state::<A>(s))) {
                Some((stored, Some(aggregate))) => {
                    if later.is_empty() {
                        // Unchanged since the snapshot: it is the answer.
                        return Ok(Some(SerializedSnapshot {
                            aggregate_id: aggregate_id.to_string(),
                            aggregate: stored.clone(),
                            current_sequence: last_sequence.unwrap_or(0) as usize,
                            current_snapshot: current_snapshot.unwrap_or(0) as usize,
                        }));
                    }
                    (aggregate, last_sequence.unwrap_or(0), later)
                }
                Some((_, None)) => {
                    tracing::debug!(
                        aggregate_type = A::TYPE,
                        aggregate_id,
                        "snapshot does not fit the aggregate; replaying its events"
                    );
                    let all = self.events.get_events::<A>(aggregate_id).await?;
                    let all = all
                        .into_iter()
                        .map(|e| (e.sequence as i64, e.payload))
                        .collect();
                    (A::default(), 0, all)
                }
                None => (A::default(), 0, later),
            };
        for (at, payload) in events {
            fold(&mut aggregate, payload)?;
            sequence = at;
        }
        if sequence == 0 {
            return Ok(None);
        }
        Ok(Some(SerializedSnapshot {
            aggregate_id: aggregate_id.to_string(),
            aggregate: serde_json::to_value(&aggregate).map_err(json_error)?,
            current_sequence: sequence as usize,
            current_snapshot: current_snapshot.unwrap_or(0) as usize,
        }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        // cqrs-es (aggregate store) hands over the new state with every
        // append; keep it only at a multiple of `SNAPSHOT_EVERY`.
        let crosses =
            (first.sequence as i64 - 1) / SNAPSHOT_EVERY != last.sequence as i64 / SNAPSHOT_EVERY;
        let snapshot_update = snapshot_update.filter(|_| crosses);
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
        let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
        let metadata: Vec<String> = events.iter().map(|e| e.metadata.to_string()).collect();
        let query = match &snapshot_update {
            Some(_) => sqlx::query(append_and_snapshot()),
            None => sqlx::query(APPEND),
        }
        .bind(A::TYPE)
        .bind(first.aggregate_id.as_str())
        .bind(sequences)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata);
        let query = match snapshot_update {
            Some((_, aggregate, counter)) => query.bind(counter as i64).bind(aggregate.to_string()),
            None => query,
        };
        query.execute(&self.pool).await.map_err(persistence_error)?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.events.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.events.stream_all_events::<A>().await
    }
}

impl Commands {
    pub fn new(pool: PgPool) -> Self {
        Self {
            tenants: framework(&pool),
            users: framework(&pool),
            accounts: framework(&pool),
            policies: framework(&pool),
            schedules: framework(&pool),
            backups: framework(&pool),
            recoveries: framework(&pool),
            pool,
        }
    }

    async fn run<A: Aggregate<Error = DomainError>>(
        &self,
        cqrs: &Cqrs<A>,
        stream: String,
        command: A::Command,
        meta: &CommandMetadata,
    ) -> Result<(), ApiError>
    where
        A::Command: Clone,
    {
        let mut attempt = 0;
        loop {
            match cqrs
                .execute_with_metadata(&stream, command.clone(), meta.to_map())
                .await
            {
                Err(AggregateError::AggregateConflict) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
                Ok(()) => break,
            }
        }
        safehold_projections::runtime::notify_committed(&self.pool).await;
        let caught_up = safehold_projections::runtime::wait_for_stream(
            &self.pool,
            A::TYPE,
            &stream,
            READ_MODEL_WAIT,
        )
        .await?;
        if !caught_up {
            tracing::warn!(stream, "read models did not catch up in time");
        }
        Ok(())
    }

    pub async fn tenant(
        &self,
        meta: &CommandMetadata,
        command: TenantCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, meta.tenant_id.0);
        self.run(&self.tenants, stream, command, meta).await
    }

    pub async fn user(
        &self,
        meta: &CommandMetadata,
        user: UserId,
        command: UserCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, user.0);
        self.run(&self.users, stream, command, meta).await
    }

    pub async fn account(
        &self,
        meta: &CommandMetadata,
        account: uuid::Uuid,
        command: AccountCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, account);
        self.run(&self.accounts, stream, command, meta).await
    }

    pub async fn policy(
        &self,
        meta: &CommandMetadata,
        policy: uuid::Uuid,
        command: PolicyCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, policy);
        self.run(&self.policies, stream, command, meta).await
    }

    pub async fn schedule(
        &self,
        meta: &CommandMetadata,
        schedule: uuid::Uuid,
        command: ScheduleCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, schedule);
        self.run(&self.schedules, stream, command, meta).await
    }

    pub async fn backup(
        &self,
        meta: &CommandMetadata,
        backup: uuid::Uuid,
        command: BackupCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, backup);
        self.run(&self.backups, stream, command, meta).await
    }

    pub async fn recovery(
        &self,
        meta: &CommandMetadata,
        recovery: uuid::Uuid,
        command: RecoveryCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, recovery);
        self.run(&self.recoveries, stream, command, meta).await
    }

    /// The current state of a backup, from the event log.
    pub async fn load_backup(
        &self,
        tenant: TenantId,
        backup: uuid::Uuid,
    ) -> Result<Option<BackupState>, ApiError> {
        let context = store::<Backup>(&self.pool)
            .load_aggregate(&stream_id(tenant, backup))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.state)
    }

    /// The current state of a live policy, from the event log.
    pub async fn load_policy(
        &self,
        tenant: TenantId,
        policy: uuid::Uuid,
    ) -> Result<Option<PolicyState>, ApiError> {
        let context = store::<Policy>(&self.pool)
            .load_aggregate(&stream_id(tenant, policy))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.state.filter(|s| !s.removed))
    }

    /// The current state of a tenant, from the event log.
    pub async fn load_tenant(&self, tenant: TenantId) -> Result<Option<TenantState>, ApiError> {
        let context = store::<Tenant>(&self.pool)
            .load_aggregate(&stream_id(tenant, tenant.0))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.created)
    }

    /// The current state of a live (not deleted) user, from the event log.
    pub async fn load_user(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Option<UserState>, ApiError> {
        let context = store::<User>(&self.pool)
            .load_aggregate(&stream_id(tenant, user.0))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.state.filter(|s| !s.deleted))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safehold_domain::access::UserKind;
    use safehold_domain::user::ResourceLimits;
    use uuid::Uuid;

    use super::*;

    async fn database() -> PgPool {
        let admin = std::env::var("SAFEHOLD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let url = safehold_projections::db::create_scratch_database(&admin, "sh_t")
            .await
            .expect("create a test database (is Postgres running?)");
        let pool = safehold_projections::db::connect(&url, 5).await.unwrap();
        safehold_projections::db::migrate(&pool).await.unwrap();
        pool
    }

    fn meta(tenant: TenantId) -> HashMap<String, String> {
        CommandMetadata {
            tenant_id: tenant,
            user_id: None,
            delegate_id: None,
            request_id: "test".into(),
            occurred_at: chrono::Utc::now(),
        }
        .to_map()
    }

    fn sign_in() -> UserCommand {
        UserCommand::RecordSignIn {
            session_id: Uuid::new_v4(),
            method: "password".into(),
        }
    }

    /// Sequence and state from a replay of the whole stream.
    async fn replayed(pool: &PgPool, stream: &str) -> (usize, Value) {
        let context = PersistedEventStore::<_, User>::new_event_store(
            PostgresEventRepository::new(pool.clone()),
        )
        .load_aggregate(stream)
        .await
        .unwrap();
        (
            context.current_sequence,
            serde_json::to_value(&context.aggregate).unwrap(),
        )
    }

    /// Sequence and state as commands see them.
    async fn loaded(pool: &PgPool, stream: &str) -> (usize, Value) {
        let context = store::<User>(pool).load_aggregate(stream).await.unwrap();
        (
            context.current_sequence,
            serde_json::to_value(&context.aggregate).unwrap(),
        )
    }

    async fn snapshot(pool: &PgPool, stream: &str) -> (i64, Value) {
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = $1")
            .bind(stream)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn loads_from_snapshots_agree_with_a_replay_of_the_log() {
        let pool = database().await;
        let tenant = TenantId(Uuid::new_v4());
        let user = UserId(Uuid::new_v4());
        let stream = stream_id(tenant, user.0);
        let cqrs = framework::<User>(&pool);
        assert_eq!(loaded(&pool, &stream).await.0, 0, "a new stream");
        let create = UserCommand::Create {
            id: user,
            tenant_id: tenant,
            username: "snap".into(),
            email: None,
            kind: UserKind::Independent,
            limits: ResourceLimits::default(),
            must_change_password: false,
        };
        cqrs.execute_with_metadata(&stream, create, meta(tenant))
            .await
            .unwrap();
        let sign_ins = |n: usize| {
            let cqrs = &cqrs;
            let stream = &stream;
            async move {
                for _ in 0..n {
                    cqrs.execute_with_metadata(stream, sign_in(), meta(tenant))
                        .await
                        .unwrap();
                }
            }
        };
        let every = SNAPSHOT_EVERY as usize;
        sign_ins(every + 4).await;
        let expected = replayed(&pool, &stream).await;
        assert_eq!(expected.0, every + 5);
        assert_eq!(loaded(&pool, &stream).await, expected);
        assert_eq!(snapshot(&pool, &stream).await.0, SNAPSHOT_EVERY);

        // Writers that do not maintain snapshots: their events are applied.
        let plain = postgres_es::postgres_cqrs::<User>(pool.clone(), vec![], ());
        for _ in 0..2 {
            plain
                .execute_with_metadata(&stream, sign_in(), meta(tenant))
                .await
                .unwrap();
        }
        let expected = replayed(&pool, &stream).await;
        assert_eq!(expected.0, every + 7);
        assert_eq!(loaded(&pool, &stream).await, expected);
        sign_ins(every - 7).await;
        let expected = replayed(&pool, &stream).await;
        assert_eq!(
            snapshot(&pool, &stream).await,
            (2 * SNAPSHOT_EVERY, expected.1.clone())
        );

        // A snapshot that no longer fits the aggregate is ignored, then replaced.
        sqlx::query("UPDATE snapshots SET payload = '{\"state\": {\"renamed\": true}}'")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(loaded(&pool, &stream).await, expected);
        sign_ins(1).await;
        assert_eq!(loaded(&pool, &stream).await, replayed(&pool, &stream).await);
        sign_ins(every - 1).await;
        let expected = replayed(&pool, &stream).await;
        assert_eq!(loaded(&pool, &stream).await, expected);
        assert_eq!(
            snapshot(&pool, &stream).await,
            (3 * SNAPSHOT_EVERY, expected.1.clone())
        );

        // Two commits from the same state: the second conflicts and leaves
        // neither an event nor a snapshot behind.
        let event: <User as Aggregate>::Event = serde_json::from_value(
            sqlx::query_scalar::<_, Value>(
                "SELECT payload FROM events WHERE aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
            )
            .bind(&stream)
            .fetch_one(&pool)
            .await
            .unwrap(),
        )
        .unwrap();
        let s = store::<User>(&pool);
        let first = s.load_aggregate(&stream).await.unwrap();
        let second = s.load_aggregate(&stream).await.unwrap();
        s.commit(vec![event.clone()], first, meta(tenant))
            .await
            .unwrap();
        let winner = replayed(&pool, &stream).await;
        assert!(matches!(
            s.commit(vec![event.clone(), event], second, meta(tenant))
                .await,
            Err(AggregateError::AggregateConflict)
        ));
        assert_eq!(replayed(&pool, &stream).await, winner);
        assert_eq!(winner.0, 3 * every + 1);
        assert_eq!(loaded(&pool, &stream).await, winner);
        assert_eq!(
            snapshot(&pool, &stream).await,
            (3 * SNAPSHOT_EVERY, expected.1)
        );
    }
}
