//! The outbox of background work: events that start work enqueue a job in
//! the same transaction as the projector's checkpoint, so a started backup
//! always gets its job, once. Job ids are derived from the event, so replaying
//! the log (a rebuild) enqueues nothing twice.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use safehold_domain::policy::{Policy, PolicyEvent};
use safehold_domain::recovery::Recovery;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

/// The job queue (namespace) of backup steps.
pub const BACKUP_QUEUE: &str = "safehold::backup";

/// Drives one backup, one step per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupJob {
    pub tenant_id: Uuid,
    pub policy_id: Uuid,
    pub backup_id: Uuid,
}

/// The job queue of recoveries.
pub const RECOVERY_QUEUE: &str = "safehold::recovery";

/// Drives one recovery, one step per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryJob {
    pub tenant_id: Uuid,
    pub recovery_id: Uuid,
}

/// Attempts the queue makes at a job whose run fails (an error, not an AWS
/// refusal, which the backup records itself).
pub const MAX_ATTEMPTS: i32 = 25;

/// Enqueues `job` unless a job with the same `key` exists. The queue's job
/// ids are ULIDs: the key's 128 bits are used as one.
pub async fn enqueue<J: Serialize>(
    conn: &mut PgConnection,
    queue: &str,
    key: Uuid,
    job: &J,
    run_at: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<()> {
    let id = ulid::Ulid::from(key.as_u128()).to_string();
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority)
         VALUES ($1, $2, $3, 'Pending', 0, $4, $5, 0)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(serde_json::to_value(job).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    .bind(id)
    .bind(queue)
    .bind(MAX_ATTEMPTS)
    .bind(run_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub struct DispatchProjection;

#[async_trait]
impl Projection for DispatchProjection {
    fn name(&self) -> &'static str {
        "dispatch"
    }

    /// Owns no table: the queue is not emptied by a rebuild.
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if event.aggregate_type == Recovery::TYPE && event.event_type == "RecoveryRequested" {
            let Some(recovery_id) = event.entity_id() else {
                return Ok(());
            };
            let job = RecoveryJob {
                tenant_id: event.metadata.tenant_id.0,
                recovery_id,
            };
            enqueue(
                tx,
                RECOVERY_QUEUE,
                recovery_id,
                &job,
                event.metadata.occurred_at,
            )
            .await?;
            return Ok(());
        }
        if event.aggregate_type != Policy::TYPE || event.event_type != "BackupStarted" {
            return Ok(());
        }
        let (Some(policy_id), PolicyEvent::BackupStarted { backup_id, .. }) =
            (event.entity_id(), event.decode()?)
        else {
            return Ok(());
        };
        let job = BackupJob {
            tenant_id: event.metadata.tenant_id.0,
            policy_id,
            backup_id,
        };
        enqueue(
            tx,
            BACKUP_QUEUE,
            backup_id,
            &job,
            event.metadata.occurred_at,
        )
        .await?;
        Ok(())
    }
}
