//! The catch-up projector.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use safehold_domain::CommandMetadata;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;

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
    // Read models and their checkpoint commit together, so a batch lost in a
    // crash is simply projected again: no need to wait for the disk flush.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
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
    for event in &events {
        if let Err(e) = projection.apply(&mut tx, event).await {
            let _ = tx.rollback().await;
            return Err(anyhow::anyhow!(
                "projection {} failed on event {} ({}): {e:#}",
                projection.name(),
                event.position,
                event.event_type
            ));
        }
    }
    save_checkpoint(&mut tx, projection.name(), new_checkpoint).await?;
    tx.commit().await?;
    signal_progress();
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
        Ok(Some((events, applied))) => {
            tx.commit().await?;
            signal_progress();
            for (name, first) in applied {
                observe_lag(name, &events[first..]);
            }
            Ok(events.len())
        }
        Ok(None) => {
            tx.commit().await?;
            Ok(0)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The work of `run_all_batch` inside its transaction: the events read, and
/// for each projection run, the index of the first event it applied.
async fn apply_all_batch(
    tx: &mut PgConnection,
    projections: &[Arc<dyn Projection>],
) -> anyhow::Result<Option<(Vec<StoredEvent>, Vec<(&'static str, usize)>)>> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    // As in `run_batch`: read models and checkpoints commit together.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
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
    let Some(after) = checkpoints.values().min().copied() else {
        return Ok(None);
    };
    let events = next_events(&mut *tx, after, BATCH).await?;
    let Some(last) = events.last().map(|e| (e.tx_id, e.position)) else {
        return Ok(None);
    };
    let mut applied = Vec::new();
    let (mut names, mut tx_ids, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for projection in projections {
        let Some(&at) = checkpoints.get(projection.name()) else {
            continue;
        };
        // Events are in checkpoint order: skip those already applied.
        let first = events.partition_point(|e| (e.tx_id, e.position) <= at);
        for event in &events[first..] {
            projection.apply(&mut *tx, event).await.map_err(|e| {
                anyhow::anyhow!(
                    "projection {} failed on event {} ({}): {e:#}",
                    projection.name(),
                    event.position,
                    event.event_type
                )
            })?;
        }
        let saved = at.max(last);
        names.push(projection.name());
        tx_ids.push(saved.0);
        positions.push(saved.1);
        applied.push((projection.name(), first));
    }
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
    Ok(Some((events, applied)))
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
        for event in &events {
            projection.apply(&mut tx, event).await?;
        }
        total += events.len();
    }
    save_checkpoint(&mut tx, projection.name(), at).await?;
    tx.commit().await?;
    Ok(total)
}

/// Runs every projection until none has anything left to apply.
///
/// All projections advance together in one transaction per batch. If that
/// fails, each projection runs on its own for this round, so one failing
/// projection holds back only itself; its error is returned.
pub async fn catch_up(pool: &PgPool, projections: &[Arc<dyn Projection>]) -> anyhow::Result<()> {
    loop {
        match run_all_batch(pool, projections).await {
            Ok(0) => return Ok(()),
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

/// Bumped after every projector commit in this process, so read-your-writes
/// waits wake up at once instead of polling.
fn progress() -> &'static watch::Sender<u64> {
    static PROGRESS: OnceLock<watch::Sender<u64>> = OnceLock::new();
    PROGRESS.get_or_init(|| watch::channel(0).0)
}

/// Changes after every commit of a projector running in this process.
pub fn progress_updates() -> watch::Receiver<u64> {
    progress().subscribe()
}

fn signal_progress() {
    progress().send_modify(|n| *n = n.wrapping_add(1));
}

/// Tells projectors that events were committed. Sent after the events'
/// transaction, never inside it: Postgres serialises the commits of
/// transactions that notify, which would cost every append its group commit.
pub async fn notify_committed(pool: &PgPool) {
    if let Err(e) = sqlx::query("SELECT pg_notify('safehold_events', '')")
        .execute(pool)
        .await
    {
        tracing::debug!(error = %e, "notify failed; projectors will poll");
    }
}

/// The background runner: wakes on each notification and at least every
/// `poll` (other writers, and a commit held back by an older open
/// transaction, are picked up by polling).
#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    projections: Arc<Vec<Arc<dyn Projection>>>,
}

impl Projector {
    pub fn new(pool: PgPool) -> Self {
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
            if let Err(e) = self.catch_up().await {
                tracing::error!(error = %format!("{e:#}"), "projection batch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let wake = async {
                match &mut listener {
                    Some(l) => {
                        let _ = tokio::time::timeout(poll, l.try_recv()).await;
                    }
                    None => tokio::time::sleep(poll).await,
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Waits until every projection has applied the latest event of a stream,
/// so an API call that just wrote can answer from the read models.
///
/// Checks again whenever a projector in this process commits, and at least
/// every 20 ms (for a projector running in another process).
pub async fn wait_for_stream(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let names: Vec<&str> = all_projections().iter().map(|p| p.name()).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribed before the first check: a commit after it is not missed.
    let mut progress = progress_updates();
    loop {
        // A projection without a checkpoint row has not started: not caught up.
        let done: Option<bool> = sqlx::query_scalar(
            "SELECT bool_and(coalesce((c.tx_id, c.position) >= (e.tx, e.global_position), false))
               FROM (SELECT tx_id::text::bigint AS tx, global_position FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2
                      ORDER BY sequence DESC LIMIT 1) e
              CROSS JOIN unnest($3::text[]) AS p(name)
               LEFT JOIN projection_checkpoints c ON c.name = p.name",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(&names)
        .fetch_one(pool)
        .await?;
        if done.unwrap_or(true) {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let poll = Duration::from_millis(20).min(deadline - now);
        let _ = tokio::time::timeout(poll, progress.changed()).await;
    }
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
