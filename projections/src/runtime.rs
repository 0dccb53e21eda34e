//! The catch-up projector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use safehold_domain::CommandMetadata;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{watch, Notify};

/// One event as read from the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub tx_id: i64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: CommandMetadata,
}

impl StoredEvent {
    /// The entity part of a `tenant:entity` stream id.
    pub fn entity_id(&self) -> Option<uuid::Uuid> {
        let (_, entity) = self.aggregate_id.split_once(':')?;
        uuid::Uuid::parse_str(entity).ok()
    }

    /// Decodes the payload as the aggregate's event enum.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> anyhow::Result<E> {
        Ok(serde_json::from_value(self.payload.clone())?)
    }
}

/// A read model fed from the event log.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Stable name: the checkpoint key and the CLI's `projections rebuild NAME`.
    fn name(&self) -> &'static str;
    /// Tables this projection owns, emptied before a rebuild.
    fn tables(&self) -> &'static [&'static str];
    /// Applies one event inside the batch's transaction.
    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()>;

    /// Applies events in log order inside the batch's transaction. One by
    /// one unless the projection overrides it: a projection that sees most
    /// events turns a batch into a few set-based statements, since under
    /// load the projector's cost is its round trips, not the work in them.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        for event in events {
            self.apply(tx, event).await.map_err(|e| {
                e.context(format!("event {} ({})", event.position, event.event_type))
            })?;
        }
        Ok(())
    }
}

pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(crate::tenants::TenantsProjection),
        Arc::new(crate::users::UsersProjection),
        Arc::new(crate::accounts::AccountsProjection),
        Arc::new(crate::policies::PoliciesProjection),
        Arc::new(crate::backups::BackupsProjection),
        Arc::new(crate::recoveries::RecoveriesProjection),
        Arc::new(crate::audit::AuditProjection),
        Arc::new(crate::dispatch::DispatchProjection),
    ]
}

/// The names of [`all_projections`], listed once.
fn all_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| all_projections().iter().map(|p| p.name()).collect())
}

const BATCH: i64 = 500;

/// Reads the next events after a checkpoint, in `(tx_id, global_position)`
/// order, never past the oldest transaction that may still add an event.
///
/// Every event below the horizon is final: its transaction had finished when
/// the statement's snapshot was taken, so a later read can never reveal an
/// event behind a checkpoint. The horizon is the oldest transaction still
/// running in the snapshot (or, if none, the snapshot's `xmax`), ignoring
/// transactions proven to run in another database of the cluster (a
/// session's transaction writes only to its own database, and an id found in
/// `pg_stat_activity` under another database belongs to that database for
/// good). A transaction not found there (finished meanwhile, a prepared
/// one, or hidden from this role) is counted. The projector's own
/// transaction is never in its snapshot and writes no event.
async fn next_events(
    conn: &mut PgConnection,
    after: (i64, i64),
    limit: i64,
) -> anyhow::Result<Vec<StoredEvent>> {
    let rows = sqlx::query(
        "WITH horizon AS (
             SELECT least(pg_snapshot_xmax(s),
                          (SELECT min(x) FROM pg_snapshot_xip(s) AS x
                            WHERE x::xid NOT IN (SELECT a.backend_xid FROM pg_stat_activity a
                                                  WHERE a.backend_xid IS NOT NULL
                                                    AND a.datname <> current_database()))) AS xid
               FROM pg_current_snapshot() AS s
         )
         SELECT tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id, sequence,
                event_type, event_version, payload, metadata
           FROM events, horizon
          WHERE (tx_id, global_position) > ($1::text::xid8, $2)
            AND tx_id < horizon.xid
          ORDER BY tx_id, global_position
          LIMIT $3",
    )
    .bind(after.0.to_string())
    .bind(after.1)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let metadata: serde_json::Value = row.try_get("metadata")?;
            let map: HashMap<String, String> = serde_json::from_value(metadata)?;
            Ok(StoredEvent {
                tx_id: row.try_get("tx")?,
                position: row.try_get("global_position")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: row.try_get("sequence")?,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                payload: row.try_get("payload")?,
                metadata: CommandMetadata::from_map(&map)
                    .ok_or_else(|| anyhow::anyhow!("event without tenant metadata"))?,
            })
        })
        .collect()
}

async fn lock_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    wait: bool,
) -> anyhow::Result<Option<(i64, i64)>> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let sql = if wait {
        "SELECT tx_id, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT tx_id, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE SKIP LOCKED"
    };
    Ok(sqlx::query_as(sql)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?)
}

async fn save_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    at: (i64, i64),
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE projection_checkpoints SET tx_id = $2, position = $3, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(at.0)
    .bind(at.1)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies up to one batch to a projection. Returns how many events it
/// applied; 0 when caught up or when another process holds the checkpoint.
pub async fn run_batch(pool: &PgPool, projection: &dyn Projection) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    // End the transaction explicitly on every path: a dropped one is rolled
    // back only when its connection is next used, and until then it would
    // hold the checkpoint lock.
    let Some(checkpoint) = lock_checkpoint(&mut tx, projection.name(), false).await? else {
        tx.commit().await?;
        return Ok(0);
    };
    let events = next_events(&mut tx, checkpoint, BATCH).await?;
    let Some(last) = events.last() else {
        tx.commit().await?;
        return Ok(0);
    };
    let new_checkpoint = (last.tx_id, last.position);
    if let Err(e) = projection.apply_batch(&mut tx, &events).await {
        let _ = tx.rollback().await;
        return Err(anyhow::anyhow!(
            "projection {} failed: {e:#}",
            projection.name()
        ));
    }
    save_checkpoint(&mut tx, projection.name(), new_checkpoint).await?;
    tx.commit().await?;
    observe_lag(projection.name(), &events);
    Ok(events.len())
}

/// Lag from the command to the read model being visible.
fn observe_lag<'a>(projection: &str, events: impl IntoIterator<Item = &'a StoredEvent>) {
    let now = Utc::now();
    for event in events {
        let lag = (now - event.metadata.occurred_at)
            .num_microseconds()
            .unwrap_or(0);
        metrics::observe_lag(projection, lag as f64 / 1e6);
    }
}

/// What one joint batch did.
struct JointBatch {
    events: Vec<StoredEvent>,
    /// For each projection run, the index of the first event it applied.
    applied: Vec<(&'static str, usize)>,
    /// The position every projection has reached once the batch commits,
    /// when this process held all their checkpoints.
    reached: Option<(i64, i64)>,
}

/// Applies up to one batch of the log to every projection whose checkpoint
/// no other process holds, in one transaction: the events are read once and
/// the checkpoints locked and saved with one statement each, instead of a
/// transaction per projection. Returns the number of events read (a full
/// batch means there may be more).
async fn run_all_batch(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    // End the transaction explicitly on every path (see `run_batch`).
    match apply_all_batch(&mut tx, projections).await {
        Ok(batch) => {
            tx.commit().await?;
            if let Some(reached) = batch.reached {
                signals(pool).projected(reached);
            }
            for (name, first) in batch.applied {
                observe_lag(name, &batch.events[first..]);
            }
            Ok(batch.events.len())
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The work of `run_all_batch` inside its transaction.
async fn apply_all_batch(
    tx: &mut PgConnection,
    projections: &[Arc<dyn Projection>],
) -> anyhow::Result<JointBatch> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let lock = "SELECT name, tx_id, position FROM projection_checkpoints
                 WHERE name = ANY($1) FOR UPDATE SKIP LOCKED";
    let mut locked: Vec<(String, i64, i64)> = sqlx::query_as(lock)
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
    if locked.len() < names.len() {
        // A projection's first run (or one held elsewhere: then this finds
        // its row and skips it again).
        sqlx::query(
            "INSERT INTO projection_checkpoints (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        locked = sqlx::query_as(lock)
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?;
    }
    let checkpoints: HashMap<String, (i64, i64)> = locked
        .into_iter()
        .map(|(name, tx_id, position)| (name, (tx_id, position)))
        .collect();
    // Only a pass over every projection can say where they all stand.
    let holds_all = all_names().iter().all(|&n| checkpoints.contains_key(n));
    let mut batch = JointBatch {
        events: Vec::new(),
        applied: Vec::new(),
        reached: checkpoints.values().min().copied().filter(|_| holds_all),
    };
    let Some(after) = checkpoints.values().min().copied() else {
        return Ok(batch);
    };
    batch.events = next_events(&mut *tx, after, BATCH).await?;
    let Some(last) = batch.events.last().map(|e| (e.tx_id, e.position)) else {
        return Ok(batch);
    };
    let (mut names, mut tx_ids, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    let mut reached = None::<(i64, i64)>;
    for projection in projections {
        let Some(&at) = checkpoints.get(projection.name()) else {
            continue;
        };
        // Events are in checkpoint order: skip those already applied.
        let first = batch
            .events
            .partition_point(|e| (e.tx_id, e.position) <= at);
        projection
            .apply_batch(&mut *tx, &batch.events[first..])
            .await
            .map_err(|e| anyhow::anyhow!("projection {} failed: {e:#}", projection.name()))?;
        let saved = at.max(last);
        reached = Some(reached.map_or(saved, |r| r.min(saved)));
        names.push(projection.name());
        tx_ids.push(saved.0);
        positions.push(saved.1);
        batch.applied.push((projection.name(), first));
    }
    batch.reached = reached.filter(|_| holds_all);
    sqlx::query(
        "UPDATE projection_checkpoints c
            SET tx_id = u.tx_id, position = u.position, updated_at = now()
           FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u (name, tx_id, position)
          WHERE c.name = u.name",
    )
    .bind(&names)
    .bind(&tx_ids)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    Ok(batch)
}

/// Empties a projection's tables and replays the whole log into them in one
/// transaction: readers see the old tables until the new ones are complete.
pub async fn rebuild(pool: &PgPool, projection: &dyn Projection) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    lock_checkpoint(&mut tx, projection.name(), true).await?;
    for table in projection.tables() {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }
    let mut at = (0, 0);
    let mut total = 0;
    loop {
        let events = next_events(&mut tx, at, BATCH).await?;
        let Some(last) = events.last() else { break };
        at = (last.tx_id, last.position);
        projection.apply_batch(&mut tx, &events).await?;
        total += events.len();
    }
    save_checkpoint(&mut tx, projection.name(), at).await?;
    tx.commit().await?;
    Ok(total)
}

/// Runs every projection until a batch finds less than a full batch of
/// events, i.e. until the projections have applied every event committed
/// before the last read.
///
/// All projections advance together in one transaction per batch. If that
/// fails, each projection runs on its own for this round, so one failing
/// projection holds back only itself; its error is returned.
pub async fn catch_up(pool: &PgPool, projections: &[Arc<dyn Projection>]) -> anyhow::Result<()> {
    loop {
        match run_all_batch(pool, projections).await {
            Ok(n) if n < BATCH as usize => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "joint batch failed; one projection at a time");
                let mut first_error = None;
                for projection in projections {
                    loop {
                        match run_batch(pool, projection.as_ref()).await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                first_error.get_or_insert(e);
                                break;
                            }
                        }
                    }
                }
                return first_error.map_or(Ok(()), Err);
            }
        }
    }
}

/// What the writers, the projector and the read-your-writes waits of one
/// database tell each other inside this process, without a round trip to
/// Postgres. Kept per database: tests and benchmarks run several servers in
/// one process.
struct Signals {
    /// Changes whenever events were committed: wakes the projector.
    committed: watch::Sender<u64>,
    /// The position every projection had reached at the last commit of a
    /// projector in this process that held all their checkpoints; never
    /// ahead of the checkpoints, so waits can trust it.
    projected: watch::Sender<Option<(i64, i64)>>,
    /// Asks the notifier to tell projectors in other processes.
    notify_wanted: Notify,
    notifier_started: AtomicBool,
}

impl Signals {
    fn projected(&self, reached: (i64, i64)) {
        self.projected.send_if_modified(|at| {
            let newer = at.is_none_or(|at| at < reached);
            if newer {
                *at = Some(reached);
            }
            newer
        });
    }
}

fn signals(pool: &PgPool) -> Arc<Signals> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Signals>>>> = OnceLock::new();
    let options = pool.connect_options();
    let database = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let mut all = ALL.get_or_init(Default::default).lock().expect("signals");
    all.entry(database)
        .or_insert_with(|| {
            Arc::new(Signals {
                committed: watch::channel(0).0,
                projected: watch::channel(None).0,
                notify_wanted: Notify::new(),
                notifier_started: AtomicBool::new(false),
            })
        })
        .clone()
}

/// Changes whenever a projector in this process has applied more of the
/// log of `pool`'s database: the position every projection has reached.
pub fn projected_updates(pool: &PgPool) -> watch::Receiver<Option<(i64, i64)>> {
    signals(pool).projected.subscribe()
}

/// Tells projectors that events were committed: the projector in this
/// process at once, and those in other processes by a NOTIFY.
///
/// Sent after the events' transaction, never inside it: Postgres serialises
/// the commits of transactions that notify, which would cost every append
/// its group commit. One task per database sends the NOTIFYs, at most one
/// every [`NOTIFY_INTERVAL`], each covering every commit before it: a busy
/// API does not pay a round trip per command.
pub async fn notify_committed(pool: &PgPool) {
    let signals = signals(pool);
    signals.committed.send_modify(|n| *n = n.wrapping_add(1));
    if !signals.notifier_started.swap(true, Ordering::AcqRel) {
        tokio::spawn(send_notifications(pool.clone(), signals.clone()));
    }
    signals.notify_wanted.notify_one();
}

/// The shortest time between two NOTIFYs to other processes' projectors
/// (which also poll every 50 ms).
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

async fn send_notifications(pool: PgPool, signals: Arc<Signals>) {
    /// Lets the next commit start another sender if this one is dropped
    /// (its runtime shut down).
    struct Started(Arc<Signals>);
    impl Drop for Started {
        fn drop(&mut self) {
            self.0.notifier_started.store(false, Ordering::Release);
        }
    }
    let _started = Started(signals.clone());
    loop {
        // A commit while the NOTIFY is sent leaves a permit: it gets the next.
        signals.notify_wanted.notified().await;
        if let Err(e) = sqlx::query("SELECT pg_notify('safehold_events', '')")
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "notify failed; projectors will poll");
        }
        tokio::time::sleep(NOTIFY_INTERVAL).await;
    }
}

/// The shortest time from one pass of the projector to the next. A pass
/// costs a few round trips whatever it applies: while commands keep coming,
/// waiting a moment lets each pass apply many events instead of a few.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(5);

/// The background runner: wakes when this process commits events, on each
/// notification from other processes, and at least every `poll` (a commit
/// held back by an older open transaction is picked up by polling).
#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    projections: Arc<Vec<Arc<dyn Projection>>>,
}

impl Projector {
    /// A projector on the database of `pool`, with connections of its own.
    pub fn new(pool: PgPool) -> Self {
        // Read models and their checkpoints commit together, so a batch lost
        // in a crash is simply projected again: the projector need not wait
        // for its commits to reach the disk.
        let options = (*pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off")]);
        let pool = crate::db::pool_options()
            .max_connections(2)
            .connect_lazy_with(options);
        Self {
            pool,
            projections: Arc::new(all_projections()),
        }
    }

    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    pub async fn catch_up(&self) -> anyhow::Result<()> {
        catch_up(&self.pool, &self.projections).await
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(50);
        let mut committed = signals(&self.pool).committed.subscribe();
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen("safehold_events").await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "projector cannot LISTEN; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "projector cannot LISTEN; polling only");
                None
            }
        };
        loop {
            if *stop.borrow() {
                return;
            }
            // Seen before reading the log: a commit during the pass wakes
            // the next one.
            committed.borrow_and_update();
            let started = tokio::time::Instant::now();
            if let Err(e) = self.catch_up().await {
                tracing::error!(error = %format!("{e:#}"), "projection batch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let notified = async {
                match &mut listener {
                    Some(l) => {
                        let _ = l.try_recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = committed.changed() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
            tokio::time::sleep_until(started + MIN_PASS_INTERVAL).await;
        }
    }
}

/// Waits until every projection has applied the latest event of a stream,
/// so an API call that just wrote can answer from the read models.
///
/// Finds the event's position once, then compares it with what the
/// projector of this process reports after each commit; the checkpoints
/// themselves are read every 20 ms (a projector in another process).
pub async fn wait_for_stream(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribed before the event is looked up: no later commit is missed.
    let mut projected = projected_updates(pool);
    let target: Option<(i64, i64)> = sqlx::query_as(
        "SELECT tx_id::text::bigint, global_position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await?;
    let Some(target) = target else {
        return Ok(true);
    };
    // A projector in this process reports at once: read the checkpoints
    // only if it does not.
    let mut next_read = tokio::time::Instant::now();
    if projected.borrow().is_some() {
        next_read += Duration::from_millis(20);
    }
    loop {
        if projected.borrow_and_update().is_some_and(|at| at >= target) {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= next_read {
            if checkpoints_reached(pool, all_names(), target).await? {
                return Ok(true);
            }
            next_read = now + Duration::from_millis(20);
        }
        if now >= deadline {
            return Ok(false);
        }
        let _ = tokio::time::timeout_at(next_read.min(deadline), projected.changed()).await;
    }
}

/// Whether every projection's checkpoint is at or past `target`. A
/// projection without a checkpoint row has not started: not caught up.
async fn checkpoints_reached(
    pool: &PgPool,
    names: &[&str],
    target: (i64, i64),
) -> anyhow::Result<bool> {
    let reached: Option<bool> = sqlx::query_scalar(
        "SELECT bool_and(coalesce((c.tx_id, c.position) >= ($2, $3), false))
           FROM unnest($1::text[]) AS p(name)
           LEFT JOIN projection_checkpoints c ON c.name = p.name",
    )
    .bind(names)
    .bind(target.0)
    .bind(target.1)
    .fetch_one(pool)
    .await?;
    Ok(reached.unwrap_or(false))
}

pub mod metrics {
    //! Projection lag, exported by the API's `/metrics`.
    use std::sync::OnceLock;

    use prometheus::HistogramVec;

    pub fn lag_histogram() -> &'static HistogramVec {
        static LAG: OnceLock<HistogramVec> = OnceLock::new();
        LAG.get_or_init(|| {
            prometheus::register_histogram_vec!(
                "safehold_projection_lag_seconds",
                "Time from an event's command to its projection",
                &["projection"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
            )
            .expect("metric registers once")
        })
    }

    pub fn observe_lag(projection: &str, seconds: f64) {
        lag_histogram()
            .with_label_values(&[projection])
            .observe(seconds);
    }
}
