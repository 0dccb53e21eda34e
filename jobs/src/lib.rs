//! Background work. For now: periodic housekeeping (audit retention).

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

/// Removes audit entries past each tenant's retention, hourly.
pub async fn housekeeping(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = every.tick() => {
                match safehold_projections::audit::purge_expired(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "purged expired audit entries"),
                    Err(e) => tracing::warn!(error = %e, "audit purge failed"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}
