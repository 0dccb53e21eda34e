//! What every job that works in rounds shares: one run of an entity at a
//! time (a session advisory lock, so a job run again after its worker was
//! taken for dead leaves a live run be), and the next round enqueued later.

use std::future::Future;
use std::time::Duration;

use apalis::prelude::Error;
use chrono::Utc;
use safehold_projections::dispatch::enqueue;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A job failure the queue records and retries.
pub(crate) fn failed(e: anyhow::Error) -> Error {
    Error::Failed(std::sync::Arc::new(Box::new(std::io::Error::other(
        e.to_string(),
    ))))
}

/// Runs `round` holding the advisory lock `key`; `None` when another run
/// holds it.
pub(crate) async fn run_locked<T>(
    pool: &PgPool,
    key: i64,
    round: impl Future<Output = anyhow::Result<T>>,
) -> Result<Option<T>, Error> {
    let mut lock = pool.acquire().await.map_err(|e| failed(e.into()))?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *lock)
        .await
        .map_err(|e| failed(e.into()))?;
    if !locked {
        return Ok(None);
    }
    let outcome = round.await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *lock)
        .await;
    outcome.map(Some).map_err(failed)
}

/// Enqueues the next round of `job` on `queue`, `after` from now.
pub(crate) async fn next_round<J: Serialize>(
    pool: &PgPool,
    queue: &str,
    job: &J,
    after: Duration,
) -> Result<(), Error> {
    let run_at = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
    let mut conn = pool.acquire().await.map_err(|e| failed(e.into()))?;
    enqueue(&mut conn, queue, Uuid::new_v4(), job, run_at)
        .await
        .map_err(|e| failed(e.into()))
}
