//! Runs commands on aggregates with the request's metadata, retries on
//! optimistic-concurrency conflicts, and waits for the read models so the
//! response (and the client's next read) sees the change.
//!
//! Aggregates are loaded from their snapshot (see [`SnapshotRepository`]):
//! a command costs one read and one write whatever the length of its stream,
//! and only the write when this process ran the aggregate's previous command
//! (see [`Runner`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore};
use lru::LruCache;
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

use crate::append_queue::AppendQueue;
use crate::error::ApiError;

const CONFLICT_RETRIES: usize = 5;
const READ_MODEL_WAIT: Duration = Duration::from_secs(5);

/// The event store of the command side: events plus one snapshot per
/// aggregate, which is the starting point of every load.
pub type Store<A> = PersistedEventStore<SnapshotRepository, A>;

pub struct Commands {
    pool: PgPool,
    tenants: Runner<Tenant>,
    users: Runner<User>,
    accounts: Runner<Account>,
    policies: Runner<Policy>,
    schedules: Runner<Schedule>,
    backups: Runner<Backup>,
    recoveries: Runner<Recovery>,
}

/// How many aggregates of each type a [`Runner`] keeps the latest state of.
const RECENT_STATES: usize = 4096;

/// Runs an aggregate's commands: load, decide, append.
///
/// The runner remembers the state each aggregate had after the last command
/// it ran (or load it made) and decides the next command on it without
/// reading the log. That is safe because of how appends are checked: events
/// decided on the state as of sequence `n` are appended as `n + 1…`, which
/// fails if anyone appended after `n`, so an append that succeeds proves
/// the state was current, as a fresh load would. A conflict forgets the
/// state and the command is decided again on the log. A decision that
/// appends nothing (a rejection or a no-op) proves nothing, so it is taken
/// again on a fresh load before it is answered.
pub struct Runner<A: Aggregate> {
    repo: SnapshotRepository,
    recent: Mutex<LruCache<String, (Value, usize)>>,
    aggregate: PhantomData<A>,
}

/// What deciding a command on a given state led to.
enum Decision<A: Aggregate> {
    Appended,
    /// Someone appended after the state the decision was taken on.
    Conflict,
    /// Rejected, or nothing to record.
    NothingAppended(Result<(), AggregateError<A::Error>>),
}

impl<A: Aggregate<Services = ()>> Runner<A> {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            repo: SnapshotRepository::new(pool.clone()),
            recent: Mutex::new(LruCache::new(
                NonZeroUsize::new(RECENT_STATES).expect("non-zero"),
            )),
            aggregate: PhantomData,
        }
    }

    /// Runs `command` on the aggregate `aggregate_id`. A concurrent append
    /// answers [`AggregateError::AggregateConflict`]: the caller retries.
    pub async fn execute_with_metadata(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<(), AggregateError<A::Error>>
    where
        A::Command: Clone,
    {
        if let Some((aggregate, sequence)) = self.remembered(aggregate_id) {
            match self
                .decide(
                    aggregate_id,
                    aggregate,
                    sequence,
                    command.clone(),
                    &metadata,
                )
                .await?
            {
                Decision::Appended => return Ok(()),
                // Decide again on the log.
                Decision::Conflict | Decision::NothingAppended(_) => self.forget(aggregate_id),
            }
        }
        let (aggregate, sequence) = self.load(aggregate_id).await?;
        match self
            .decide(aggregate_id, aggregate, sequence, command, &metadata)
            .await?
        {
            Decision::Appended => Ok(()),
            Decision::Conflict => {
                self.forget(aggregate_id);
                Err(AggregateError::AggregateConflict)
            }
            Decision::NothingAppended(answer) => answer,
        }
    }

    /// The aggregate as of its last event, from the log; remembered.
    async fn load(&self, aggregate_id: &str) -> Result<(A, usize), AggregateError<A::Error>> {
        let Some(snapshot) = self.repo.get_snapshot::<A>(aggregate_id).await? else {
            return Ok((A::default(), 0));
        };
        let aggregate = serde_json::from_value(snapshot.aggregate.clone())?;
        self.remember(aggregate_id, snapshot.aggregate, snapshot.current_sequence);
        Ok((aggregate, snapshot.current_sequence))
    }

    /// Decides `command` on `aggregate` (as of `sequence`) and appends the
    /// events, with the new state as the snapshot when one is due.
    async fn decide(
        &self,
        aggregate_id: &str,
        mut aggregate: A,
        sequence: usize,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Decision<A>, AggregateError<A::Error>> {
        let sink = EventSink::default();
        if let Err(e) = aggregate.handle(command, &(), &sink).await {
            return Ok(Decision::NothingAppended(Err(AggregateError::UserError(e))));
        }
        // The sink has applied the events to `aggregate`: it is the new state.
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Decision::NothingAppended(Ok(())));
        }
        let metadata = serde_json::to_value(metadata)?;
        let serialized = events
            .iter()
            .zip(sequence + 1..)
            .map(|(event, sequence)| {
                Ok(SerializedEvent {
                    aggregate_id: aggregate_id.to_string(),
                    sequence,
                    aggregate_type: A::TYPE.to_string(),
                    event_type: event.event_type(),
                    event_version: event.event_version(),
                    payload: serde_json::to_value(event)?,
                    metadata: metadata.clone(),
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let last = sequence + events.len();
        let state = serde_json::to_value(&aggregate)?;
        let snapshot = (aggregate_id.to_string(), state.clone(), last);
        match self.repo.persist::<A>(&serialized, Some(snapshot)).await {
            Ok(()) => {
                self.remember(aggregate_id, state, last);
                Ok(Decision::Appended)
            }
            Err(PersistenceError::OptimisticLockError) => Ok(Decision::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    fn remembered(&self, aggregate_id: &str) -> Option<(A, usize)> {
        let (state, sequence) = self.recent.lock().ok()?.get(aggregate_id)?.clone();
        Some((serde_json::from_value(state).ok()?, sequence))
    }

    fn remember(&self, aggregate_id: &str, state: Value, sequence: usize) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.put(aggregate_id.to_string(), (state, sequence));
        }
    }

    fn forget(&self, aggregate_id: &str) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.pop(aggregate_id);
        }
    }
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
    /// Single-event appends, committed together (started on first use).
    appends: OnceLock<AppendQueue>,
}

impl SnapshotRepository {
    pub fn new(pool: PgPool) -> Self {
        Self {
            events: PostgresEventRepository::new(pool.clone()),
            pool,
            appends: OnceLock::new(),
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

pub(crate) fn persistence_error(e: sqlx::Error) -> PersistenceError {
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
        // The runner hands over the new state with every append; keep it
        // only at a multiple of `SNAPSHOT_EVERY`.
        let crosses =
            (first.sequence as i64 - 1) / SNAPSHOT_EVERY != last.sequence as i64 / SNAPSHOT_EVERY;
        let snapshot_update = snapshot_update.filter(|_| crosses);
        if let ([event], None) = (events, &snapshot_update) {
            // The usual case: committed with the other commands' events.
            return self
                .appends
                .get_or_init(|| AppendQueue::start(self.pool.clone()))
                .append(event.clone())
                .await;
        }
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
            tenants: Runner::new(&pool),
            users: Runner::new(&pool),
            accounts: Runner::new(&pool),
            policies: Runner::new(&pool),
            schedules: Runner::new(&pool),
            backups: Runner::new(&pool),
            recoveries: Runner::new(&pool),
            pool,
        }
    }

    async fn run<A: Aggregate<Error = DomainError, Services = ()>>(
        &self,
        cqrs: &Runner<A>,
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

    use safehold_domain::access::{DelegatePermissions, UserKind};
    use safehold_domain::user::ResourceLimits;
    use serde_json::json;
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
        let cqrs = Runner::<User>::new(&pool);
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

    #[tokio::test]
    async fn remembered_states_are_trusted_only_as_far_as_the_append_proves() {
        let pool = database().await;
        let tenant = TenantId(Uuid::new_v4());
        let delegate = UserId(Uuid::new_v4());
        let stream = stream_id(tenant, delegate.0);
        let runner = Runner::<User>::new(&pool);
        // A writer this runner does not hear about.
        let other = postgres_es::postgres_cqrs::<User>(pool.clone(), vec![], ());
        let permissions =
            |allow_recovery, allow_account_changes| UserCommand::SetDelegatePermissions {
                permissions: DelegatePermissions {
                    allow_recovery,
                    allow_account_changes,
                    allow_backup_changes: false,
                },
            };
        let create = UserCommand::Create {
            id: delegate,
            tenant_id: tenant,
            username: "stale".into(),
            email: None,
            kind: UserKind::Delegate {
                of: UserId(Uuid::new_v4()),
                permissions: DelegatePermissions::default(),
            },
            limits: ResourceLimits::default(),
            must_change_password: false,
        };
        runner
            .execute_with_metadata(&stream, create, meta(tenant))
            .await
            .unwrap();
        runner
            .execute_with_metadata(&stream, permissions(true, false), meta(tenant))
            .await
            .unwrap();
        let recovery_allowed =
            |state: &Value| state["state"]["kind"]["permissions"]["allow_recovery"].clone();

        // On the remembered state this is a no-op; on the log it is a change.
        other
            .execute_with_metadata(&stream, permissions(false, false), meta(tenant))
            .await
            .unwrap();
        runner
            .execute_with_metadata(&stream, permissions(true, false), meta(tenant))
            .await
            .unwrap();
        let (sequence, state) = replayed(&pool, &stream).await;
        assert_eq!(sequence, 4, "the no-op was decided again on the log");
        assert_eq!(recovery_allowed(&state), json!(true), "{state}");

        // Events decided on a stale state conflict and are decided again.
        other
            .execute_with_metadata(&stream, permissions(false, false), meta(tenant))
            .await
            .unwrap();
        runner
            .execute_with_metadata(&stream, permissions(false, true), meta(tenant))
            .await
            .unwrap();
        let (sequence, state) = replayed(&pool, &stream).await;
        assert_eq!(sequence, 6);
        assert_eq!(loaded(&pool, &stream).await, (sequence, state));

        // A command the log rejects is rejected, whatever was remembered.
        other
            .execute_with_metadata(&stream, UserCommand::Delete, meta(tenant))
            .await
            .unwrap();
        let answer = runner
            .execute_with_metadata(&stream, permissions(true, true), meta(tenant))
            .await;
        assert!(
            matches!(
                answer,
                Err(AggregateError::UserError(DomainError::NotFound(_)))
            ),
            "{answer:?}"
        );
        assert_eq!(replayed(&pool, &stream).await.0, 7, "nothing appended");
    }

    #[tokio::test]
    async fn single_event_appends_commit_together_and_each_answers_for_itself() {
        let pool = database().await;
        let tenant = TenantId(Uuid::new_v4());
        let event = |stream: &str, n: u32| SerializedEvent {
            aggregate_id: stream.to_string(),
            sequence: 1,
            aggregate_type: "probe".into(),
            event_type: "Probed".into(),
            event_version: "1".into(),
            payload: json!({ "n": n }),
            metadata: serde_json::to_value(meta(tenant)).unwrap(),
        };
        let queue = crate::append_queue::AppendQueue::start(pool.clone());
        queue.append(event("taken", 0)).await.unwrap();

        // On this single-threaded runtime every append below is queued
        // before the writer runs: they meet in its first statement.
        let streams: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let mut events: Vec<_> = streams.iter().map(|s| event(s, 1)).collect();
        events.push(event("s0", 2));
        events.push(event("taken", 2));
        let answers = futures::future::join_all(events.into_iter().map(|e| queue.append(e))).await;
        for (i, answer) in answers.iter().enumerate() {
            match i {
                0..10 => assert!(answer.is_ok(), "{i}: {answer:?}"),
                _ => assert!(
                    matches!(answer, Err(PersistenceError::OptimisticLockError)),
                    "{i}: {answer:?}"
                ),
            }
        }
        let (rows, transactions, payloads): (i64, i64, Vec<Value>) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT tx_id), array_agg(payload::jsonb ORDER BY aggregate_id)
               FROM events WHERE aggregate_id LIKE 's%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(rows, 10);
        assert_eq!(transactions, 1, "one statement, one commit");
        assert_eq!(payloads[0], json!({ "n": 1 }), "the first append of s0 won");
    }
}
