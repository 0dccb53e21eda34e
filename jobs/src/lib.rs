//! Background work: the scheduler, periodic housekeeping, the daily
//! cleanup and resource discovery.

pub mod backup;
pub mod cleanup;
pub mod commands;
pub mod discovery;
pub mod dr;
pub mod recovery;
pub mod retention;
mod rounds;
pub mod scheduler;

use std::time::Duration;

use safehold_cloud::resolve::Cloud;
use tokio::sync::watch;

/// Hourly: removes audit entries past each tenant's retention and refreshes
/// the inventory of every account with scanning enabled.
pub async fn housekeeping(cloud: Cloud, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = every.tick() => {
                match safehold_projections::audit::purge_expired(&cloud.pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "purged expired audit entries"),
                    Err(e) => tracing::warn!(error = %e, "audit purge failed"),
                }
                if let Err(e) = discovery::refresh_all(&cloud).await {
                    tracing::warn!(error = %e, "periodic discovery failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}
